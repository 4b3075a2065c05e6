"""OpenAI-compatible backend against a local fault-injecting server: retries, no duplicate paid
calls, identical results, kill -9 and resume, and the API key never written anywhere."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_openai_server import FAULTS, FakeOpenAIServer, body_key, default_reply
from nesylib.errors import ConfigError
from nesylib.teacher import CachedTeacher, CallStore, TeacherError, TeacherRequest, plan_cost
from nesylib.teacher.openai_backend import OpenAIBackend

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "NESYLIB_TEST_TEACHER_KEY"
FAKE_KEY = "sk-test-DO-NOT-LEAK-7f3c9a1e5b"


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)


def _requests(n):
    return [TeacherRequest(prompt=f"Question {i}: what is {i} + {i}?", temperature=0.0, uid=f"t/{i}") for i in range(n)]


def _teacher(server, store=None, **kw):
    # 1 s client timeout: far above a loaded machine's reply time, below the server's timeout sleep.
    backend = OpenAIBackend("fake-model", base_url=server.base_url, api_key_env=KEY_ENV, timeout=1.0,
                            max_retries=kw.pop("max_retries", 3))
    return CachedTeacher(backend, store, concurrency=kw.pop("concurrency", 4), retry_backoff_s=0.01, **kw)


def test_every_fault_kind_is_survived_with_identical_results_and_single_payment(tmp_path):
    reqs = _requests(30)
    with FakeOpenAIServer() as clean:
        expected = [r.text for r in _teacher(clean).complete(reqs)]
    with FakeOpenAIServer(fault_rate=0.6, seed=7, timeout_sleep=1.5) as s:
        store = CallStore(tmp_path / "store.jsonl")
        t = _teacher(s, store)
        got = t.complete(reqs)
        assert all(r.ok for r in got)
        assert [r.text for r in got] == expected
        assert set(s.faults_seen) == set(FAULTS)  # every kind was injected at least once
        assert len(s.paid) == 30 and set(s.paid.values()) == {1}  # each prompt paid exactly once
        assert t.summary.succeeded == 30 and t.summary.unresolved == 0
        # Client-level faults (429/500/timeout/truncated) never reach the store; malformed or empty
        # replies do, as failures that were then retried by policy.
        fails = [json.loads(x) for x in (tmp_path / "store.jsonl").read_text().splitlines()]
        fails = [r for r in fails if not r["ok"]]
        assert len(fails) == t.summary.failures > 0
        # A second run over the same store pays for nothing.
        t2 = _teacher(s, CallStore(tmp_path / "store.jsonl"))
        again = t2.complete(reqs)
        assert [r.text for r in again] == expected and all(r.cached for r in again)
        assert s.total_paid == 30 and t2.summary.calls == 0


def test_exhausted_retries_are_recorded_and_retried_next_run(tmp_path):
    reqs = _requests(3)
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",), max_faults=100) as s:
        t = _teacher(s, CallStore(tmp_path / "s.jsonl"), max_retries=1, policy_retries=1)
        got = t.complete(reqs)
        assert not any(r.ok for r in got) and all("HTTP 500" in r.error for r in got)
        assert t.summary.unresolved == 3 and t.summary.failures == 6 and s.total_paid == 0
    with FakeOpenAIServer() as healthy:
        t2 = _teacher(healthy, CallStore(tmp_path / "s.jsonl"))
        assert all(r.ok and not r.cached for r in t2.complete(reqs))
        assert healthy.total_paid == 3


def test_rejected_key_stops_the_run_without_leaking_it(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeOpenAIServer(api_key="the-right-key") as s:  # its 401 echoes the key it received
        t = _teacher(s, CallStore(tmp_path / "s.jsonl"))
        with pytest.raises(TeacherError) as err:
            t.complete(_requests(4))
    assert "HTTP 401" in str(err.value) and FAKE_KEY not in str(err.value) and "***" in str(err.value)
    assert f"${KEY_ENV}" in str(err.value) and "api_key_env" in str(err.value)  # where the rejected key came from
    assert err.value.__cause__ is None and err.value.__suppress_context__  # the client error is not chained
    assert t.summary.unresolved == 4 and t.summary.succeeded == 0
    assert FAKE_KEY not in (tmp_path / "s.jsonl").read_text()


@pytest.mark.parametrize("value, state", [(None, "not set"), ("", "set but empty")])
def test_missing_key_for_the_openai_api_names_the_variable_and_where_it_is_chosen(value, state, monkeypatch):
    if value is not None:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError) as err:
        OpenAIBackend("gpt-x", api_key_env=KEY_ENV)
    for words in (f"${KEY_ENV}", state, "api_key_env", "--api-key-env"):
        assert words in str(err.value), (words, str(err.value))


def test_cost_plan_is_printed_before_the_first_call_and_leaves_out_stored_calls(tmp_path, capsys):
    seen_at_first_call = []
    lock = threading.Lock()

    def reply(body):
        with lock:
            if not seen_at_first_call:
                seen_at_first_call.append(capsys.readouterr().out)
        return default_reply(body)

    reqs = _requests(5) + _requests(1)  # the 6th repeats the 1st: one call
    with FakeOpenAIServer(reply_fn=reply) as s:
        t = _teacher(s, CallStore(tmp_path / "s.jsonl"), budget_usd=10, price_table={"fake-model": [1, 2]})
        assert all(r.ok for r in t.complete(reqs))
        plan = seen_at_first_call[0].strip().splitlines()
        tin = sum((len(r.system + r.prompt) + 3) // 4 for r in reqs[:5])
        cost = (tin * 1 + 5 * 512 * 2) / 1e6
        assert plan == [f"teacher plan openai:fake-model: 5 new calls (0 served from the store), ~{tin} input tokens "
                        f"(chars/4) + at most 2560 output tokens (max_tokens), at most ${cost:.4f} before retries; "
                        f"within the budget of $10 ($10.0000 left)"]
        assert s.total_paid == 5
        again = _teacher(s, CallStore(tmp_path / "s.jsonl"), budget_usd=10, price_table={"fake-model": [1, 2]})
        assert all(r.cached for r in again.complete(reqs))
        assert "0 new calls (6 served from the store)" in capsys.readouterr().out
        assert s.total_paid == 5


def test_cost_plan_flags_a_budget_it_would_exceed_before_spending(tmp_path, capsys):
    with FakeOpenAIServer() as s:
        t = _teacher(s, None, budget_usd=1, price_table={"fake-model": [1000, 1000]})
        plan = plan_cost(t.name, t.model, _requests(4), 0, t.prices)
        assert plan.calls == 4 and plan.output_tokens == 4 * 512 and plan.cost_usd > 2
        assert plan.exceeds(1.0) and not plan.exceeds(None)
        t.complete(_requests(4))  # the fake server's replies are short: the run itself stays under $1
        first = capsys.readouterr().out.splitlines()[0]
    assert "WARNING: EXCEEDS the budget of $1" in first and "4 new calls" in first
    unpriced = plan_cost("openai:other", "other", _requests(2), 0, t.prices)
    assert unpriced.cost_usd is None and "no price known" in unpriced.line()


def _files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def _teach_cmd(url, out: Path, tag: str):
    return [sys.executable, "-m", "nesylib.teacher.cli", "teach", "--backend", "openai", "--model", "fake-model",
            "--base-url", url, "--api-key-env", KEY_ENV, "--datasets", "gsm8k", "--limit", "3", "--max-rounds", "2",
            "--store", str(out / f"{tag}_store.jsonl"), "--export-store", str(out / f"{tag}_share.jsonl"),
            "--out", str(out / f"{tag}.jsonl"), "--price", "1,2", "--budget-usd", "10", "--timeout", "5"]


def test_cli_generation_never_writes_the_key(tmp_path, data_dir):
    env = {**os.environ, KEY_ENV: FAKE_KEY, "NO_PROXY": "127.0.0.1,localhost"}
    out = tmp_path / "run"
    never_right = lambda body: "Some reasoning. Therefore, the answer is unknown."  # noqa: E731
    with FakeOpenAIServer(api_key=FAKE_KEY, fault_rate=0.3, seed=1, faults=("429", "malformed", "empty"),
                          reply_fn=never_right) as s:
        ok = subprocess.run(_teach_cmd(s.base_url, out, "good"), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert s.total_paid == 3 * (2 + 3)  # 3 items x 2 rounds (2 + 3 samples), none right
    summary = json.loads((out / "good.summary.json").read_text())
    assert summary["succeeded"] == 15 and summary["calls"] > 15 and summary["cost_usd"] > 0
    with FakeOpenAIServer(api_key="another-key") as s:  # rejects our key and echoes it in the 401
        bad = subprocess.run(_teach_cmd(s.base_url, out, "bad"), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert bad.returncode == 2 and "HTTP 401" in bad.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "bad.summary.json", "bad_store.jsonl", "good.jsonl", "good.stats.json", "good.summary.json",
        "good_share.jsonl", "good_store.jsonl"]
    assert "HTTP 401" in (out / "bad_store.jsonl").read_text()  # the failure is recorded, scrubbed
    for text in (_files_text(out), ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert FAKE_KEY not in text


_WORKER = """
import json, sys
from nesylib.teacher import TeacherRequest, teacher_from_params
url, store, out = sys.argv[1:4]
t = teacher_from_params("openai", "fake-model", base_url=url, api_key_env="NESYLIB_NO_SUCH_KEY",
                        store_path=store, concurrency=2, timeout=5)
replies = t.complete([TeacherRequest(prompt=f"item {i}", uid=str(i)) for i in range(40)])
json.dump([r.text for r in replies], open(out, "w"))
print(t.summary)
"""


def test_killed_run_resumes_without_repeating_stored_calls(tmp_path):
    store = tmp_path / "store.jsonl"
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    with FakeOpenAIServer(delay=0.1) as s:  # 40 calls over 2 workers: ~2 s to kill it in
        args = [sys.executable, "-c", _WORKER, s.base_url, str(store), str(tmp_path / "out.json")]
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if store.is_file() and store.read_text().count("\n") >= 10:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "worker finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored = {json.loads(x)["uid"] for x in store.read_text().splitlines() if x.endswith("}")}
        assert 10 <= len(stored) < 40
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        texts = json.loads((tmp_path / "out.json").read_text())
        assert len(texts) == 40 and all(texts)
        # Stored calls were not paid again; at most the calls in flight at the kill (2) were.
        # Only this test's 40 request bodies are counted: once in CI a request from outside this
        # test (a 41st body, paid once) reached the server's port.
        body = lambda u: body_key({"model": "fake-model", "messages": [  # noqa: E731
            {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": f"item {u}"}],
            "temperature": 0.0, "top_p": 1.0, "max_tokens": 512})
        ours = {body(u): s.paid[body(u)] for u in map(str, range(40))}
        assert all(ours.values()), "every call was paid at least once"
        repaid = {k for k, v in ours.items() if v > 1}
        assert not repaid & {body(u) for u in stored}
        assert len(repaid) <= 2 and sum(ours.values()) == 40 + len(repaid), (
            ours, [s.bodies[k] for k in s.paid if k not in ours])
        assert len(CallStore(store)) == 40
