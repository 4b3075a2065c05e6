"""Accuracy tables with bootstrap confidence intervals, ID/OOD averages and baselines (D21).

A scored row is a dict with at least ``dataset``, ``task`` and ``correct`` (bool). Optional keys:
``has_answer`` and ``well_formed`` (bools), or ``output`` (the raw model output, from which
both are computed with nesylib.evaluation.extract). Accuracy is micro (correct / items) within a group;
the ID and OOD averages are plain means of the per-dataset accuracies of the datasets present.

Bootstrap: items are resampled with replacement. Because the flags are 0/1, the resampled count
of correct items is exactly Binomial(n, p̂) (and the four paired cells are Multinomial), so we
draw those counts directly: the same distribution as index resampling, at O(n_boot) cost.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd

from nesylib.data.benchmarks import domain_sets


def _flags(flags, name: str = "flags") -> np.ndarray:
    arr = np.asarray(list(flags) if not isinstance(flags, np.ndarray) else flags)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1, True, False)).all():
        raise ValueError(f"{name} must hold booleans or 0/1 values")
    return arr.astype(bool)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(flags, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean of 0/1 ``flags``, seeded."""
    arr = _flags(flags)
    _check_alpha(alpha)
    if arr.size == 0:
        raise ValueError("bootstrap_ci needs at least one item")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    means = rng.binomial(arr.size, arr.mean(), size=n_boot) / arr.size
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(a_flags, b_flags, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Accuracy difference a - b on the same items, with a paired percentile bootstrap.

    Returns ``diff``, ``ci_low``, ``ci_high``, ``p_value`` (two-sided: twice the smaller share of
    resampled differences on either side of 0, capped at 1) and ``n``.
    """
    a, b = _flags(a_flags, "a_flags"), _flags(b_flags, "b_flags")
    _check_alpha(alpha)
    if a.size != b.size:
        raise ValueError(f"a_flags and b_flags must score the same items: {a.size} != {b.size}")
    if a.size == 0:
        raise ValueError("paired_bootstrap_diff needs at least one item")
    n = a.size
    # Cells: (a right, b wrong) adds +1 to the difference, (a wrong, b right) adds -1.
    cells = np.array([np.sum(a & ~b), np.sum(~a & b), np.sum(a == b)]) / n
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cells, size=n_boot)
    diffs = (draws[:, 0] - draws[:, 1]) / n
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return {"diff": float(a.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(p), "n": int(n)}


def _check_rows(rows, keys) -> list[dict]:
    rows = list(rows)
    for i, r in enumerate(rows):
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"rows[{i}] lacks key(s) {missing}; has {sorted(r)}")
    return rows


def accuracy_table(rows, by="task", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Micro accuracy and bootstrap 95% CI per group; ``by`` is a row key or a list of keys.

    Columns: the ``by`` key(s), n, correct, accuracy, ci_low, ci_high. Groups keep first-seen order.
    """
    keys = [by] if isinstance(by, str) else list(by)
    rows = _check_rows(rows, keys + ["correct"])
    groups: dict[tuple, list[bool]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(bool(r["correct"]))
    out = []
    for key, flags in groups.items():
        lo, hi = bootstrap_ci(flags, n_boot=n_boot, seed=seed)
        out.append({**dict(zip(keys, key)), "n": len(flags), "correct": int(sum(flags)),
                    "accuracy": sum(flags) / len(flags), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out, columns=keys + ["n", "correct", "accuracy", "ci_low", "ci_high"])


def _rate(rows, key: str) -> float | None:
    """Share of rows with a true ``key``; computed from ``output`` when the key is absent."""
    from nesylib.evaluation.extract import has_answer, is_well_formed

    vals = []
    for r in rows:
        if key in r:
            vals.append(bool(r[key]))
        elif "output" in r:
            vals.append(has_answer(r["output"], r["task"]) if key == "has_answer" else is_well_formed(r["output"]))
        else:
            return None
    return sum(vals) / len(vals) if vals else None


def summarize(rows, n_boot: int = 1000, seed: int = 0) -> dict:
    """The D21 report as a plain dict.

    Keys: ``datasets`` {name: {n, accuracy, ci_low, ci_high, no_answer_rate, well_formed_rate}},
    ``id_average`` / ``ood_average`` (mean of per-dataset accuracies over the ID = bbh, gsm8k and
    OOD = agieval, arc-e, arc-c, gsm8k_plus sets present, and configured sets by their role; None when
    none is present), with the sets used under ``id_datasets`` / ``ood_datasets``; ``bbh_tasks``
    {task: {n, accuracy, ci_low, ci_high}}; overall ``no_answer_rate`` and ``well_formed_rate`` (None
    when not computable).
    """
    rows = _check_rows(rows, ["dataset", "task", "correct"])
    if not rows:
        raise ValueError("summarize needs at least one scored row")
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    table = accuracy_table(rows, by="dataset", n_boot=n_boot, seed=seed).set_index("dataset")
    datasets = {}
    for name, ds_rows in by_ds.items():
        t = table.loc[name]
        no_ans = _rate(ds_rows, "has_answer")
        datasets[name] = {"n": int(t["n"]), "accuracy": float(t["accuracy"]), "ci_low": float(t["ci_low"]),
                          "ci_high": float(t["ci_high"]),
                          "no_answer_rate": None if no_ans is None else 1 - no_ans,
                          "well_formed_rate": _rate(ds_rows, "well_formed")}

    def _avg(names):
        present = [d for d in names if d in datasets]
        return (float(np.mean([datasets[d]["accuracy"] for d in present])) if present else None), present

    in_domain, out_of_domain = domain_sets()
    id_avg, id_sets = _avg(in_domain)
    ood_avg, ood_sets = _avg(out_of_domain)
    bbh = [r for r in rows if r["dataset"] == "bbh"]
    bbh_tasks = {}
    if bbh:
        for rec in accuracy_table(bbh, by="task", n_boot=n_boot, seed=seed).to_dict("records"):
            bbh_tasks[rec.pop("task")] = {k: rec[k] for k in ("n", "accuracy", "ci_low", "ci_high")}
    no_ans = _rate(rows, "has_answer")
    return {"datasets": datasets, "id_average": id_avg, "id_datasets": id_sets, "ood_average": ood_avg,
            "ood_datasets": ood_sets, "bbh_tasks": bbh_tasks,
            "no_answer_rate": None if no_ans is None else 1 - no_ans,
            "well_formed_rate": _rate(rows, "well_formed"), "n": len(rows)}


def chance_and_majority(records) -> pd.DataFrame:
    """Chance and majority-class accuracy per task for dataset records (nesylib.data.benchmarks).

    Chance of one item = 1 / number of listed options. An item without options counts 1/k when its
    task's gold answers take only k <= 2 distinct values (True/False, yes/no tasks), else 0 (free
    form). Majority = share of the task's most frequent gold answer (compared case-insensitively).
    Columns: dataset, task, n, chance, majority, majority_answer.
    """
    records = _check_rows(records, ["dataset", "task", "answer"])
    by_task: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        by_task[(r["dataset"], r["task"])].append(r)
    out = []
    for (ds, task), recs in by_task.items():
        golds = Counter(str(r["answer"]).strip().lower() for r in recs)
        binary_free = len(golds) <= 2
        chance = [1 / len(r["options"]) if r.get("options") else (1 / len(golds) if binary_free else 0.0)
                  for r in recs]
        answer, count = golds.most_common(1)[0]
        out.append({"dataset": ds, "task": task, "n": len(recs), "chance": float(np.mean(chance)),
                    "majority": count / len(recs), "majority_answer": answer})
    return pd.DataFrame(out, columns=["dataset", "task", "n", "chance", "majority", "majority_answer"])
