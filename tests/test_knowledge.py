"""SKIntern knowledge generation (§4.2, D15): prompt structure, reply parsing, retries and failures."""
import pytest

from nesylib.data.benchmarks import load_bbh, load_gsm8k
from nesylib.errors import ConfigError
from nesylib.knowledge.writer import (CONCISION, DEMOS, INSTRUCTION, KNOWLEDGE_PROMPT_VERSION, ROLE, fewshot_block,
                                      generate_knowledge, knowledge_prompt, knowledge_requests)
from nesylib.knowledge.text import canonical
from nesylib.methods.prompts import prefix_prompt
from nesylib.teacher.base import Teacher, TeacherReply

GOOD = ("Learning Summary:\n1. Follow each step.\n2. Check the result.\n\n"
        "Supplementary Knowledge:\n1. A fact.\n2. Another fact.")


class ScriptedTeacher:
    """Answers each request with script(request) and remembers every request it saw."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.seen = script, []

    def complete(self, requests):
        self.seen.extend(requests)
        return [self.script(r) for r in requests]


@pytest.fixture(scope="module")
def records(data_dir):
    return load_bbh("train", tasks=["date_understanding", "navigate"])[:3] + load_gsm8k("train")[:1]


def test_prompt_structure(records):
    rec = records[0]
    p = knowledge_prompt(rec, n_demos=1)
    head = f"{ROLE} {prefix_prompt(rec)} {INSTRUCTION} {rec['task_description']} {CONCISION}\n\n"
    demo = DEMOS[0].question + DEMOS[0].rational + "\n\n"
    assert p == head + demo + f"Question: {rec['question']}\nAnswer: {rec['answer']}\n\n"
    assert p.count("Learning Summary:") == 1 and p.count("Supplementary Knowledge:") == 1  # the demo's
    assert knowledge_prompt(rec, n_demos=0) == head + f"Question: {rec['question']}\nAnswer: {rec['answer']}\n\n"
    gsm = knowledge_prompt(records[-1], n_demos=0)
    assert "math questions about gsm8k" in gsm and gsm.endswith(f"Answer: {records[-1]['answer']}\n\n")
    with pytest.raises(ConfigError, match="n_demos"):
        knowledge_prompt(rec, n_demos=2)


def test_demo_shape():
    d = DEMOS[0]
    assert d.question.startswith("Question: ") and d.question.endswith("\nAnswer: (C).\n\n")
    assert d.rational.startswith("Learning Summary:\n1. ")
    summary, knowledge = d.rational.split("\n\nSupplementary Knowledge:\n")
    assert len(summary.splitlines()) - 1 >= 4 and len(knowledge.splitlines()) >= 4
    assert 150 <= len(d.rational.split()) <= 250
    assert canonical(d.rational) == d.rational  # the demo is a usable, canonical knowledge text
    assert fewshot_block(0) == ""


def test_requests(records):
    reqs = knowledge_requests(records, n_demos=1, temperature=0.8, sample_index=2)
    assert len(reqs) == len(records)
    for r, q in zip(records, reqs):
        assert q.kind == "knowledge" and q.temperature == 0.8 and q.sample_index == 2
        assert q.uid == r["uid"] and q.record is r and q.prompt == knowledge_prompt(r, 1)
        assert q.system == "You are a helpful assistant."
        assert q.extra["prompt_version"] == KNOWLEDGE_PROMPT_VERSION


def test_generate_retries_with_new_sample_index_and_reports_failures(records):
    bad_uid, err_uid = records[1]["uid"], records[2]["uid"]

    def script(req):
        if req.uid == err_uid:
            return TeacherReply(text=None, ok=False, error="HTTP 500")
        if req.uid == bad_uid:
            return TeacherReply(text="Learning Summary:\n1. Only half the answer.")
        # everyone else fails the first attempt, then succeeds
        return TeacherReply(text=GOOD.replace("Learning Summary:", "Summary of Learning:") if req.sample_index
                            else "I cannot help with that.")

    teacher = ScriptedTeacher(script)
    assert isinstance(teacher, Teacher)
    knowledge, failures = generate_knowledge(records, teacher, max_attempts=3)
    ok_uids = {r["uid"] for r in records} - {bad_uid, err_uid}
    assert set(knowledge) == ok_uids and all(v == GOOD for v in knowledge.values())
    assert sorted(f["uid"] for f in failures) == sorted([bad_uid, err_uid])
    by_uid = {f["uid"]: f for f in failures}
    assert by_uid[bad_uid]["attempts"] == 3 and all("Supplementary" in r for r in by_uid[bad_uid]["reasons"])
    assert by_uid[err_uid]["reasons"] == ["teacher error: HTTP 500"] * 3
    # attempt a asks again only for the pending items, with sample_index = a
    idx = [(q.uid, q.sample_index) for q in teacher.seen]
    assert idx.count((bad_uid, 2)) == 1 and all((u, 1) in idx for u in ok_uids)
    assert not any(u in ok_uids and s == 2 for u, s in idx)
    assert len(teacher.seen) == len(records) + len(records) + 2


def test_generate_rejects_bad_input(records):
    t = ScriptedTeacher(lambda r: TeacherReply(text=GOOD))
    with pytest.raises(ConfigError, match="max_attempts"):
        generate_knowledge(records, t, max_attempts=0)
    with pytest.raises(ConfigError, match="twice"):
        generate_knowledge(records + records[:1], t)
    short = ScriptedTeacher(lambda r: TeacherReply(text=GOOD))
    short.complete = lambda reqs: []
    with pytest.raises(ConfigError, match="0 replies"):
        generate_knowledge(records, short)


# ------------------------------------------------------------------------ enough knowledge?
FAILS = [{"uid": "bbh/navigate/1", "attempts": 3, "reasons": ["empty reply", "no 'Learning Summary:' header",
                                                              "no 'Learning Summary:' header"],
          "reply": "I cannot help with this one. " * 20},
         {"uid": "bbh/navigate/2", "attempts": 3, "reasons": ["teacher error: HTTP 500"] * 3}]


@pytest.mark.parametrize("items, with_knowledge, failures, threshold, raises", [
    (10, 10, [], 0.5, False),
    (10, 5, FAILS, 0.5, False),        # exactly at the threshold is enough
    (10, 4, FAILS, 0.5, True),
    (10, 0, FAILS, 0.5, True),         # the tutor never gave a usable reply
    (10, 0, 10, 0.5, True),            # a bare failure count
    (10, 0, FAILS, 0.0, False),        # the threshold lowered on purpose
    (10, 9, FAILS, 1.0, True),
    (0, 0, [], 0.5, False),            # nothing was asked (e.g. no student errors): nothing to judge
])
def test_require_knowledge_stops_below_the_threshold_naming_teacher_counts_and_fix(items, with_knowledge, failures,
                                                                                   threshold, raises):
    from nesylib.knowledge.writer import NotEnoughKnowledge, require_knowledge

    n_failures = failures if isinstance(failures, int) else len(failures)
    args = (items, with_knowledge, failures, "openai:fake-tutor", threshold, "NesyCD KB (02)")
    if not raises:
        summary = require_knowledge(*args)
        assert summary["items"] == items and summary["with_knowledge"] == with_knowledge
        assert summary["failures"] == n_failures and summary["teacher"] == "openai:fake-tutor"
        return
    with pytest.raises(NotEnoughKnowledge) as err:
        require_knowledge(*args, fix="the tutor parameters (tutor_backend, tutor_model)")
    msg = str(err.value)
    assert isinstance(err.value, ConfigError)
    for words in ("NesyCD KB (02)", "openai:fake-tutor", f"{with_knowledge} of {items} items",
                  f"{n_failures} failures", f"min_knowledge_share={threshold}", "tutor_backend", "lower"):
        assert words in msg, (words, msg)
    if not isinstance(failures, int):
        assert "no 'Learning Summary:' header" in msg  # the first failure's reason
        assert "I cannot help with this one." in msg and len(msg) < 1200  # its reply, truncated


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_require_knowledge_rejects_a_bad_threshold(bad):
    from nesylib.knowledge.writer import require_knowledge

    with pytest.raises(ConfigError, match="min_knowledge_share"):
        require_knowledge(4, 4, [], "t", bad)
    with pytest.raises(ConfigError, match="exceeds"):
        require_knowledge(4, 5, [], "t", 0.5)


@pytest.mark.parametrize("entries, errors, failures, words", [
    (0, 7, 7, ["kb.jsonl", "tutor openai:x", "7 errors", "7 failures", "02_kb_construction"]),
    (0, 0, 0, ["kb.jsonl", "no errors", "02_kb_construction"]),
])
def test_an_empty_kb_is_refused_naming_the_file_and_why(entries, errors, failures, words, tmp_path):
    from nesylib.knowledge.writer import NotEnoughKnowledge, require_kb_entries

    with pytest.raises(NotEnoughKnowledge) as err:
        require_kb_entries(entries, tmp_path / "kb.jsonl", errors, failures, "openai:x")
    for w in words:
        assert w in str(err.value)
    require_kb_entries(1, tmp_path / "kb.jsonl", errors, failures, "openai:x")  # one entry is enough


def test_failures_keep_the_first_unparseable_reply(records):
    chatty = "Sure! Here are some thoughts. " * 40
    knowledge, failures = generate_knowledge(records[:2], ScriptedTeacher(lambda r: TeacherReply(text=chatty)),
                                             max_attempts=2)
    assert knowledge == {} and [f["attempts"] for f in failures] == [2, 2]
    assert all(f["reply"].startswith("Sure! Here are") and len(f["reply"]) < len(chatty) for f in failures)
    _, failures = generate_knowledge(records[:1], ScriptedTeacher(lambda r: TeacherReply(text=None, ok=False,
                                                                                        error="HTTP 500")))
    assert "reply" not in failures[0]  # no text came back: nothing to show
