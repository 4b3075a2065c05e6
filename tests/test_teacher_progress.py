"""The live progress display of teacher calls (``CallProgress``), checked against a local
OpenAI-compatible server: the last line of the bar must state exactly what the teacher recorded and
what the server billed; a run the store answers entirely shows no bar and says "0 new calls".
Also the key messages of issue #16 item 6 not covered in test_teacher_faults.py: the default variable
OPENAI_API_KEY through ``nesylib teach``, and a server that rejects a request sent without a key."""
import json
import re

import pytest

from fake_openai_server import FakeOpenAIServer
from nesylib import cli
from nesylib.teacher import CachedTeacher, CallStore, TeacherRequest
from nesylib.teacher.cot import GSM8K_INSTRUCTION
from nesylib.teacher.openai_backend import OpenAIBackend

KEY_ENV = "NESYLIB_TEST_PROGRESS_KEY"
PRICE = [1000.0, 2000.0]  # USD per 1M tokens: large enough that the fake server's short replies cost cents

LINE = re.compile(
    r"teacher (?P<name>\S+): (?P<done>\d+)/(?P<total>\d+) requests \|[^|]*\| \S+<\S+, "
    r"calls (?P<calls>\d+) \((?P<ok>\d+) ok, (?P<failed>\d+) failed, (?P<retried>\d+) retried\)"
    r"(?:, (?P<unresolved>\d+) unresolved)?, tokens (?P<tin>\d+) in / (?P<tout>\d+) out"
    r"(?:, \$(?P<cost>[0-9.]+) spent (?:of \$(?P<budget>\S+) budget|\(no budget\)))?")


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)


def _requests(n):
    return [TeacherRequest(prompt=f"Question {i}: name {i} colours.", uid=f"p/{i}") for i in range(n)]


def _teacher(server, store=None, **kw):
    backend = OpenAIBackend("fake-model", base_url=server.base_url, api_key_env=KEY_ENV, timeout=5.0,
                            max_retries=kw.pop("max_retries", 6))
    return CachedTeacher(backend, store, concurrency=3, retry_backoff_s=0.01, **kw)


def _bar_lines(err: str) -> list[dict]:
    """Every drawn state of every bar in ``err`` (tqdm redraws with a carriage return)."""
    return [m.groupdict() for seg in re.split(r"[\r\n]", err) if (m := LINE.fullmatch(seg.strip()))]


def _ours(server, starts: str) -> set[str]:
    """The request bodies this test sent (user message starting with ``starts``): a stray request from
    outside the test that reaches the server's port is left out of its counts."""
    return {k for k, b in server.bodies.items() if b["messages"][-1]["content"].startswith(starts)}


def _served(server, starts: str) -> dict:
    """What the server did for this test's requests: HTTP attempts, billed calls, injected faults, tokens
    in and out of the billed calls (counted the way its ``usage`` reports them)."""
    ours = _ours(server, starts)
    assert ours, f"no request of this test reached the server ({starts!r})"
    tin = tout = 0
    for key in ours:
        n, body = server.paid[key], server.bodies[key]
        tin += n * sum(len(m["content"].split()) for m in body["messages"])
        tout += n * len(server.reply_fn(body).split())
    return {"attempts": sum(server.attempts[k] for k in ours), "paid": sum(server.paid[k] for k in ours),
            "faults": sum(server.attempts[k] - server.paid[k] for k in ours), "tokens": (tin, tout)}


def test_final_progress_line_states_what_was_called_billed_and_spent(tmp_path, capsys):
    reqs = _requests(12) + _requests(2)  # two repeats: 12 distinct new requests
    with FakeOpenAIServer(fault_rate=0.5, seed=5, faults=("429", "500")) as s:
        t = _teacher(s, CallStore(tmp_path / "store.jsonl"), budget_usd=50, price_table={"fake-model": PRICE})
        assert all(r.ok for r in t.complete(reqs))
        err = capsys.readouterr().err
        lines = _bar_lines(err)
        assert lines, err
        last = lines[-1]
        sm = t.summary
        served = _served(s, "Question ")
        tin, tout = served["tokens"]
        # the bar's count: this batch's distinct requests, every one answered
        assert (last["name"], int(last["done"]), int(last["total"])) == ("openai:fake-model", 12, 12)
        # calls as the server saw them: every HTTP attempt, the billed ones ok, the rest failed
        assert int(last["calls"]) == sm.calls == served["attempts"]
        assert int(last["ok"]) == sm.succeeded == served["paid"] == 12
        assert int(last["failed"]) == sm.failures == served["faults"] > 0
        assert int(last["retried"]) == sm.retries == sm.calls - 12  # each request's attempts after its first
        assert last["unresolved"] is None and sm.unresolved == 0
        assert (int(last["tin"]), int(last["tout"])) == (sm.prompt_tokens, sm.completion_tokens) == (tin, tout)
        cost = (tin * PRICE[0] + tout * PRICE[1]) / 1e6
        assert sm.cost_usd == pytest.approx(cost) and cost > 0.01
        assert last["cost"] == f"{cost:.4f}" and last["budget"] == "50"
        # the store's accounting agrees: one record per attempt
        stored = [json.loads(x) for x in (tmp_path / "store.jsonl").read_text().splitlines()]
        assert len(stored) == sm.calls and sum(r["ok"] for r in stored) == 12
        assert sum(r["cost_usd"] for r in stored) == pytest.approx(cost)

        # a rerun the store answers entirely: no bar, and the plan line says 0 new calls
        again = _teacher(s, CallStore(tmp_path / "store.jsonl"), budget_usd=50, price_table={"fake-model": PRICE})
        assert all(r.cached for r in again.complete(reqs))
        out, err = capsys.readouterr()
        assert "teacher plan openai:fake-model: 0 new calls (14 served from the store)" in out
        assert "requests |" not in err and _bar_lines(err) == []
        assert again.summary.calls == 0 and _served(s, "Question ")["paid"] == 12


def test_requests_given_up_count_as_done_and_unresolved_and_no_price_shows_no_cost(capsys):
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",), max_faults=100) as s:
        t = _teacher(s, None, max_retries=1)
        assert not any(r.ok for r in t.complete(_requests(3)))
    last = _bar_lines(capsys.readouterr().err)[-1]
    assert (int(last["done"]), int(last["total"])) == (3, 3)
    assert (int(last["calls"]), int(last["ok"]), int(last["failed"]), int(last["retried"])) == (6, 0, 6, 3)
    assert int(last["unresolved"]) == t.summary.unresolved == 3
    assert last["cost"] is None  # no price for the model: no USD shown


def test_progress_off_draws_nothing(capsys):
    with FakeOpenAIServer() as s:
        t = _teacher(s, None, progress=False)
        assert all(r.ok for r in t.complete(_requests(3)))
    assert capsys.readouterr().err == "" and t.summary.succeeded == 3


def _teach(store, out, url, *more):
    return cli.main(["teach", "--backend", "openai", "--model", "fake-model", "--base-url", url,
                     "--api-key-env", KEY_ENV, "--datasets", "gsm8k", "--limit", "3", "--max-rounds", "2",
                     "--store", str(store), "--out", str(out), "--price", ",".join(map(str, PRICE)),
                     "--budget-usd", "20", "--timeout", "5", "--retry-backoff", "0.01", *more])


def test_teach_command_progress_matches_its_summary_and_a_cached_rerun_makes_0_new_calls(tmp_path, capsys,
                                                                                        data_dir):
    never_right = lambda body: "Some steps here. Therefore, the answer is unknown."  # noqa: E731
    store = tmp_path / "store.jsonl"
    with FakeOpenAIServer(fault_rate=0.4, seed=2, faults=("429", "500"), reply_fn=never_right) as s:
        assert _teach(store, tmp_path / "r.jsonl", s.base_url) == 0
        out, err = capsys.readouterr()
        summary = json.loads((tmp_path / "r.summary.json").read_text())
        lines = _bar_lines(err)
        # two rounds, two bars: 3 items x 2 samples, then 3 items x 3 samples (none is ever right)
        finals = [ln for ln in lines if ln["done"] == ln["total"]]
        assert [ln["total"] for ln in finals][-1] == "9" and {ln["total"] for ln in lines} == {"6", "9"}
        last = lines[-1]
        served = _served(s, GSM8K_INSTRUCTION)
        assert int(last["calls"]) == summary["calls"] == served["attempts"]
        assert int(last["ok"]) == summary["succeeded"] == served["paid"] == 15
        assert int(last["failed"]) == summary["failures"] == served["faults"]
        assert int(last["retried"]) == summary["retries"] == summary["calls"] - 15
        assert (int(last["tin"]), int(last["tout"])) == (summary["prompt_tokens"], summary["completion_tokens"]) \
            == served["tokens"]
        assert last["cost"] == f"{summary['cost_usd']:.4f}" and last["budget"] == "20"
        assert out.index("teacher plan") < out.index("round 1")  # the plan comes before the round's calls

        assert _teach(store, tmp_path / "again.jsonl", s.base_url) == 0
        out, err = capsys.readouterr()
        assert "0 new calls (6 served from the store)" in out and "0 new calls (9 served from the store)" in out
        assert _bar_lines(err) == [] and "requests |" not in err
        assert json.loads((tmp_path / "again.summary.json").read_text())["calls"] == 0
        assert _served(s, GSM8K_INSTRUCTION)["paid"] == 15

    # the replay teacher makes no calls: no plan, no bar
    assert cli.main(["teach", "--backend", "replay", "--datasets", "gsm8k", "--limit", "2",
                     "--out", str(tmp_path / "replay.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert "teacher plan" not in out and "requests |" not in err


def test_teach_without_a_key_names_OPENAI_API_KEY_and_where_it_is_read(tmp_path, capsys, monkeypatch, data_dir):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = cli.main(["teach", "--backend", "openai", "--model", "gpt-4o-mini", "--datasets", "gsm8k",
                     "--limit", "1", "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    for words in ("$OPENAI_API_KEY", "not set", "--api-key-env", "api_key_env"):
        assert words in err, (words, err)


def test_a_request_rejected_for_want_of_a_key_names_the_variable_and_that_none_was_sent(tmp_path, capsys,
                                                                                       monkeypatch, data_dir):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(api_key="the-server-wants-this") as s:  # a local server that does need a key
        code = cli.main(["teach", "--backend", "openai", "--model", "served", "--base-url", s.base_url,
                         "--datasets", "gsm8k", "--limit", "1", "--max-rounds", "1", "--timeout", "5",
                         "--out", str(tmp_path / "r.jsonl")])
        assert s.total_paid == 0
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 401" in err
    for words in ("No key was sent", "$OPENAI_API_KEY", "not set", "--api-key-env"):
        assert words in err, (words, err)
