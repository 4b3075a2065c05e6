"""Supervised training examples per student method (method.md §2.5, §5, D14, D18).

Records carry ``rationale``: the teacher CoT ending in ``Therefore, the answer is X.``. Every
prompt string comes from ``nesylib.methods.prompts`` (D11: the same builder serves evaluation). Targets
carry no EOS: the training collator appends it (§2.2).

Multi-task methods return two Examples per record that share the record's uid, with groups
``"rationale"`` and ``"answer"``; the trainer keeps them in the same step and weights the groups
(D18). Single-task methods use the group ``"main"``.
"""
from __future__ import annotations

import dataclasses

from nesylib.methods import prompts
from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import Example

TRAIN_METHODS = ("std", "ft", "mt-cot", "mt-re", "kard", "kaft", "cascod", "kb")
_NEEDS_KNOWLEDGE = {"kard": "a list of passages", "kaft": "a list of passages", "kb": "a summary string"}


def _where(record: dict) -> str:
    return f"record {record.get('uid', '<no uid>')!r}"


def _rationale(record: dict) -> str:
    """The full teacher response, checked to end with the answer marker (D18 splits on it)."""
    text = record.get("rationale")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{_where(record)}: missing or empty 'rationale' (the teacher CoT)")
    if prompts.ANSWER_MARKER not in text:
        raise DataError(f"{_where(record)}: rationale lacks the marker {prompts.ANSWER_MARKER!r}: "
                        f"{text.strip()[-80:]!r}")
    return text.strip()


def _split(record: dict) -> tuple[str, str]:
    """(rationale without the answer sentence, answer text after the last marker)."""
    head, answer = prompts.split_rationale(_rationale(record))
    if not answer:
        raise DataError(f"{_where(record)}: nothing follows the last {prompts.ANSWER_MARKER!r} in its rationale")
    if not head:
        raise DataError(f"{_where(record)}: the rationale has no reasoning before {prompts.ANSWER_MARKER!r}")
    return head, answer


def _gold(record: dict) -> str:
    gold = record.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        raise DataError(f"{_where(record)}: missing or empty gold 'answer'")
    return gold.strip()


def _knowledge_for(record: dict, knowledge: dict, method: str):
    uid = record.get("uid", "")
    if uid not in knowledge:
        raise DataError(f"{_where(record)}: no entry in `knowledge` (method {method!r} needs "
                        f"{_NEEDS_KNOWLEDGE[method]} per uid; pass [] or '' to train without one)")
    value = knowledge[uid]
    if method == "kb":
        if not isinstance(value, str):
            raise DataError(f"{_where(record)}: knowledge for 'kb' must be a summary string, got {type(value).__name__}")
    elif not (isinstance(value, list) and all(isinstance(p, str) for p in value)):
        raise DataError(f"{_where(record)}: knowledge for {method!r} must be a list of passage strings")
    return value


def examples_for(method: str, records: list[dict], knowledge: dict | None = None) -> list[Example]:
    """Training Examples for ``method`` in record order (two per record for mt-cot, mt-re, cascod).

    ``knowledge`` maps uid -> list of passages (kard, kaft) or -> learning summary (kb).
    """
    if method not in TRAIN_METHODS:
        hint = " ('inter' examples are built per stage by the SKIntern curriculum)" if method == "inter" else ""
        raise ConfigError(f"method={method!r} is not a training format; choose one of {TRAIN_METHODS}{hint}")
    if method in _NEEDS_KNOWLEDGE and knowledge is None:
        raise ConfigError(f"method={method!r} needs `knowledge`: a dict uid -> {_NEEDS_KNOWLEDGE[method]}")
    out: list[Example] = []
    for r in records:
        out += _examples_one(method, r, knowledge)
    return [dataclasses.replace(e, kind=method) for e in out]


def _examples_one(method: str, r: dict, knowledge: dict | None) -> list[Example]:
    out: list[Example] = []
    uid = r.get("uid", "")
    if method == "std":
        out.append(Example(prompts.std(r), _rationale(r), "main", uid))
    elif method == "ft":
        out.append(Example(prompts.ft(r), _gold(r), "main", uid))
    elif method == "kard":
        out.append(Example(prompts.kard(r, _knowledge_for(r, knowledge, method)), _rationale(r), "main", uid))
    elif method == "kaft":
        out.append(Example(prompts.kaft(r, _knowledge_for(r, knowledge, method)), _gold(r), "main", uid))
    elif method == "kb":
        out.append(Example(prompts.kb(r, _knowledge_for(r, knowledge, method)), _rationale(r), "main", uid))
    elif method == "mt-cot":
        _, answer = _split(r)  # validates the answer part before the full response is used
        p_rat, p_ans = prompts.mt_cot(r)
        out += [Example(p_rat, _rationale(r), "rationale", uid), Example(p_ans, answer, "answer", uid)]
    elif method == "mt-re":
        rationale, answer = _split(r)
        p_rat, p_ans = prompts.mt_re(r)
        out += [Example(p_rat, rationale, "rationale", uid), Example(p_ans, answer, "answer", uid)]
    else:  # cascod: stage 2 conditions on the gold-teacher rationale (D18 layout)
        rationale, answer = _split(r)
        out += [Example(prompts.cascod(r), rationale, "rationale", uid),
                Example(prompts.cascod(r, rationale), answer, "answer", uid)]
    return out
