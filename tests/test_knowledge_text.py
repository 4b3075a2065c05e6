"""The two-section knowledge text (nesylib.knowledge.text): render, parse, the usability rule, canonical
form; and that the KB, the knowledge writer and both programmatic teachers all go through it."""
import pytest

from nesylib.data import benchmarks
from nesylib.methods import prompts
from nesylib.errors import DataError
from nesylib.pipeline.experiment import passage_text
from nesylib.knowledge.kb import build_kb
from nesylib.knowledge.writer import generate_knowledge
from nesylib.knowledge.text import LS_HEADER, SK_HEADER, canonical, is_usable, numbered, parse, problem, render
from nesylib.teacher.base import TeacherReply, TeacherRequest

GOOD = ("Learning Summary:\n1. Follow each step.\n2. Check the result.\n\n"
        "Supplementary Knowledge:\n1. A fact.\n2. Another fact.")
SUMMARY, KNOWLEDGE = "1. Follow each step.\n2. Check the result.", "1. A fact.\n2. Another fact."


# ------------------------------------------------------------------------------------ render
def test_render_numbers_items_and_keeps_written_bodies():
    assert LS_HEADER == "Learning Summary:" and SK_HEADER == "Supplementary Knowledge:"
    assert numbered(["a", "b"]) == "1. a\n2. b" and numbered([]) == ""
    assert render(["Follow each step.", "Check the result."], ["A fact.", "Another fact."]) == GOOD
    assert render(SUMMARY, KNOWLEDGE) == GOOD  # a string is an already written body, used as it is
    assert render(("x",), "y") == "Learning Summary:\n1. x\n\nSupplementary Knowledge:\ny"


@pytest.mark.parametrize("summary,knowledge,empty", [
    ([], ["a fact"], LS_HEADER), (["a step"], [], SK_HEADER), ("  \n", "a fact", LS_HEADER), ("a step", "", SK_HEADER)])
def test_render_refuses_an_empty_section(summary, knowledge, empty):
    with pytest.raises(ValueError, match=f"'{empty}' section is empty"):
        render(summary, knowledge)


@pytest.mark.parametrize("summary,knowledge", [
    (["Read the question twice."], ["Months have 28 to 31 days."]),
    (["One.", "Two: with a colon.", "Three (with brackets)."], ["Fact 1.", "Fact 2.", "Fact 3.", "Fact 4."]),
    ("Free text advice,\nover two lines.", "- a bulleted fact\n- another"),
])
def test_render_parse_round_trip(summary, knowledge):
    text = render(summary, knowledge)
    want = tuple(s if isinstance(s, str) else numbered(s) for s in (summary, knowledge))
    assert parse(text) == want
    assert problem(text) is None and is_usable(text)
    assert canonical(text) == text  # a rendered text is already canonical


# ------------------------------------------------------------------------------------- parse
@pytest.mark.parametrize("reply", [
    GOOD,
    "Sure! Here is what I wrote.\n\n" + GOOD,  # a chatty preamble is dropped
    GOOD.replace(LS_HEADER, "Summary of Learning:"),
    GOOD.replace(LS_HEADER, "**Learning Summary:**").replace(SK_HEADER, "**Supplementary Knowledge:**"),
    GOOD.replace(LS_HEADER, "## Learning Summary").replace(SK_HEADER, "### Supplementary Knowledge"),  # no colon
    GOOD.replace(LS_HEADER, "- **Learning Summary**:").replace(SK_HEADER, "> _Supplementary Knowledge_:"),
    GOOD.replace(LS_HEADER, "learning summary:").replace(SK_HEADER, "SUPPLEMENTARY KNOWLEDGE:"),
    GOOD.replace(LS_HEADER, "Learning  Summary:").replace(SK_HEADER, "Supplementary\tKnowledge :"),
    GOOD.replace("\n\n", "\n"),  # no blank line between the sections
])
def test_header_variants_parse_to_the_same_sections(reply):
    assert parse(reply) == (SUMMARY, KNOWLEDGE)
    assert canonical(reply) == GOOD


def test_a_header_on_the_same_line_as_its_first_item():
    text = "Here is my analysis.\nlearning summary: 1. a\nSUPPLEMENTARY KNOWLEDGE: 1. b"
    assert parse(text) == ("1. a", "1. b") and canonical(text) == f"{LS_HEADER}\n1. a\n\n{SK_HEADER}\n1. b"


def test_parse_gives_empty_strings_where_a_section_is_missing():
    assert parse(None) == ("", "") and parse("") == ("", "") and parse("no headers at all") == ("", "")
    assert parse("Learning Summary:\n1. a") == ("1. a", "")
    # without a summary the knowledge is still found: KARD's passages read only that section
    assert parse("Supplementary Knowledge:\n1. Salt is heavy.\n2. Iron rusts.") == ("", "1. Salt is heavy.\n2. Iron rusts.")
    assert passage_text("Supplementary Knowledge:\n1. Salt is heavy.\n2. Iron rusts.") == "Salt is heavy. Iron rusts."
    assert passage_text(GOOD) == "A fact. Another fact."


def test_repeated_headers_belong_to_the_sections_they_fall_in():
    text = "Learning Summary:\n1. a\nLearning Summary:\n2. b\nSupplementary Knowledge:\n1. c\nSupplementary Knowledge:\n2. d"
    assert parse(text) == ("1. a\nLearning Summary:\n2. b", "1. c\nSupplementary Knowledge:\n2. d")


# ------------------------------------------------------------------------- the usability rule
@pytest.mark.parametrize("reply,why", [
    (None, "empty reply"), ("", "empty reply"), ("  \n ", "empty reply"),
    ("1. Follow each step.\n\nSupplementary Knowledge:\n1. A fact.", f"no '{LS_HEADER}' header"),
    ("Learning Summary:\n1. Follow each step.", f"no '{SK_HEADER}' header after '{LS_HEADER}'"),
    # the summary comes first (kb.py used to accept either order, the knowledge writer did not)
    ("Supplementary Knowledge:\n1. A fact.\nLearning Summary:\n1. Step.", f"no '{SK_HEADER}' header after"),
    ("Learning Summary:\n\nSupplementary Knowledge:\n1. A fact.", f"empty '{LS_HEADER}' section"),
    ("Learning Summary:\n1. Step.\nSupplementary Knowledge:\n  ", f"empty '{SK_HEADER}' section"),
    ("**Learning Summary:**\n1. Step.\n**Supplementary Knowledge:**", f"empty '{SK_HEADER}' section"),
    # a sentence that merely starts with the words is not a header
    ("Learning Summary:\n1. Step.\nSupplementary knowledge of dates helps.", f"no '{SK_HEADER}'"),
    ("The learning summary is that you should read. Supplementary knowledge helps too.", f"no '{LS_HEADER}'"),
    ("Learning\nSummary:\n1. Step.\nSupplementary Knowledge:\n1. A fact.", f"no '{LS_HEADER}'"),  # one line only
    ("1. Learning Summary: step\n2. Supplementary Knowledge: fact", f"no '{LS_HEADER}'"),  # list items, not headers
])
def test_unusable_texts_are_rejected_with_a_clear_reason(reply, why):
    reason = problem(reply)
    assert reason is not None and why in reason
    assert not is_usable(reply)
    with pytest.raises(DataError, match="not a usable knowledge text: " + why.split("'")[0]):
        canonical(reply)


# --------------------------------------------------------- the programmatic teachers render through it
class _Spy:
    """Wraps ``render`` where a teacher module looks it up; remembers what each text was rendered from."""

    def __init__(self, monkeypatch, module):
        self.calls = {}
        monkeypatch.setattr(module, "render", self)

    def __call__(self, summary, knowledge):
        text = render(summary, knowledge)
        self.calls[text] = (list(summary), list(knowledge))
        return text


def _check_sections(texts, spy):
    assert texts and set(texts) <= set(spy.calls)  # every text came through the owner's render
    for text in texts:
        summary, knowledge = spy.calls[text]
        assert parse(text) == (numbered(summary), numbered(knowledge))
        assert is_usable(text) and canonical(text) == text


def test_derived_teacher_texts_parse_into_the_sections_they_rendered(data_dir, monkeypatch):
    from nesylib.teacher import derived
    from nesylib.teacher.cot import replay_rationales

    spy = _Spy(monkeypatch, derived)
    train = benchmarks.subsample(benchmarks.load_bbh("train", ["date_understanding", "navigate", "word_sorting"]), 4, 0)
    rs = replay_rationales(train + benchmarks.load_gsm8k("train")[:3])
    t = derived.DerivedKnowledgeTeacher({r["uid"]: r["rationale"] for r in rs.records})
    reqs = [TeacherRequest("", kind="knowledge", record=r) for r in rs.records] + [
        TeacherRequest("", kind="error_analysis", record=r, extra={"student_output": out})
        for r in rs.records for out in ("", "I think (A). Therefore, the answer is (A).", "the the " * 30)]
    replies = t.complete(reqs)
    assert all(rep.ok for rep in replies)
    _check_sections([rep.text for rep in replies], spy)


def test_synthetic_teacher_texts_parse_into_the_sections_they_rendered(monkeypatch):
    from nesylib.synth import SynthConfig, generate_benchmark, generate_world
    from nesylib.synth import teacher as synth_teacher

    spy = _Spy(monkeypatch, synth_teacher)
    cfg = SynthConfig.smoke()
    world = generate_world(cfg)
    train = generate_benchmark(cfg, world)["train"][:40]
    t = synth_teacher.SynthTeacher(world)
    reqs = [TeacherRequest("", kind="knowledge", uid=r["uid"], record=r) for r in train] + [
        TeacherRequest("", kind="error_analysis", uid=r["uid"], record=r, extra={"student_output": out})
        for r in train for out in ("no idea", "Therefore, the answer is (A).")]
    replies = t.complete(reqs)
    assert all(rep.ok for rep in replies)
    _check_sections([rep.text for rep in replies], spy)


# ------------------------------------------------------------ the KB and the knowledge writer agree
REPLIES = [
    GOOD, "Okay.\n**Summary of Learning:**\n1. a\n\n## supplementary knowledge\n1. b",
    "- Learning Summary:\n1. a\n- Supplementary Knowledge:\n1. b",  # the knowledge writer used to refuse the bullets
    "Supplementary Knowledge:\n1. b\nLearning Summary:\n1. a",  # kb.py used to accept this order
    "Learning Summary:\n1. a", "Learning Summary:\n\nSupplementary Knowledge:\n1. b", "no sections here", "",
]


class _OneReply:
    """A teacher that answers every request for record i with REPLIES[i], on every attempt."""
    name = "one-reply"

    def __init__(self, uids):
        self.reply = dict(zip(uids, REPLIES))

    def complete(self, requests):
        return [TeacherReply(text=self.reply[r.uid]) for r in requests]


def test_kb_and_knowledge_writer_accept_the_same_texts_and_read_them_alike(data_dir):
    recs = benchmarks.subsample(benchmarks.load_bbh("train"), 1, 5)[:len(REPLIES)]
    uids = [r["uid"] for r in recs]
    errors = [{"uid": r["uid"], "record": r, "question": prompts.std(r), "stu_response": "Therefore, the answer is (A)."}
              for r in recs]
    kb = build_kb(errors, _OneReply(uids), max_attempts=2)
    knowledge, failures = generate_knowledge(recs, _OneReply(uids), max_attempts=2)

    usable = {u for u, text in zip(uids, REPLIES) if is_usable(text)}
    assert len(usable) == 3  # the first three replies
    assert {e["source_uid"] for e in kb} == set(knowledge) == usable
    for uid, text in zip(uids, REPLIES):
        if uid in usable:
            entry = kb.entry_for(uid)
            assert entry["summary"] == text  # the KB keeps the tutor's words; the writer keeps the canonical form
            assert (entry["learning_summary"], entry["supplementary_knowledge"]) == parse(text)
            assert knowledge[uid] == canonical(text) == render(*parse(text))
    kb_reason = {f["source_uid"]: f["reason"] for f in kb.failures}
    writer_reason = {f["uid"]: f["reasons"][-1] for f in failures}
    assert set(kb_reason) == set(writer_reason) == set(uids) - usable
    for uid, text in zip(uids, REPLIES):
        if uid not in usable:
            assert kb_reason[uid] == f"invalid analysis: {problem(text)}" and writer_reason[uid] == problem(text)
