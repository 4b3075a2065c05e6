"""A programmatic teacher for the synthetic world, behind the ``Teacher`` interface.

It answers three request kinds from the world's facts, never from a model:

    cot             a short correct rationale ending "Therefore, the answer is X."
    error_analysis  NesyCD's T_T output (method.md §3 step 3) for a wrong student output:
                    "Learning Summary:" (what went wrong in that output) and
                    "Supplementary Knowledge:" (the facts the question needs)
    knowledge       SKIntern's per-question knowledge (§4.2) in the same two sections: how many
                    links to follow, then the facts and one related fact that names no
                    distractor option

Both are short on purpose: no method text repeated across items, so a retrieved passage or KB
entry is mostly the knowledge itself.

It refuses (ok=False) every record whose split is not "train": it can see gold answers, so it
must never be asked about evaluation questions. Output depends only on the record (and the
student output), never on sampling parameters, so replies are deterministic.
"""
from __future__ import annotations

import random
import re

from nesylib.knowledge.text import render
from nesylib.methods.prompts import ANSWER_MARKER, STEP_CUE, split_rationale
from nesylib.synth.world import SynthConfig, World, generate_world, solve
from nesylib.teacher.base import TeacherReply, TeacherRequest

_WORD = re.compile(r"[A-Za-z]+")


def cot_prompt(record: dict) -> str:
    """The CoT request text (for logs and LLM teachers; the programmatic teacher reads the record)."""
    return (f"Answer the question below. Reason step by step first, then end with \"{ANSWER_MARKER}\" "
            f"followed by the answer.\n\nQuestion: {record['question']}\n{STEP_CUE}")


class SynthTeacher:
    """Programmatic teacher over one ``World`` (implements nesylib.teacher.base.Teacher)."""
    name = "synth-programmatic-v1"

    def __init__(self, world: World):
        self.world = world
        units = {u for chain in world.unit_chains for u in chain}
        self._entities = set(world.persons) | set(world.towns) | set(world.provinces) | units
        self._mentions: dict[str, set[str]] = {}  # entity -> ids of the facts that name it
        for fid, text in world.facts.items():
            for e in self._names_in(text):
                self._mentions.setdefault(e, set()).add(fid)

    def _names_in(self, text: str) -> set[str]:
        """Entity names in a text; a plural unit ("kabins") counts as its unit ("kabin")."""
        words = set(_WORD.findall(text))
        return {w for w in words if w in self._entities} | {w[:-1] for w in words if w[:-1] in self._entities}

    @classmethod
    def from_config(cls, config: SynthConfig) -> "SynthTeacher":
        return cls(generate_world(config))

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        return [self._one(r) for r in requests]

    # ------------------------------------------------------------------------------ internals
    def _one(self, req: TeacherRequest) -> TeacherReply:
        rec = req.record
        if req.kind not in ("cot", "error_analysis", "knowledge"):
            return _fail(f"kind {req.kind!r} is not supported (cot, error_analysis, knowledge)")
        if not isinstance(rec, dict):
            return _fail(f"request {req.uid!r}: SynthTeacher needs request.record")
        if rec.get("split") != "train":
            return _fail(f"refused {rec.get('uid')!r}: split {rec.get('split')!r}; this teacher sees gold "
                         f"answers, so it only answers about training records")
        if rec.get("dataset") != "synth":
            return _fail(f"refused {rec.get('uid')!r}: dataset {rec.get('dataset')!r} is not 'synth'")
        meta = rec.get("meta") or {}
        try:
            sol = solve(self.world, meta["variant"], meta["params"])
        except (KeyError, TypeError) as e:
            return _fail(f"{rec.get('uid')!r}: record does not match this world ({e!r})")
        letter = _letter(rec, sol.answer)
        if (letter or sol.answer) != rec.get("answer"):
            return _fail(f"{rec.get('uid')!r}: the world's answer {sol.answer!r} differs from gold "
                         f"{rec.get('answer')!r} (a different SynthConfig?)")
        if req.kind == "cot":
            text = self._cot(sol, letter)
        elif req.kind == "knowledge":
            text = self._knowledge(rec, sol)
        else:
            out = req.extra.get("student_output")
            if not isinstance(out, str):
                return _fail(f"{rec.get('uid')!r}: error_analysis needs extra['student_output'] (a string)")
            text = self._error_analysis(rec, sol, out)
        return TeacherReply(text=text, ok=True, completion_tokens=len(text.split()), finish_reason="stop")

    def _cot(self, sol, letter: str | None) -> str:
        tail = f" {sol.answer[0].upper() + sol.answer[1:]} is option {letter}." if letter else ""
        return " ".join(sol.steps) + tail + f" {ANSWER_MARKER} {letter or sol.answer}."

    def _knowledge(self, rec: dict, sol) -> str:
        """The facts the question needs plus one related fact, and one line on how many links to
        follow: no method text repeated across items (a KARD passage or a KB entry is this text)."""
        related = self._related(rec, sol)
        facts = [self.world.facts[f] for f in sol.facts] + ([self.world.facts[related]] if related else [])
        return render([_chain_lesson(len(sol.facts))], facts)

    def _error_analysis(self, rec: dict, sol, output: str) -> str:
        """What went wrong in *this* output (no marker, facts not stated, a lure or unsupported
        answer), then the facts the question needs. It never states the gold answer outright; the
        facts, chained, give it (that is the knowledge the student lacked)."""
        mc = bool(rec["options"])
        _, said = split_rationale(output)
        lessons = []
        if ANSWER_MARKER not in output:
            lessons.append(f"The response never reached \"{ANSWER_MARKER}\"; state the facts and conclude.")
        low = output.lower()
        missed = [f for f in sol.facts if self.world.facts[f][:-1].lower() not in low]
        if missed:
            lessons.append(f"It did not state {len(missed)} of the {len(sol.facts)} facts needed; recall them "
                           f"exactly instead of guessing.")
        given = _chosen(rec, said) if said else None
        if given == sol.answer:
            lessons.append("Its choice follows from the facts but was not written in the expected form.")
        elif given is not None and given in sol.lures:
            lessons.append(f"Its answer comes from a shorter or misdirected chain; {_chain_lesson(len(sol.facts))}")
        elif given is not None:
            lessons.append("Its answer does not follow from the facts" + ("; recompute each product." if not mc
                                                                             else "."))
        if not lessons:
            lessons.append("The final answer did not follow from the stated facts.")
        return render(lessons, [self.world.facts[f] for f in sol.facts])

    def _related(self, rec: dict, sol) -> str | None:
        """One unused fact about an entity of the solution that names no distractor option."""
        entities = set().union(*(self._names_in(self.world.facts[f]) for f in sol.facts))
        avoid = {o.split(") ", 1)[-1] for o in rec["options"]} - {sol.answer}
        cands = sorted(set().union(*(self._mentions.get(e, set()) for e in entities)) - set(sol.facts))
        cands = [c for c in cands if not avoid & set(_WORD.findall(self.world.facts[c]))]
        return random.Random(rec["uid"]).choice(cands) if cands else None


def _chain_lesson(hops: int) -> str:
    return f"Follow {hops} fact{'s' if hops > 1 else ''}, one link at a time." if hops > 1 else \
        "One fact answers it; find the fact that names the asked thing."


def _fail(msg: str) -> TeacherReply:
    return TeacherReply(text=None, ok=False, error=msg)


def _letter(rec: dict, answer: str) -> str | None:
    for o in rec.get("options") or []:
        head, _, text = o.partition(" ")
        if text == answer:
            return head
    return None


def _chosen(rec: dict, said: str) -> str | None:
    """What the student answered: an option's text (by its letter) or a number; None if unreadable."""
    if rec["options"]:
        m = re.search(r"\(([A-Za-z])\)", said)
        if m:
            for o in rec["options"]:
                if o.upper().startswith(f"({m.group(1).upper()})"):
                    return o.split(") ", 1)[1]
        return None
    m = re.search(r"-?\d+", said.replace(",", ""))
    return m.group(0) if m else None


def rationale_records(train_records: list[dict], teacher) -> list[dict]:
    """Copies of ``train_records`` with ``rationale`` = the teacher's CoT; failed replies are dropped."""
    reqs = [TeacherRequest(prompt=cot_prompt(r), kind="cot", uid=r["uid"], record=r) for r in train_records]
    out = []
    for r, reply in zip(train_records, teacher.complete(reqs)):
        if reply.ok and reply.text and ANSWER_MARKER in reply.text:
            out.append({**r, "rationale": reply.text})
    return out
