"""An offline stand-in tutor and knowledge writer built from the recorded, gold-checked rationales.

NesyCD's tutor (error analysis) and SKIntern's knowledge writer are LLM calls in the papers. With
no network and no capable local model, the cpu preset uses this teacher instead. For a *train*
record it writes the two-section format the methods expect, and it never states the gold answer
(``mentions_answer`` is the single test for that, applied per sentence and again per line at the
end), so a student trained on the text cannot learn to copy a label from it:

* ``error_analysis`` (NesyCD tutor): written from the student's wrong output
  (``request.extra["student_output"]``). ``Learning Summary:`` says what went wrong (no closing
  answer sentence, repeated text, the wrong option or value it chose, steps that a correct solution
  does not support) and one lesson for the task; ``Supplementary Knowledge:`` holds reasoning steps
  of the record's accepted rationale with every sentence that mentions the answer removed (and the
  conclusion dropped), then how the answer must be written.
* ``knowledge`` (SKIntern writer): ``Learning Summary:`` the same filtered rationale steps;
  ``Supplementary Knowledge:`` what the task asks and how the answer must be written.

It is a deviation from both papers (the text is item-specific, not a tutor's generalisation)
and is reported as such; an API teacher replaces it with one parameter. It refuses any record
that is not from the train split or has no rationale, so test answers cannot leak into a KB.
"""
from __future__ import annotations

import re

from nesylib.evaluation.extract import extract_answer, has_answer, is_answer_only, is_math_task
from nesylib.knowledge.text import render
from nesylib.methods.prompts import ANSWER_MARKER, split_rationale
from nesylib.teacher.base import TeacherReply, TeacherRequest

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])|\n+")
_STEP_NUMBER = re.compile(r"^\(\d+\)\s*")
_OPTION = re.compile(r"^\(([A-Za-z]|\d{1,2})\)\s*(.*)$", re.S)
_NUMERIC = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
# A number as a whole token: not glued to letters, digits or a decimal point on either side.
_NUMBER_TOKEN = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\w|\.\d)|(?<![\w.])\.\d+(?!\w)")
_REPEAT = re.compile(r"((?:\S+\s+){1,4}?)\1{5,}|(\S)\2{11,}")  # a 1-4 word span 6+ times, or a long char run
_LIST_NUMBER = re.compile(r"^[ \t]*\d+\.[ \t]+", re.M)  # "1. " numbering of a list line, not content
_WORD = re.compile(r"[a-z]+|\d+")
_STOP = frozenset("a an the is are was were be been of to in on at by for and or so as it its this that then "
                  "we i you he she they there if since from with which what who not".split())
MAX_STEPS = 8
MAX_QUOTE_WORDS = 20


class DerivedKnowledgeTeacher:
    """Answers ``error_analysis`` and ``knowledge`` requests from ``record["rationale"]``."""

    name = "derived-from-rationales"
    paid = False

    def __init__(self, rationales: dict[str, str]):
        self.rationales = rationales  # uid -> accepted teacher rationale (train items only)

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        return [self._one(r) for r in requests]

    def _one(self, req: TeacherRequest) -> TeacherReply:
        rec = req.record or {}
        if req.kind not in ("error_analysis", "knowledge"):
            return TeacherReply(None, ok=False, error=f"{self.name} answers error_analysis/knowledge, not {req.kind!r}")
        if rec.get("split") != "train":
            return TeacherReply(None, ok=False, error=f"{rec.get('uid')}: refused, not a train record")
        rationale = self.rationales.get(rec.get("uid"))
        if not rationale or ANSWER_MARKER not in rationale:
            return TeacherReply(None, ok=False, error=f"{rec.get('uid')}: no accepted rationale to derive from")
        if req.kind == "knowledge":
            return TeacherReply(knowledge_text(rec, rationale))
        return TeacherReply(error_analysis_text(rec, rationale, str(req.extra.get("student_output") or "")))


def _phrase(text: str) -> re.Pattern | None:
    words = text.split()
    if not words:
        return None
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.I)


def _has_number(text: str, number: str) -> bool:
    value = abs(float(number.replace(",", "")))
    return any(abs(float(t.replace(",", ""))) == value for t in _NUMBER_TOKEN.findall(text))


def _option_text(record: dict, label: str) -> str:
    """The text of option ``label`` ("B"): from record["options"], else from a "(B) ..." question line."""
    for line in record.get("options") or []:
        m = _OPTION.match(str(line).strip())
        if m and m.group(1).upper() == label.upper():
            return m.group(2).strip()
    m = re.search(rf"^\s*\({re.escape(label)}\)[ \t]*(.+)$", record.get("question") or "", re.M | re.I)
    return m.group(1).strip() if m else ""


def _mentions_text(text: str, answer: str) -> bool:
    answer = answer.strip().rstrip(".").strip()
    if not answer:
        return False
    if _NUMERIC.fullmatch(answer):
        return _has_number(_LIST_NUMBER.sub("", text), answer)
    pattern = _phrase(answer)
    return bool(pattern and pattern.search(text))


def mentions_answer(text: str, record: dict) -> bool:
    """True when ``text`` contains the gold answer of ``record`` in any of its written forms.

    * option gold "(B)": the label "(B)" (any case, spaces inside the brackets allowed) or the option's
      text, looked up in record["options"] or in the question's "(B) ..." line;
    * numeric gold: the number as a whole token, commas ignored ("24" is not found in "124" or "24.5");
      the "1. " numbers that start list lines are not read as content;
    * any other gold (Yes/No, True/False, valid/invalid, free text): the text as whole words,
      case-insensitive ("No" is not found in "Not").
    """
    gold = str(record.get("answer") or "").strip()
    if not text or not gold:
        return False
    m = _OPTION.match(gold)
    if m:
        label, rest = m.group(1), m.group(2).strip() or _option_text(record, m.group(1))
        if re.search(rf"\(\s*{re.escape(label)}\s*\)", text, re.I):
            return True
        return _mentions_text(text, rest)
    return _mentions_text(text, gold)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) > 2]


def background_steps(record: dict, rationale: str, limit: int = MAX_STEPS) -> list[str]:
    """Steps of the accepted rationale without its conclusion and without any sentence naming the answer.

    A step is one line of the rationale (its "(n)" number removed); inside a line, only the
    sentences that mention the answer are dropped, and, for an option gold whose text has 2+ content
    words, the sentences that use all of them in another order ("the second from the left is the blue
    jay"). The last sentence before the answer marker is the conclusion and is always dropped: it
    restates the answer, often in words ``mentions_answer`` cannot see.
    """
    head, _ = split_rationale(rationale)
    m = _OPTION.match(str(record.get("answer") or "").strip())
    gold_words = set(_content(m.group(2).strip() or _option_text(record, m.group(1)))) if m else set()
    paraphrase = (lambda s: set(_content(s)) >= gold_words) if len(gold_words) >= 2 else (lambda s: False)
    lines = [sents for sents in map(_sentences, head.splitlines()) if sents]
    if lines:
        lines[-1] = lines[-1][:-1]
    steps = []
    for line in lines:
        kept = " ".join(s for s in line if not (mentions_answer(s, record) or paraphrase(s)))
        kept = _STEP_NUMBER.sub("", kept).strip()
        if len(kept) > 2 and kept not in steps:
            steps.append(kept)
    return steps[:limit]


def answer_format(record: dict) -> str:
    if record.get("options"):
        form = "one of the listed options"
    elif is_math_task(record.get("task", "")):
        form = "a single number"
    else:
        form = "the answer in the form the question asks for"
    return f'Close with "{ANSWER_MARKER}" followed by {form}.'


def _compose(record: dict, summary: list[str], knowledge: list[str]) -> str:
    """The two sections; the final guard drops every line that still mentions the answer."""
    def guard(lines: list[str], fallback: str) -> list[str]:
        kept = [l for l in lines if l and not mentions_answer(l, record)]
        return kept or ([fallback] if not mentions_answer(fallback, record) else ["Reason step by step."])

    summary = guard(summary, "Work through the question one step at a time and check every step.")
    knowledge = guard(knowledge, answer_format(record))
    return render(summary, knowledge)


def knowledge_text(record: dict, rationale: str) -> str:
    """SKIntern knowledge: the filtered rationale steps, then the task and the answer format."""
    facts = [f"The task: {record['task_description']}", answer_format(record)]
    return _compose(record, background_steps(record, rationale), facts)


# ---------------------------------------------------------------------------- error analysis
def _quote(sentence: str, words: int = MAX_QUOTE_WORDS) -> str:
    w = sentence.split()
    return '"' + " ".join(w[:words]) + (' ..."' if len(w) > words else '"')


def _content(sentence: str) -> list[str]:
    return [w for w in _WORD.findall(sentence.lower()) if w not in _STOP and (len(w) > 1 or w.isdigit())]


def _chosen(record: dict, output: str) -> str | None:
    """How the student's answer reads in the summary ("option (C) 01/08/2018", "172", '"Yes"'), or None."""
    task = record.get("task", "")
    if not has_answer(output, task):
        return None
    answer = (extract_answer(output, task) or "").strip().rstrip(".")
    if not answer:
        return None
    if is_math_task(task):  # the last number counts only when the student committed to it
        return answer if ANSWER_MARKER in output or is_answer_only(output) else None
    m = re.match(r"\(?([A-Za-z])\)(?:\s|$)", answer) or re.fullmatch(r"([A-Za-z])", answer)
    if m and (record.get("options") and _option_text(record, m.group(1))):
        label = m.group(1).upper()
        return f"option ({label}) {_option_text(record, label)}".strip()
    return _quote(answer, 8)


def unsupported_steps(record: dict, rationale: str, output: str) -> tuple[list[str], int]:
    """(the student's steps a correct solution does not support, number of substantive steps).

    A step (a sentence before the answer marker with 4+ content words) is unsupported when it
    uses a number that neither the accepted rationale nor the question's stem contains, or when most
    of its content words (5+ of them) appear in neither.
    """
    stem = (record.get("question") or "").split("\nOptions:", 1)[0]
    vocab = set(_content(rationale)) | set(_content(stem))
    flagged, substantive = [], 0
    for s in _sentences(output.split(ANSWER_MARKER, 1)[0]):
        words = _content(s)
        if len(words) < 4 or _REPEAT.search(s + " "):
            continue
        substantive += 1
        new = [w for w in words if w not in vocab]
        if any(w.isdigit() for w in new) or (len(words) >= 5 and len(new) * 2 > len(words)):
            flagged.append(s)
    return flagged, substantive


def _repetition(output: str, question: str) -> re.Match | None:
    """The first run of repeated words in ``output`` that the question itself does not contain."""
    question = " ".join(question.split())
    for m in _REPEAT.finditer(output + " "):
        if " ".join(m.group(0).split()) not in question:
            return m
    return None


def error_analysis_text(record: dict, rationale: str, output: str) -> str:
    """NesyCD tutor reply for one wrong student output, written from that output."""
    from nesylib.knowledge.kb import DEGENERATE_MARKERS, response_slot  # late: kb pulls in retrieval

    raw = output.strip()
    shown = response_slot(raw)
    summary = []
    repeat = _repetition(raw, record.get("question") or "")
    degenerate = any(m in raw for m in DEGENERATE_MARKERS) or repeat is not None
    if not raw:
        summary.append("The response was empty, so the question went unanswered.")
    elif degenerate:
        span = " ".join((repeat.group(0) if repeat else "").split()[:6])
        summary.append("The response fell into repeated text" + (f' ("{span} ...")' if span else "")
                       + " instead of reasoning towards a final answer.")
    chosen = _chosen(record, raw) if raw else None
    if raw and not degenerate and ANSWER_MARKER not in raw:
        summary.append("The response has no closing answer sentence" + (
            "." if chosen else ", so it never committed to an answer."))
    if chosen:
        summary.append(f"It chose {chosen}, which is wrong." if chosen.startswith("option")
                       else f"It gave {chosen} as its answer, which is wrong.")
    flagged, substantive = unsupported_steps(record, rationale, shown)
    summary += [f"A correct solution does not support this step: {_quote(s)}" for s in flagged[:2]]
    if raw and not degenerate:
        if substantive < 2:
            summary.append("It gave hardly any reasoning before answering.")
        elif not flagged and chosen:
            summary.append("Its steps look sound, but the final answer does not follow from them.")
    tip = ("work in short steps from the facts in the question and always finish with one final answer."
           if degenerate or not raw or ANSWER_MARKER not in raw else
           "check every step against the facts in the question, then confirm that the answer follows from "
           "the last step before writing it.")
    summary.append(f'Lesson for this task ("{record["task_description"].strip().rstrip(".")}"): {tip}')
    knowledge = background_steps(record, rationale, limit=6) + [answer_format(record)]
    return _compose(record, summary, knowledge)
