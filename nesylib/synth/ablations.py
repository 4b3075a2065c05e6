"""Glue for notebook 06: the papers' ablations as one-factor sweeps around notebook 08's run.

The ablations read 08's parameters, benchmark, knowledge and knowledge base (``base_config``,
``read_knowledge``) so that each variant differs from 08 in the swept factor only; the variant
equal to 08's configuration hits 08's cached adapter instead of training again.

    sweeps = check_sweeps(k_values, train_fractions, schedules, content_variants)
    base = base_config(run_dir_of_08, student)
    subset = fraction_per_task(train_rows, 0.25, seed)
    rows += sweep_rows("k", "k=2", 2, item_rows, eval_summary)   # one row per split + "all"
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from nesylib.methods.curriculum import KINDS
from nesylib.errors import ConfigError, DataError
# notebook 06 reads ab.NO_KNOWLEDGE: P-KB without knowledge is P-STD
from nesylib.methods.prompts import NO_SUMMARY as NO_KNOWLEDGE  # noqa: F401

CONTENT_VARIANTS = ("knowledge_only", "examples_only")
# 08's parameters the ablations inherit (the variant equal to 08's run must share its students).
INHERITED = ("seed", "student", "train", "train_overrides", "max_new_tokens", "synth_config", "eval_per_task_synth",
             "methods", "stages_T", "max_demos", "compressor", "k_retrieve", "k_insert", "kb_index_text",
             "se_train_knowledge", "se_keep_own", "se_step_budget")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_sweeps(k_values, train_fractions, schedules, content_variants) -> dict[str, list]:
    """Validate the four sweep parameters; errors name the parameter and the bad entry."""
    for name, v in (("k_values", k_values), ("train_fractions", train_fractions), ("schedules", schedules),
                    ("content_variants", content_variants)):
        if not isinstance(v, list):
            raise ConfigError(f"parameter {name!r} must be a list (empty to skip the sweep), got {v!r}")
    for k in k_values:
        if not _is_int(k) or k < 0:
            raise ConfigError(f"parameter 'k_values': {k!r} is not an integer >= 0")
    for f in train_fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"parameter 'train_fractions': {f!r} is not a number in (0, 1]")
    parsed = []
    for s in schedules:
        if not (isinstance(s, (list, tuple)) and len(s) == 2 and s[0] in KINDS and _is_int(s[1]) and s[1] >= 1):
            raise ConfigError(f"parameter 'schedules': {s!r} must be [kind, T] with kind in {KINDS} and T >= 1")
        parsed.append((s[0], int(s[1])))
    for c in content_variants:
        if c not in CONTENT_VARIANTS:
            raise ConfigError(f"parameter 'content_variants': {c!r} is not one of {CONTENT_VARIANTS}")
    for name, v in (("k_values", k_values), ("train_fractions", train_fractions), ("schedules", parsed),
                    ("content_variants", content_variants)):
        if len(set(v)) != len(v):
            raise ConfigError(f"parameter {name!r} lists a value twice: {v!r}")
    return {"k": list(k_values), "train_size": [float(f) for f in train_fractions], "schedule": parsed,
            "content": list(content_variants)}


def base_config(nb08_dir, student: str) -> dict:
    """Notebook 08's parameters (its ``params.json``) that the ablations inherit.

    The ablations must use 08's student: their reference variants are 08's adapters."""
    path = Path(nb08_dir) / "params.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run notebook 08_synthetic_benchmark of this preset first")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    missing = [k for k in INHERITED if k not in params]
    if missing:
        raise DataError(f"{path} lacks parameter(s) {missing}; re-run notebook 08 with this version of nesylib")
    if params["student"] != student:
        raise ConfigError(f"parameter 'student' = {student!r} differs from notebook 08's {params['student']!r} "
                          f"({path}); the ablations vary one factor around 08's run and reuse its students")
    return {k: params[k] for k in INHERITED}


def read_knowledge(path) -> dict[str, str]:
    """uid -> knowledge text from 08's ``knowledge.jsonl``; errors name the file and line."""
    from nesylib.data.benchmarks import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: notebook 08 writes it when its methods include kard, kaft or "
                        f"skintern; the SKIntern sweeps need it")
    out = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row, dict) or not isinstance(row.get("uid"), str) or \
                not isinstance(row.get("knowledge"), str):
            raise DataError(f"{path}:{n}: expected an object with string 'uid' and 'knowledge'")
        out[row["uid"]] = row["knowledge"]
    return out


def fraction_per_task(records: list[dict], fraction: float, seed: int = 42) -> list[dict]:
    """A seeded ``ceil(fraction x n)`` of each task's records (at least one), original order kept.

    Nested: a smaller fraction's subset is contained in a larger one's (same shuffle, shorter prefix),
    so the sweep adds data rather than swapping it."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r["task"], []).append(i)
    keep = set()
    for task, ix in by_task.items():
        ix = list(ix)
        random.Random(f"{seed}-fraction-{task}").shuffle(ix)
        keep.update(ix[:max(1, math.ceil(fraction * len(ix)))])
    return [r for i, r in enumerate(records) if i in keep]


def sweep_rows(sweep: str, variant: str, value, items: list[dict], summary: dict | None = None,
               n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Rows for one evaluated variant: accuracy with a bootstrap 95% CI over all items and per split.

    ``items`` are ``synth.experiment.item_rows``; ``summary`` (the evaluation summary) adds the
    inference FLOPs of the whole evaluation to the "all" row."""
    from nesylib.evaluation.metrics import bootstrap_ci

    if not items:
        raise ConfigError(f"sweep {sweep!r} variant {variant!r}: no evaluated items")
    groups = {"all": items}
    for it in items:
        groups.setdefault(it["split"], []).append(it)
    flops = None
    if summary and summary.get("flops"):
        flops = sum(v["inference_tflops"] for v in summary["flops"].values())
    out = []
    for split, its in groups.items():
        flags = [bool(i["correct"]) for i in its]
        lo, hi = bootstrap_ci(flags, n_boot=n_boot, seed=seed)
        out.append({"sweep": sweep, "variant": variant, "value": value, "split": split, "n": len(flags),
                    "accuracy": sum(flags) / len(flags), "ci_low": lo, "ci_high": hi,
                    "no_answer_rate": sum(not i.get("has_answer", True) for i in its) / len(its),
                    "inference_tflops": flops if split == "all" else None})
    return out
