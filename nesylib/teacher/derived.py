"""An offline stand-in tutor that writes knowledge from the recorded, gold-checked rationales.

NesyCD's tutor (error analysis) and SKIntern's knowledge writer are LLM calls in the papers. With
no network and no capable local model, the cpu preset uses this teacher instead: for a *train*
record it turns the record's own accepted teacher rationale (the replayed Codex CoT, D2) into the
two-section format the methods expect:

* ``Learning Summary:`` the worked reasoning steps, one per numbered line, without the final
  answer sentence (so knowledge never states a label outright);
* ``Supplementary Knowledge:`` what the task asks and how the answer must be written.

It is a deviation from both papers (the text is item-specific, not a tutor's generalisation)
and is reported as such; an API teacher replaces it with one parameter. It refuses any record
that is not from the train split or has no rationale, so test answers cannot leak into a KB.
"""
from __future__ import annotations

import re

from nesylib.prompts import ANSWER_MARKER, split_rationale
from nesylib.teacher.base import TeacherReply, TeacherRequest

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])|\n+")


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
        return TeacherReply(knowledge_text(rec, rationale))


def knowledge_text(record: dict, rationale: str) -> str:
    head, _ = split_rationale(rationale)
    steps = [s.strip() for s in _SENTENCE.split(head) if len(s.strip()) > 2]
    summary = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) or "1. Reason step by step."
    facts = [f"The task: {record['task_description']}",
             f'State the final answer after "{ANSWER_MARKER}", in the form the question asks for.']
    if record.get("options"):
        facts.append("The answer must be one of the listed options.")
    knowledge = "\n".join(f"{i}. {f}" for i, f in enumerate(facts, 1))
    return f"Learning Summary:\n{summary}\n\nSupplementary Knowledge:\n{knowledge}"
