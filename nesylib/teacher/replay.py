"""Replay teachers: recorded outputs served through the Teacher interface (no calls, no cost).

* ``codex``: BBH's recorded code-davinci-002 CoTs (D2). Each prediction is cut after its first
  ``So the answer is X.`` sentence and that phrase becomes ``Therefore, the answer is X.``;
  a prediction without the phrase is served unchanged, so the filter drops it as "no marker".
* ``gsm8k``: GSM8K's human reference solutions as a "dataset teacher" (D3): ``<<...>>``
  calculator annotations removed, the final ``#### N`` line replaced by
  ``Therefore, the answer is N.`` (N without thousands commas, as in the record's gold).

They answer ``kind="cot"`` requests from ``request.record`` (uid ``{dataset}/{task}/{index}``)
and ignore the prompt, so ``generate_rationales`` builds the replayed dataset with the same
filter and provenance as a live teacher.
"""
from __future__ import annotations

import re

from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import ANSWER_MARKER, cut_after_answer
from nesylib.teacher.base import TeacherReply, TeacherRequest


CODEX_PHRASE = "So the answer is"
SOURCES = ("codex", "gsm8k", "auto")
_DATASET_OF = {"codex": "bbh", "gsm8k": "gsm8k"}
_SOURCE_OF = {v: k for k, v in _DATASET_OF.items()}
_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?[ \t]*####[ \t]*(.+?)\s*$")


def codex_rationale(prediction: str) -> str | None:
    """D2 rewrite of one Codex prediction; None when it lacks ``So the answer is``."""
    at = prediction.find(CODEX_PHRASE)
    if at < 0:
        return None
    return cut_after_answer(prediction[:at] + ANSWER_MARKER + prediction[at + len(CODEX_PHRASE):])


def gsm8k_rationale(solution: str) -> str:
    """D3 rewrite of a GSM8K reference solution into a marker-terminated rationale."""
    m = _FINAL.search(solution)
    if not m:
        raise DataError(f"GSM8K solution lacks its final '#### N' line: {solution[-80:]!r}")
    body = _CALC.sub("", solution[:m.start()]).strip()
    answer = m.group(1).replace(",", "").strip()
    return f"{body}\n{ANSWER_MARKER} {answer}."


class ReplayTeacher:
    """Serves recorded CoTs for BBH (Codex) and GSM8K (reference solutions)."""

    backend = "replay"
    paid = False

    def __init__(self, source: str = "auto", data_dir=None):
        if source not in SOURCES:
            raise ConfigError(f"replay source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.data_dir = data_dir
        self.model = {"codex": "code-davinci-002", "gsm8k": "gsm8k-reference", "auto": "codex+gsm8k-reference"}[source]
        self.name = f"replay:{self.model}"
        self.prompt_version = f"replay-{source}-v1"
        self._codex: dict[str, list[str]] = {}

    def check(self, records: list[dict]) -> None:
        """Fail early when a record has no recorded rationale source."""
        allowed = set(_DATASET_OF.values()) if self.source == "auto" else {_DATASET_OF[self.source]}
        bad = sorted({r.get("dataset") for r in records} - allowed)
        if bad:
            raise ConfigError(f"replay source {self.source!r} has recorded rationales for {sorted(allowed)} only; "
                              f"records include {bad}; a live teacher (backend openai or local) teaches any dataset")

    def rationale(self, record: dict) -> str:
        """The replayed text for ``record`` (rewritten; raw when it has no answer phrase)."""
        dataset = record.get("dataset")
        if self.source != "auto" and dataset != _DATASET_OF[self.source]:
            raise ConfigError(f"replay source {self.source!r} cannot answer {record.get('uid')!r} ({dataset})")
        if dataset == "gsm8k":
            solution = (record.get("meta") or {}).get("solution")
            if not solution:
                raise DataError(f"{record.get('uid')}: GSM8K record lacks meta['solution']")
            return gsm8k_rationale(solution)
        if dataset == "bbh":
            task, index = record["task"], int(record["uid"].rsplit("/", 1)[1])
            if task not in self._codex:
                from nesylib.data.benchmarks import load_codex_rationales

                self._codex[task] = load_codex_rationales(task, self.data_dir)
            prediction = self._codex[task][index]
            # Without the phrase the recording is kept as is: the filter then counts it as "no marker".
            return codex_rationale(prediction) or prediction
        raise ConfigError(f"no recorded rationales for dataset {dataset!r} (record {record.get('uid')!r})")

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        out = []
        for req in requests:
            if req.kind != "cot" or req.record is None:
                raise ConfigError(f"the replay teacher answers kind='cot' requests that carry their record; "
                                  f"got kind={req.kind!r} for {req.uid!r}")
            text = self.rationale(req.record)
            ok = bool(text and text.strip())
            out.append(TeacherReply(text=text if ok else None, ok=ok, finish_reason="replay",
                                    error=None if ok else "empty recorded output"))
        return out
