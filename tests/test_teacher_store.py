"""Call store and CachedTeacher: persistence, torn lines, locking, export/import, cost, budget."""
import json
import multiprocessing as mp
import threading

import pytest

from nesylib.errors import ConfigError, DataError
from nesylib.teacher import (BudgetExceeded, CachedTeacher, CallStore, PriceTable, TeacherReply, TeacherRequest,
                             call_key)


def _rec(key, ok=True, text="t", **kw):
    return {"key": key, "backend": "b", "model": "m", "ok": ok, "text": text if ok else None,
            "error": None if ok else "boom", "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.5, **kw}


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


class CountingBackend:
    """A deterministic in-process backend that counts calls and can fail on demand."""
    backend, model, name = "fake", "fake-1", "fake:fake-1"
    parallel, batch_size, paid = True, 1, True

    def __init__(self, fail_prompts=(), empty_first=()):
        self.calls = []
        self.fail_prompts = set(fail_prompts)
        self.empty_first = set(empty_first)
        self.lock = threading.Lock()

    def complete(self, requests):
        out = []
        for r in requests:
            with self.lock:
                self.calls.append(r.prompt)
                n = self.calls.count(r.prompt)
            if r.prompt in self.fail_prompts:
                out.append(TeacherReply(text=None, ok=False, error="server said no"))
            elif r.prompt in self.empty_first and n == 1:
                out.append(TeacherReply(text="   ", ok=True, prompt_tokens=3))
            else:
                out.append(TeacherReply(text=f"reply to {r.prompt} #{r.sample_index}", ok=True,
                                        prompt_tokens=100, completion_tokens=50, finish_reason="stop"))
        return out


# ----------------------------------------------------------------------------------- store
def test_round_trip_and_failures_are_never_served(tmp_path):
    path = tmp_path / "store.jsonl"
    s = CallStore(path)
    s.put(_rec("k1", ok=False))
    assert s.get("k1") is None and s.failures("k1") == 1
    s.put(_rec("k1", text="good"))
    s.put(_rec("k2", ok=False))
    again = CallStore(path)
    assert again.get("k1")["text"] == "good"
    assert again.get("k2") is None and again.failures("k2") == 1
    assert len(again) == 1 and "k1" in again and "k2" not in again
    assert [r["ok"] for r in _lines(path)] == [False, True, False]
    assert again.stats() == {"calls_ok": 1, "failed_attempts": 2, "prompt_tokens": 10, "completion_tokens": 5,
                             "cost_usd": 0.5}


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "store.jsonl"
    s = CallStore(path)
    for i in range(3):
        s.put(_rec(f"k{i}"))
    good = path.read_bytes()
    path.write_bytes(good + b'{"key": "k9", "backend": "b", "mo')  # a writer killed mid-record
    s2 = CallStore(path)
    assert len(s2) == 3 and s2.get("k9") is None
    s2.put(_rec("k3"))
    assert path.read_bytes().startswith(good)
    assert [r["key"] for r in _lines(path)] == ["k0", "k1", "k2", "k3"]  # every line parses again
    assert len(CallStore(path)) == 4


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "store.jsonl"
    path.write_text(json.dumps(_rec("a")) + "\n{not json}\n" + json.dumps(_rec("b")) + "\n")
    with pytest.raises(DataError, match=r"store\.jsonl:2: malformed"):
        CallStore(path)


def _writer(path, tag, n):
    s = CallStore(path)
    for i in range(n):
        s.put(_rec(f"{tag}-{i}", text="x" * 5000))  # long lines: interleaving would break them


def test_concurrent_processes_and_threads_write_whole_lines(tmp_path):
    path = tmp_path / "store.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, f"p{i}", 40)) for i in range(3)]
    threads = [threading.Thread(target=_writer, args=(path, f"t{i}", 40)) for i in range(2)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    rows = _lines(path)
    assert len(rows) == 200 and len({r["key"] for r in rows}) == 200
    assert len(CallStore(path)) == 200


def test_a_store_sees_calls_another_process_stored_after_it_loaded(tmp_path):
    path = tmp_path / "store.jsonl"
    early = CallStore(path)
    p = mp.get_context("fork").Process(target=_writer, args=(path, "late", 2))
    p.start()
    p.join()
    assert early.get("late-1") is not None


def test_export_import_round_trip(tmp_path):
    src = CallStore(tmp_path / "a.jsonl")
    src.put(_rec("k1", text="one"))
    src.put(_rec("k2", ok=False))
    src.put(_rec("k3", text="three"))
    assert src.export(tmp_path / "share.jsonl.gz") == 2  # successes only
    assert src.export(tmp_path / "all.jsonl", include_failures=True) == 3
    dst = CallStore(tmp_path / "b.jsonl")
    dst.put(_rec("k3", text="mine"))
    assert dst.import_file(tmp_path / "share.jsonl.gz") == 1  # k3 already stored: kept as is
    assert dst.get("k1")["text"] == "one" and dst.get("k3")["text"] == "mine"
    assert dst.import_file(tmp_path / "share.jsonl.gz") == 0
    assert CallStore(tmp_path / "b.jsonl").get("k1")["text"] == "one"
    with pytest.raises(DataError, match="does not exist"):
        dst.import_file(tmp_path / "missing.jsonl")


def test_call_key_covers_everything_that_changes_the_reply():
    base = TeacherRequest(prompt="p", system="s", temperature=0.2, sample_index=0)
    k = call_key("openai", "m", base)
    variants = [TeacherRequest(prompt="p2", system="s", temperature=0.2),
                TeacherRequest(prompt="p", system="s2", temperature=0.2),
                TeacherRequest(prompt="p", system="s", temperature=0.3),
                TeacherRequest(prompt="p", system="s", temperature=0.2, top_p=0.9),
                TeacherRequest(prompt="p", system="s", temperature=0.2, max_tokens=7),
                TeacherRequest(prompt="p", system="s", temperature=0.2, sample_index=1),
                TeacherRequest(prompt="p", system="s", temperature=0.2, extra={"seed": 3})]
    assert len({call_key("openai", "m", v) for v in variants} | {k}) == len(variants) + 1
    assert call_key("local", "m", base) != k and call_key("openai", "m2", base) != k
    same = TeacherRequest(prompt="p", system="s", temperature=0.2, uid="other", kind="cot", record={"x": 1})
    assert call_key("openai", "m", same) == k


# --------------------------------------------------------------------------- CachedTeacher
def test_repeated_calls_are_free_and_duplicates_call_once(tmp_path):
    backend = CountingBackend()
    t = CachedTeacher(backend, CallStore(tmp_path / "s.jsonl"), concurrency=4)
    reqs = [TeacherRequest(prompt=f"q{i % 5}", sample_index=0) for i in range(10)]
    first = t.complete(reqs)
    assert len(backend.calls) == 5  # 10 requests, 5 distinct calls
    assert [r.text for r in first] == [f"reply to q{i % 5} #0" for i in range(10)]
    assert not any(r.cached for r in first)
    t2 = CachedTeacher(CountingBackend(), CallStore(tmp_path / "s.jsonl"))
    second = t2.complete(reqs)
    assert t2.backend.calls == [] and all(r.cached for r in second)
    assert [r.text for r in second] == [r.text for r in first]
    assert t2.summary.cache_hits == 10 and t2.summary.calls == 0 and t2.summary.cost_usd == 0


def test_failures_are_recorded_retried_by_policy_and_never_served(tmp_path):
    path = tmp_path / "s.jsonl"
    backend = CountingBackend(fail_prompts={"bad"}, empty_first={"flaky"})
    t = CachedTeacher(backend, CallStore(path), policy_retries=2, retry_backoff_s=0.0)
    bad, flaky = t.complete([TeacherRequest(prompt="bad"), TeacherRequest(prompt="flaky")])
    assert not bad.ok and bad.text is None and "server said no" in bad.error
    assert flaky.ok and flaky.text.startswith("reply to flaky")
    assert backend.calls.count("bad") == 3 and backend.calls.count("flaky") == 2
    rows = _lines(path)
    assert sum(1 for r in rows if not r["ok"]) == 4  # 3 x bad + the empty flaky reply
    assert any(r["error"] == "empty reply" for r in rows)
    s = t.summary
    assert (s.calls, s.succeeded, s.failures, s.unresolved) == (5, 1, 4, 1)
    # The next run asks again for the failed call instead of serving the failure.
    healed = CountingBackend()
    t2 = CachedTeacher(healed, CallStore(path))
    assert t2.complete([TeacherRequest(prompt="bad")])[0].ok and healed.calls == ["bad"]


def test_cost_accounting_and_budget_cap(tmp_path):
    prices = {"fake-1": [1.0, 2.0]}  # USD per 1M tokens: 100 in + 50 out = 0.0002 per call
    path = tmp_path / "s.jsonl"
    t = CachedTeacher(CountingBackend(), CallStore(path), concurrency=1, budget_usd=0.0005, price_table=prices)
    with pytest.raises(BudgetExceeded, match=r"budget of \$0\.0005 reached"):
        t.complete([TeacherRequest(prompt=f"q{i}") for i in range(10)])
    assert t.summary.succeeded == 3 and t.summary.cost_usd == pytest.approx(0.0006)
    assert len(CallStore(path)) == 3
    # Stored calls are still served with the budget exhausted (and cost nothing).
    t2 = CachedTeacher(CountingBackend(), CallStore(path), budget_usd=0.0, price_table=prices)
    assert all(r.cached for r in t2.complete([TeacherRequest(prompt=f"q{i}") for i in range(3)]))
    with pytest.raises(BudgetExceeded):
        t2.complete([TeacherRequest(prompt="q7")])
    assert sum(r["cost_usd"] for r in _lines(path)) == pytest.approx(0.0006)
    assert PriceTable({"m": {"input": 3, "output": 15}}).cost("m", 1_000_000, 100_000) == pytest.approx(4.5)


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ConfigError, match="needs a price for model 'fake-1'"):
        CachedTeacher(CountingBackend(), budget_usd=1.0)
    with pytest.raises(ConfigError, match="concurrency"):
        CachedTeacher(CountingBackend(), concurrency=0)
    with pytest.raises(ConfigError, match=r"price_table\['m'\]"):
        PriceTable({"m": "cheap"})
