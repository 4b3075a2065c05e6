"""Knowledge base: error-analysis prompt, reply parsing, build with retries, JSONL round trip, retrieval."""
import json
import re

import pytest
import torch

from nesylib.methods import prompts
from nesylib.data.benchmarks import load_bbh, subsample
from nesylib.errors import ConfigError, DataError
from nesylib.knowledge.kb import (DEGENERATE_MARKERS, ENTRY_FIELDS, KB_PROMPT_VERSION, QUESTION_HEADER, RESPONSE_HEADER,
                                  KnowledgeBase, build_kb, confidence_gate, confidence_margin, error_analysis_prompt,
                                  question_slot, response_slot)
from nesylib.knowledge.text import LS_HEADER, SK_HEADER, parse
from nesylib.teacher.base import TeacherReply

VALID = ("Learning Summary:\n1. Read every option before deciding.\n2. Check each step.\n\n"
         "Supplementary Knowledge:\n1. A definition.\n2. A formula.")


@pytest.fixture(scope="module")
def records(data_dir):
    return subsample(load_bbh("train"), per_task=1, seed=3)  # 27 real items, one per task


def _error(rec, response="I think it is (A). Therefore, the answer is (A)."):
    return {"uid": rec["uid"], "record": rec, "question": prompts.std(rec), "stu_response": response,
            "stu_right_score": 0}


class ScriptedTeacher:
    """Answers attempt n of an item with ``script(uid, n)``; records every batch it gets."""
    name = "scripted-teacher"

    def __init__(self, script):
        self.script = script
        self.batches = []

    def complete(self, requests):
        self.batches.append(list(requests))
        return [self.script(r.uid, r.sample_index) for r in requests]


def _analysis(tag):
    return f"Learning Summary:\n1. Lesson about {tag}.\n\nSupplementary Knowledge:\n1. Fact about {tag}."


# ------------------------------------------------------------------------------------ the prompt
def test_error_prompt_structure(records):
    rec = records[0]
    p = error_analysis_prompt(prompts.std(rec), "It must be (B). Therefore, the answer is (B).")
    req = p.index("### Requirements:")
    fmt = p.index("### Return Format:")
    assert 0 < req < fmt
    numbered = re.findall(r"^(\d+)\. ", p[req:fmt], re.M)
    assert numbered == ["1", "2", "3", "4", "5", "6"]
    assert prompts.ANSWER_MARKER in p[req:fmt]  # requirement 4 names the marker
    assert f"{LS_HEADER} [Learning Summary]\n{SK_HEADER} [Supplementary Knowledge]\n\nExample 0\n" in p
    # the demo: question header, wrong-response header, then both analysis sections with 4-5 items
    demo = p[p.index("\n\nExample 0\n"):p.rindex(QUESTION_HEADER)]
    assert demo.index(QUESTION_HEADER) < demo.index(RESPONSE_HEADER) < demo.index(LS_HEADER) < demo.index(SK_HEADER)
    ls, sk = parse(demo[demo.index(LS_HEADER):])
    assert 4 <= len(re.findall(r"^\d+\. ", ls, re.M)) <= 5 and 4 <= len(re.findall(r"^\d+\. ", sk, re.M)) <= 5
    assert demo.endswith("\n\n")
    # the slots close the prompt, with the U+2019 apostrophe of the authors' header
    assert "’" in RESPONSE_HEADER
    tail = p[p.rindex(QUESTION_HEADER):]
    assert tail == (f"{QUESTION_HEADER}\n{question_slot(prompts.std(rec))}\n\n"
                    f"{RESPONSE_HEADER}\nIt must be (B). Therefore, the answer is (B).\n")
    assert p.count(QUESTION_HEADER) == 2 and p.count(RESPONSE_HEADER) == 2


def test_question_slot_stops_before_the_answer_cue(records):
    rec = records[5]
    slot = question_slot(prompts.std(rec))
    assert slot.endswith(f"Question: {rec['question']}")
    assert "step by step" not in slot and "\nAnswer: " not in slot
    assert question_slot("no cue here") == "no cue here"


def test_response_slot_limits_words_and_keeps_lines():
    long = "\n".join(" ".join(f"w{i}_{j}" for j in range(10)) for i in range(40))  # 400 words, 40 lines
    slot = response_slot(long)
    assert len(slot.split()) == 256
    assert slot.split() == long.split()[:256]
    assert slot.count("\n") == 25  # line breaks of the kept words survive
    assert response_slot("a b c", words=2) == "a b"


@pytest.mark.parametrize("marker", DEGENERATE_MARKERS)
def test_response_slot_cuts_at_degenerate_markers(marker):
    text = f"Start of the reasoning. {marker}{marker} and more junk"
    assert response_slot(text) == "Start of the reasoning."


def test_degenerate_markers_match_the_documented_list():
    assert DEGENERATE_MARKERS[0] == "? ? ? ? ? ? ? ? ? ? ?"
    assert DEGENERATE_MARKERS[1] == "| | | | | | | | | | | | |"
    assert "\t" * 14 in DEGENERATE_MARKERS and "0" * 19 in DEGENERATE_MARKERS and "\ufffd" * 7 in DEGENERATE_MARKERS
    assert "0, 0, 0, 0, 0, 0, 0, 0, 0, 0" in DEGENERATE_MARKERS and "not not not not not not not" in DEGENERATE_MARKERS
    assert len(DEGENERATE_MARKERS) == 10


# ------------------------------------------------------------------------------------ build_kb
def test_build_kb_retries_invalid_replies(records):
    errors = [_error(r) for r in records[:4]]
    bad_first = {errors[1]["uid"], errors[3]["uid"]}

    def script(uid, attempt):
        if uid in bad_first and attempt == 0:
            return TeacherReply(text="I cannot follow the format, sorry.")
        return TeacherReply(text=_analysis(uid))

    teacher = ScriptedTeacher(script)
    kb = build_kb(errors, teacher, student_name="tiny-student")
    assert len(kb) == 4 and kb.failures == []
    # attempt 0 is one batch of all items; attempt 1 re-asks only the two invalid ones
    assert [[r.uid for r in b] for b in teacher.batches] == [[e["uid"] for e in errors], sorted(bad_first, key=[
        e["uid"] for e in errors].index)]
    assert [r.sample_index for r in teacher.batches[1]] == [1, 1]
    req = teacher.batches[0][0]
    assert req.kind == "error_analysis" and req.temperature == 0.8 and req.record is records[0]
    assert req.extra == {"student_output": errors[0]["stu_response"], "student_prompt": errors[0]["question"]}
    assert req.prompt == error_analysis_prompt(errors[0]["question"], errors[0]["stu_response"])
    # entries keep the input order; ids are positions; provenance is complete
    assert [e["source_uid"] for e in kb] == [e["uid"] for e in errors]
    e = kb.entries[1]
    assert e["id"] == 1 and e["summary"] == _analysis(errors[1]["uid"])
    assert e["learning_summary"] == f"1. Lesson about {errors[1]['uid']}."
    assert e["supplementary_knowledge"] == f"1. Fact about {errors[1]['uid']}."
    assert (e["student"], e["teacher"], e["prompt_version"]) == ("tiny-student", "scripted-teacher", KB_PROMPT_VERSION)
    assert e["question"] == records[1]["question"] and e["task_description"] == records[1]["task_description"]
    assert e["student_output"] == errors[1]["stu_response"] and e["created"]
    assert list(e) == list(ENTRY_FIELDS)


def test_build_kb_records_items_that_always_fail(records):
    errors = [_error(r) for r in records[:3]]
    doomed, down = errors[0]["uid"], errors[2]["uid"]

    def script(uid, attempt):
        if uid == doomed:
            return TeacherReply(text="Learning Summary: only half of it")
        if uid == down:
            return TeacherReply(text=None, ok=False, error="HTTP 500")
        return TeacherReply(text=_analysis(uid))

    teacher = ScriptedTeacher(script)
    kb = build_kb(errors, teacher, max_attempts=3)
    assert [e["source_uid"] for e in kb] == [errors[1]["uid"]] and kb.entries[0]["id"] == 0
    assert len(teacher.batches) == 3 and [len(b) for b in teacher.batches] == [3, 2, 2]
    fails = {f["source_uid"]: f for f in kb.failures}
    assert set(fails) == {doomed, down}
    assert fails[doomed]["attempts"] == 3 and "Supplementary Knowledge:" in fails[doomed]["reason"]
    assert fails[down]["reasons"] == ["teacher call failed: HTTP 500"] * 3
    assert kb.entry_for(doomed) is None
    # the first reply that did not parse is kept, to show what the tutor actually wrote
    assert fails[doomed]["reply"] == "Learning Summary: only half of it" and "reply" not in fails[down]


def test_build_kb_rejects_bad_input(records):
    with pytest.raises(DataError, match=r"error_records\[0\] lacks field\(s\) \['stu_response'\]"):
        build_kb([{"uid": "x", "record": records[0], "question": "q"}], ScriptedTeacher(None))
    e = _error(records[0])
    with pytest.raises(DataError, match="appears twice"):
        build_kb([e, e], ScriptedTeacher(None))
    with pytest.raises(ConfigError, match="max_attempts"):
        build_kb([e], ScriptedTeacher(None), max_attempts=0)


# ------------------------------------------------------------------------------ persistence
@pytest.fixture()
def kb(records):
    errors = [_error(r) for r in records]
    return build_kb(errors, ScriptedTeacher(lambda uid, n: TeacherReply(text=_analysis(uid.split("/")[1]))))


def test_round_trip_and_hand_edit(kb, records, tmp_path):
    path = kb.save(tmp_path / "kb.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(kb) == 27 and all(json.loads(x)["id"] == i for i, x in enumerate(lines))
    again = KnowledgeBase.load(path)
    assert again.entries == kb.entries and again.failures == []
    # a person edits the summary of the navigate entry in a text editor
    i = next(n for n, e in enumerate(kb) if e["task"] == "navigate")
    edited = "Learning Summary:\n1. Track position as (x, y); turning changes the facing only."
    assert "Lesson about navigate." in lines[i]
    lines[i] = lines[i].replace("Learning Summary:\\n1. Lesson about navigate.", edited.replace("\n", "\\n"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hand = KnowledgeBase.load(path)
    nav = records[[r["task"] for r in records].index("navigate")]
    hits = hand.retrieve(nav, k=3)
    assert hits[0]["docid"] == i and hits[0]["knowledge"].startswith(edited)
    assert hand.knowledge_for(nav).startswith(edited)
    assert hand.entries[i]["learning_summary"] == "1. Track position as (x, y); turning changes the facing only."


def test_the_file_has_one_place_to_edit_and_a_stale_section_field_is_named(kb, tmp_path):
    """The student sees 'summary'; its two sections are parsed from it on load, not saved, so an edit made in a
    section field alone cannot be silently ignored. A file that still holds them (an older save) is read from
    'summary', with a warning naming the line."""
    path = kb.save(tmp_path / "kb.jsonl")
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert not any(f in r for r in rows for f in ("learning_summary", "supplementary_knowledge"))
    rows[1]["supplementary_knowledge"] = "1. A fact someone typed here."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"kb\.jsonl:2: KB entry field\(s\) \['supplementary_knowledge'\] differ "
                                         r"from the sections of 'summary'.*make an edit there"):
        again = KnowledgeBase.load(path)
    assert again.entries == kb.entries  # read from 'summary', as the student sees it


def test_failures_saved_beside_the_kb(records, tmp_path):
    errors = [_error(r) for r in records[:2]]
    kb = build_kb(errors, ScriptedTeacher(lambda uid, n: TeacherReply(text="nope" if uid == errors[0]["uid"]
                                                                        else _analysis("x"))))
    path = kb.save(tmp_path / "kb.jsonl")
    assert (tmp_path / "kb.failures.jsonl").is_file()
    again = KnowledgeBase.load(path)
    assert len(again) == 1 and again.failures == kb.failures
    KnowledgeBase(again.entries).save(path)  # no failures any more: the stale list goes
    assert not (tmp_path / "kb.failures.jsonl").exists()


def test_load_errors_name_file_line_and_field(kb, tmp_path):
    path = kb.save(tmp_path / "kb.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    broken = lines[:1] + [lines[1][:-5]] + lines[2:]
    path.write_text("\n".join(broken) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: malformed JSON"):
        KnowledgeBase.load(path)
    row = json.loads(lines[2])
    del row["summary"]
    path.write_text("\n".join(lines[:2] + [json.dumps(row)]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"kb.jsonl:3: KB entry lacks required field\(s\) \['summary'\]"):
        KnowledgeBase.load(path)
    path.write_text(lines[0] + "\n[1, 2]\n", encoding="utf-8")
    with pytest.raises(DataError, match="kb.jsonl:2: expected a JSON object"):
        KnowledgeBase.load(path)
    with pytest.raises(DataError, match="not found"):
        KnowledgeBase.load(tmp_path / "missing.jsonl")


def test_hand_written_entry_gets_defaults(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text(json.dumps({"source_uid": "manual/1", "task": "navigate", "task_description": "Walk.",
                                "question": "Take 2 steps.", "summary": VALID}) + "\n\n", encoding="utf-8")
    kb = KnowledgeBase.load(path)
    e = kb.entries[0]
    assert e["id"] == 0 and e["learning_summary"].startswith("1. Read every option") and e["teacher"] == ""


# -------------------------------------------------------------------------------- retrieval
def test_retrieve_and_knowledge_for(kb, records):
    for r in records:
        if r["task"] == "dyck_languages":
            continue
        hits = kb.retrieve(r, k=3)
        assert 1 <= len(hits) <= 3 and set(hits[0]) == {"docid", "score", "knowledge"}
        assert kb.entries[hits[0]["docid"]]["source_uid"] == r["uid"], r["uid"]
        assert hits[0]["knowledge"] == kb.entries[hits[0]["docid"]]["summary"]
    r = records[10]
    hits = kb.retrieve(r, k=3)
    assert kb.knowledge_for(r) == hits[0]["knowledge"]
    assert kb.knowledge_for(r, k_retrieve=3, k_insert=2) == hits[0]["knowledge"] + "\n" + hits[1]["knowledge"]
    loo = kb.retrieve(r, k=3, exclude_self=True)
    assert r["uid"] not in [kb.entries[h["docid"]]["source_uid"] for h in loo]
    assert [h["docid"] for h in loo] == [h["docid"] for h in kb.retrieve(r, k=4)][1:]
    with pytest.raises(ConfigError, match="k_insert"):
        kb.knowledge_for(r, k_retrieve=1, k_insert=2)


def test_empty_kb_and_unmatched_query_give_no_summary(kb):
    rec = {"uid": "x/y/0", "task_description": "", "question": "the and of"}
    assert KnowledgeBase().knowledge_for(rec) == prompts.NO_SUMMARY
    assert kb.knowledge_for(rec) == prompts.NO_SUMMARY  # no shared term: no BM25 hit
    assert prompts.kb(rec | {"task": "t"}, prompts.NO_SUMMARY) == prompts.std(rec | {"task": "t"})


def test_dense_index(kb, records):
    try:
        kb.index("dense")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"MiniLM unavailable: {e}")
    r = next(x for x in records if x["task"] == "date_understanding")
    assert kb.entries[kb.retrieve(r, k=1)[0]["docid"]]["source_uid"] == r["uid"]
    with pytest.raises(ConfigError, match="retriever kind"):
        kb.index("sparse")


# ---------------------------------------------------------------------------- confidence gate
def test_confidence_gate_on_a_real_model(tiny_model_dir, records):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompt = prompts.std(records[0])
    margin = confidence_margin(model, tok, prompt, n_tokens=6)
    # the same quantity by a hand-written greedy loop
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    want = []
    with torch.no_grad():
        for _ in range(6):
            p = torch.softmax(model(ids).logits[0, -1], -1)
            top = p.topk(2).values
            want.append(float(top[0] - top[1]) * 100)
            nxt = int(p.argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if nxt == tok.eos_token_id:
                break
    assert 0 <= margin <= 100
    assert margin == pytest.approx(sum(want) / len(want), abs=1e-3)
    assert confidence_gate(model, tok, prompt, n_tokens=6, threshold=margin - 1e-3) is True
    assert confidence_gate(model, tok, prompt, n_tokens=6, threshold=margin + 1e-3) is False
