"""Teacher CoT generation (T_G, method.md §2.6) and the rationale dataset it produces.

Prompts: BBH uses CasCoD's edited 3-shot files (``cascod-prompts/cot-prompts/<task>.txt``), whose
last lines are the slot ``Q: {QUESTION}\\nA: Let's think step by step.``; GSM8K and any other
set get a zero-shot prompt with a project-written instruction that asks for the marker (a configured
dataset's adds how its answer is written and its own few-shot demonstrations). As in
CasCoD, no system message is sent by default.

Sampling follows CasCoD's schedule: round 1 draws n=2 samples at T=0.2; each further round adds
one sample (at most 10) and 0.1 to T (at most 1.5). Every sample has its own ``sample_index``,
so the call store keys them apart and a re-run draws exactly the same calls. ``until="correct"``
(default) accepts the first sample that has the marker *and* a right answer, otherwise the item
goes to the next round; ``until="marker"`` is CasCoD's literal loop (stop at the first sample
with the marker, then keep it only if right). The answer judge is ``nesylib.evaluation.extract.is_correct``.

A rationale is the teacher text cut after its first ``Therefore, the answer is X.`` sentence
(a few-shot teacher often goes on with a next ``Q:``). The dataset = the input records plus
``rationale`` and ``provenance`` (teacher, prompt version, sample index, temperature, round).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import ANSWER_MARKER, cut_after_answer  # noqa: F401 (part of this module's API)
from nesylib.teacher.base import TeacherRequest

COT_PROMPT_VERSION = "cot-v1"  # bump when a prompt string below changes (stored calls key on prompts)
STEP_CUE = "A: Let's think step by step."
QUESTION_SLOT = "{QUESTION}"
ZERO_SHOT_INSTRUCTION = (
    "Work through the question below one step at a time, showing your reasoning. Finish with a "
    f'single closing sentence of the form "{ANSWER_MARKER} X." where X is your final answer.')
GSM8K_INSTRUCTION = (
    "Solve the grade-school math word problem below. Reason through it step by step and show the "
    f'arithmetic. Finish with a single closing sentence of the form "{ANSWER_MARKER} N." where N is the '
    "final number alone, without units.")


def custom_cot_prompt(record: dict, entry: dict) -> str:
    """The teacher prompt for a record of a configured dataset (nesylib.data.custom_data): its task
    description, the zero-shot instruction, how its answer type is written, then its ``few_shot``
    demonstrations (if any) in the layout of CasCoD's files, then the question."""
    from nesylib.data.custom_data import ANSWER_TYPES

    instruction = (f"{record.get('task_description', '').strip()} {ZERO_SHOT_INSTRUCTION} "
                   f"Write X as {ANSWER_TYPES[entry['answer_type']]}.").strip()
    shots = "".join(f"Q: {s['question']}\n{STEP_CUE} {s['rationale']} {ANSWER_MARKER} {s['answer']}.\n\n"
                    for s in entry["few_shot"])
    return f"{instruction}\n\n{shots}Q: {record['question']}\n{STEP_CUE}"


def cot_prompt(record: dict, data_dir=None) -> str:
    """The teacher prompt for one record (BBH: CasCoD few-shot; a configured dataset: ``custom_cot_prompt``;
    otherwise zero-shot)."""
    from nesylib.data.custom_data import lookup

    entry = lookup(record.get("dataset", ""))
    if entry is not None:
        return custom_cot_prompt(record, entry)
    if record.get("dataset") == "bbh":
        from nesylib.data.sources import fetch

        path = fetch(f"cascod-prompts/cot-prompts/{record['task']}.txt", data_dir)
        text = path.read_text(encoding="utf-8")
        if text.count(QUESTION_SLOT) != 1 or not text.rstrip().endswith(STEP_CUE):
            raise DataError(f"{path}: expected one '{QUESTION_SLOT}' slot followed by '{STEP_CUE}' at the end")
        return text.replace(QUESTION_SLOT, record["question"])
    instruction = GSM8K_INSTRUCTION if "gsm8k" in record["task"] else \
        f"{record.get('task_description', '').strip()} {ZERO_SHOT_INSTRUCTION}".strip()
    return f"{instruction}\n\nQ: {record['question']}\n{STEP_CUE}"


def clean_rationale(text: str | None) -> str | None:
    """Teacher text -> rationale: drop a continued next question, cut after the answer sentence."""
    if not text:
        return None
    text = text.strip()
    if text.startswith(STEP_CUE[3:]):  # some teachers repeat the cue "Let's think step by step."
        text = text[len(STEP_CUE) - 3:].lstrip()
    return cut_after_answer(re.split(r"\n\s*Q: ", text, maxsplit=1)[0])


@dataclass(frozen=True)
class SampleSchedule:
    """CasCoD's sampling schedule: (n, T) per round, n and T growing up to their caps."""
    n0: int = 2
    t0: float = 0.2
    n_step: int = 1
    t_step: float = 0.1
    n_max: int = 10
    t_max: float = 1.5
    max_rounds: int = 4

    def __post_init__(self):
        if self.n0 < 1 or self.max_rounds < 1 or self.n_max < self.n0:
            raise ConfigError(f"SampleSchedule needs n0 >= 1, max_rounds >= 1, n_max >= n0; got {self}")

    def rounds(self) -> list[tuple[int, float]]:
        return [(min(self.n_max, self.n0 + r * self.n_step), round(min(self.t_max, self.t0 + r * self.t_step), 4))
                for r in range(self.max_rounds)]


@dataclass
class TaskStats:
    items: int = 0
    accepted: int = 0
    wrong: int = 0          # the teacher answered (with the marker) but never right
    no_marker: int = 0      # no sample had the marker
    failed: int = 0         # every call for the item failed
    samples: int = 0        # replies drawn (cached or new)

    @property
    def rate(self) -> float:
        return self.accepted / self.items if self.items else 0.0


@dataclass
class RationaleSet:
    """Accepted rationale records, per-task acceptance statistics and rejected uids with reasons."""
    records: list[dict]
    stats: dict[str, TaskStats]
    teacher: str
    prompt_version: str
    rejected: dict[str, str] = field(default_factory=dict)

    def totals(self) -> TaskStats:
        t = TaskStats()
        for s in self.stats.values():
            for k in ("items", "accepted", "wrong", "no_marker", "failed", "samples"):
                setattr(t, k, getattr(t, k) + getattr(s, k))
        return t

    def table(self) -> list[dict]:
        """One row per task (and a final 'all' row) for display or JSON."""
        rows = [{"task": k, **asdict(v), "rate": round(v.rate, 4)} for k, v in sorted(self.stats.items())]
        tot = self.totals()
        return rows + [{"task": "all", **asdict(tot), "rate": round(tot.rate, 4)}]

    def save(self, path: str | Path) -> Path:
        """Write the accepted records as JSONL (atomic) and a ``.stats.json`` beside them."""
        from nesylib.files import atomic_file, write_text

        path = Path(path).expanduser()
        with atomic_file(path) as f:  # temporary names unique to this writer
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        stats = {"teacher": self.teacher, "prompt_version": self.prompt_version, "tasks": self.table(),
                 "rejected": self.rejected}
        write_text(stats_path_for(path), json.dumps(stats, indent=1, ensure_ascii=False))
        return path


def stats_path_for(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + ".stats.json")


def load_rationales(path: str | Path) -> list[dict]:
    """Records saved by ``RationaleSet.save``; each must carry a rationale."""
    from nesylib.data.benchmarks import read_jsonl

    rows = read_jsonl(Path(path))
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get("rationale"), str) or "uid" not in r:
            raise DataError(f"{path}:{n}: expected a record with 'uid' and a 'rationale' string")
    return rows


def _default_judge() -> Callable[[str, str, str, str], bool]:
    from nesylib.evaluation.extract import is_correct  # imported late: extraction is its own module

    return is_correct


def generate_rationales(records: list[dict], teacher, *, schedule: SampleSchedule = SampleSchedule(),
                        until: str = "correct", max_tokens: int = 1024, system: str = "", seed: int = 0,
                        judge: Callable | None = None, prompt_fn: Callable[[dict], str] = cot_prompt,
                        prompt_version: str = COT_PROMPT_VERSION, progress: Callable[[str], None] | None = None
                        ) -> RationaleSet:
    """Sample teacher CoTs for ``records`` round by round and keep the right ones.

    Each round sends one batch (all open items x n samples) to ``teacher.complete``, so a
    ``CachedTeacher`` runs it concurrently and stores every call.
    """
    if until not in ("correct", "marker"):
        raise ConfigError(f"until must be 'correct' or 'marker', got {until!r}")
    uids = [r["uid"] for r in records]
    if len(set(uids)) != len(uids):
        raise DataError("generate_rationales: records contain duplicate uids")
    judge = judge or _default_judge()
    stats: dict[str, TaskStats] = {}
    for r in records:
        stats.setdefault(r["task"], TaskStats()).items += 1
    prompts = {r["uid"]: prompt_fn(r) for r in records}
    state = {r["uid"]: {"marker": False, "ok_reply": False} for r in records}
    accepted: dict[str, dict] = {}
    rejected: dict[str, str] = {}
    open_items = list(records)
    first_index = 0
    for rnd, (n, temp) in enumerate(schedule.rounds()):
        if not open_items:
            break
        reqs = [TeacherRequest(prompt=prompts[r["uid"]], kind="cot", system=system, temperature=temp,
                               max_tokens=max_tokens, sample_index=first_index + j, uid=r["uid"], record=r,
                               extra={"seed": seed})
                for r in open_items for j in range(n)]
        replies = teacher.complete(reqs)
        if len(replies) != len(reqs):
            raise ConfigError(f"teacher {teacher.name!r} returned {len(replies)} replies for {len(reqs)} requests")
        still_open = []
        for i, rec in enumerate(open_items):
            st = state[rec["uid"]]
            stats[rec["task"]].samples += n
            done = False
            for j, rep in enumerate(replies[i * n:(i + 1) * n]):
                st["ok_reply"] |= rep.ok
                rationale = clean_rationale(rep.text if rep.ok else None)
                if rationale is None:
                    continue
                st["marker"] = True
                right = bool(judge(rationale, rec["answer"], rec["task"], rec["question"]))
                if right or until == "marker":
                    done = True
                    if right:
                        accepted[rec["uid"]] = {**rec, "rationale": rationale, "provenance": {
                            "teacher": teacher.name, "prompt_version": prompt_version,
                            "sample_index": first_index + j, "temperature": temp, "round": rnd}}
                    else:
                        rejected[rec["uid"]] = "wrong"
                    break
            if not done:
                still_open.append(rec)
        open_items = still_open
        first_index += n
        if progress:
            progress(f"round {rnd + 1}: n={n} T={temp}: {len(accepted)} accepted, {len(open_items)} open")
    for rec in open_items:
        st = state[rec["uid"]]
        rejected[rec["uid"]] = "wrong" if st["marker"] else ("no_marker" if st["ok_reply"] else "failed")
    for rec in records:
        s = stats[rec["task"]]
        if rec["uid"] in accepted:
            s.accepted += 1
        else:
            setattr(s, rejected[rec["uid"]], getattr(s, rejected[rec["uid"]]) + 1)
    out = [accepted[r["uid"]] for r in records if r["uid"] in accepted]
    return RationaleSet(out, stats, teacher.name, prompt_version, rejected)


def replay_rationales(records: list[dict], source: str = "auto", judge: Callable | None = None,
                      data_dir=None) -> RationaleSet:
    """The rationale dataset from recorded outputs with the correct-only filter (D2, D3).

    ``source``: "codex" (BBH: recorded code-davinci-002 CoTs), "gsm8k" (reference solutions
    rewritten), or "auto" (by each record's dataset). One sample per item; no calls are made.
    """
    from nesylib.teacher.replay import ReplayTeacher

    teacher = ReplayTeacher(source, data_dir=data_dir)
    teacher.check(records)
    one = SampleSchedule(n0=1, t0=0.0, n_max=1, max_rounds=1)  # recorded outputs were greedy
    return generate_rationales(records, teacher, schedule=one, judge=judge, prompt_fn=lambda r: "",
                               prompt_version=teacher.prompt_version)


def incomplete_message(rset: RationaleSet, summary=None) -> str | None:
    """Why a generation run is incomplete (unresolved calls, failed items), or None when it is not.

    ``summary``: the ``CachedTeacher``'s ``RunSummary`` (None for teachers without one).
    """
    unresolved = int(getattr(summary, "unresolved", 0) or 0)
    tot = rset.totals()
    if not unresolved and not tot.failed:
        return None
    parts = []
    if unresolved:
        parts.append(f"{unresolved} of {summary.requests} teacher requests are unresolved after their retries")
    if tot.failed:
        parts.append(f"{tot.failed} of {tot.items} items failed (no call for them got a reply)")
    return f"teacher {rset.teacher}: " + " and ".join(parts) + f"; {tot.accepted} rationales were accepted and saved"


def check_complete(rset: RationaleSet, summary=None) -> None:
    """Raise ``TeacherIncomplete`` (naming the counts) when ``incomplete_message`` finds something.

    Call it after saving the accepted rationales: a rerun over the same call store then pays only
    for the calls that failed.
    """
    from nesylib.teacher.cached import TeacherIncomplete

    msg = incomplete_message(rset, summary)
    if msg:
        raise TeacherIncomplete(f"{msg}. Rerun to ask exactly the missing calls again: stored calls are served "
                                "for free.")
