"""CoT generation: CasCoD prompts, the sampling schedule, rejection filtering, local backends."""
import json
import re

import pytest

from fake_openai_server import FakeOpenAIServer, body_key
from nesylib.data.benchmarks import load_bbh, load_gsm8k, subsample
from nesylib.evaluation.extract import is_correct
from nesylib.methods.prompts import ANSWER_MARKER
from nesylib.teacher import (CachedTeacher, CallStore, SampleSchedule, TeacherRequest, cot_prompt,
                             generate_rationales, load_rationales)
from nesylib.teacher.cot import clean_rationale
from nesylib.teacher.local import LocalBackend
from nesylib.teacher.openai_backend import OpenAIBackend


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def bbh_records(data_dir):
    recs = load_bbh("train", tasks=["navigate", "logical_deduction_three_objects"])
    return subsample(recs, 4, seed=1)


def test_bbh_prompt_is_cascod_file_with_the_question(bbh_records, data_dir):
    rec = bbh_records[0]
    p = cot_prompt(rec)
    raw = (data_dir / "cascod-prompts/cot-prompts/navigate.txt").read_text()
    assert p.startswith(raw.split("\n")[0]) and "{QUESTION}" not in p
    assert p.endswith(f"\n\nQ: {rec['question']}\nA: Let's think step by step.")
    assert p.count("\nA: Let's think step by step.") == 4 and p.count(f"{ANSWER_MARKER} ") == 3


def test_gsm8k_prompt_asks_for_the_marker(data_dir):
    rec = load_gsm8k("train")[0]
    p = cot_prompt(rec)
    assert f'"{ANSWER_MARKER} N."' in p and p.endswith(f"Q: {rec['question']}\nA: Let's think step by step.")


def test_cascod_schedule():
    assert SampleSchedule().rounds() == [(2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    long = SampleSchedule(max_rounds=16).rounds()
    assert long[8] == (10, 1.0) and long[-1] == (10, 1.5) and long[13] == (10, 1.5)


def test_clean_rationale():
    assert clean_rationale("Let's think step by step. a. b. Therefore, the answer is 3.5 apples.\n\nQ: more?") == \
        "a. b. Therefore, the answer is 3.5 apples."
    assert clean_rationale("x\nTherefore, the answer is (B)\nExplanation: ...") == "x\nTherefore, the answer is (B)."
    assert clean_rationale("no marker") is None and clean_rationale("Therefore, the answer is .") is None
    assert clean_rationale(None) is None


def _reply(body):
    """A deterministic fake teacher: picks an option from the asked question by hash; sometimes no marker."""
    prompt = body["messages"][-1]["content"]
    question = prompt.rsplit("\nQ: ", 1)[-1]
    letters = re.findall(r"^\(([A-Z])\)", question, re.M)
    options = [f"({x})" for x in letters] or ["Yes", "No"]
    h = body_key(body)
    if int(h[8:10], 16) % 4 == 0:
        return "I would need more information to decide."
    return (f"Weighing the facts step by step.\n{ANSWER_MARKER} {options[int(h[:8], 16) % len(options)]}."
            "\n\nQ: an invented follow-up question\nA: Let's think step by step.")


def _expected(records, schedule):
    """Which round accepts each record, derived from the fake teacher directly."""
    out = {}
    for r in records:
        for rnd, (n, t) in enumerate(schedule.rounds()):
            body = {"model": "fake-model", "messages": [{"role": "user", "content": cot_prompt(r)}],
                    "temperature": t, "top_p": 1.0, "max_tokens": 1024}
            text = clean_rationale(_reply(body))
            if text and is_correct(text, r["answer"], r["task"], r["question"]):
                out[r["uid"]] = rnd
                break
    return out


def test_generation_with_retries_filter_and_store(bbh_records, tmp_path):
    schedule = SampleSchedule(max_rounds=3)
    want = _expected(bbh_records, schedule)
    assert 0 < len(want) < len(bbh_records)  # the fixture exercises acceptance and rejection
    with FakeOpenAIServer(reply_fn=_reply, fault_rate=0.2, seed=3, faults=("429", "malformed")) as s:
        teacher = CachedTeacher(OpenAIBackend("fake-model", base_url=s.base_url, api_key_env="NESYLIB_NO_KEY",
                                              timeout=5), CallStore(tmp_path / "store.jsonl"), retry_backoff_s=0.01)
        res = generate_rationales(bbh_records, teacher, schedule=schedule)
        paid = s.total_paid
    got = {r["uid"]: r["provenance"]["round"] for r in res.records}
    assert got == want
    starts = [0, 2, 5]  # first sample index of each round (n = 2, 3, 4)
    for r in res.records:
        prov = r["provenance"]
        rnd = prov["round"]
        assert starts[rnd] <= prov["sample_index"] < starts[rnd] + schedule.rounds()[rnd][0]
        assert prov["temperature"] == schedule.rounds()[rnd][1] and prov["teacher"] == "openai:fake-model"
        assert "\nQ:" not in r["rationale"] and r["rationale"].endswith(".")
        assert is_correct(r["rationale"], r["answer"], r["task"], r["question"])
    tot = res.totals()
    assert tot.items == len(bbh_records) and tot.accepted == len(want)
    assert tot.wrong + tot.no_marker + tot.failed == len(res.rejected) == len(bbh_records) - len(want)
    # Items accepted in round 1 drew 2 samples; every rejected item drew 2 + 3 + 4.
    assert tot.samples == sum(sum(n for n, _ in schedule.rounds()[:want[u] + 1]) if u in want else 9
                              for u in (r["uid"] for r in bbh_records))
    assert paid == tot.samples == len(CallStore(tmp_path / "store.jsonl"))  # one paid call per sample
    # The same run over the store is free and gives the same dataset.
    fresh = CachedTeacher(OpenAIBackend("fake-model", base_url="http://127.0.0.1:9/v1", api_key_env="NESYLIB_NO_KEY"),
                          CallStore(tmp_path / "store.jsonl"))
    again = generate_rationales(bbh_records, fresh, schedule=schedule)
    assert again.records == res.records and fresh.summary.calls == 0
    res.save(tmp_path / "out.jsonl")
    assert load_rationales(tmp_path / "out.jsonl") == json.loads(json.dumps(res.records))
    # CasCoD's literal loop stops at the first marker, so it can only keep fewer items.
    literal = generate_rationales(bbh_records, fresh, schedule=schedule, until="marker")
    assert {r["uid"] for r in literal.records} <= set(want)


def test_local_backend_generation_is_stored_and_replayed_without_loading(bbh_records, tmp_path, tiny_model_dir):
    recs = bbh_records[:2]
    one = SampleSchedule(n0=2, max_rounds=1)
    t = CachedTeacher(LocalBackend("tiny-llama", batch_size=4), CallStore(tmp_path / "s.jsonl"))
    res = generate_rationales(recs, t, schedule=one, max_tokens=8)
    assert res.totals().items == 2 and res.totals().failed == 0  # a random model answers, without the marker
    assert t.summary.succeeded == 4 and t.summary.prompt_tokens > 4 * 500 and t.summary.completion_tokens > 0
    t2 = CachedTeacher(LocalBackend("tiny-llama"), CallStore(tmp_path / "s.jsonl"))
    again = generate_rationales(recs, t2, schedule=one, max_tokens=8)
    assert t2.summary.cache_hits == 4 and t2.backend._lm is None  # stored calls never load the model
    assert again.table() == res.table()


def test_smollm2_uses_its_chat_template_and_is_deterministic(smollm2_dir):
    b = LocalBackend("smollm2-135m")
    req = TeacherRequest(prompt="What is 2+2? Answer briefly.", max_tokens=12)
    assert b.render(req).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    bare = b.render(TeacherRequest(prompt="hi", system=""))  # no system message: the template's own default
    assert "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" in bare and "helpful assistant." not in bare
    first, second = b.complete([req])[0], b.complete([req])[0]
    assert first.ok and first.text == second.text and "4" in first.text
    sampled = [TeacherRequest(prompt="Name a fruit.", temperature=1.0, max_tokens=8, sample_index=i) for i in (0, 1)]
    assert [r.text for r in b.complete(sampled)] == [r.text for r in b.complete(sampled)]  # seeded sampling
