"""The report's tables from collected results: the main table and its markdown, FLOPs points, the synthetic
and ablation tables, and writing them (CSV with plain numbers, markdown)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nesylib.data.benchmarks import domain_sets
from nesylib.errors import DataError
from nesylib.report.collect import ABLATIONS, Collected, MAIN_SOURCES, NotebookResult, SWEEP_KEYS, SYNTHETIC, _Z95, _count, _interval, _number, _optional, _size_of, _student_of, collect


# ---------------------------------------------------------------------------------- main table
def datasets_of(table: pd.DataFrame) -> list[str]:
    """The dataset columns of a main table (those with ``_n`` and ``_ci_low`` siblings), in table order."""
    return [c for c in table.columns if f"{c}_n" in table.columns and f"{c}_ci_low" in table.columns]


def _average_ci(avg: float, cis: list[tuple[float, float]]) -> tuple[float, float]:
    """Approximate 95% CI of a mean of independent per-dataset accuracies from their bootstrap CIs
    (each half-width read as 1.96 standard errors); the item-level data are not in results.json."""
    if math.isnan(avg) or not cis:
        return math.nan, math.nan
    se = math.sqrt(sum(((hi - lo) / (2 * _Z95)) ** 2 for lo, hi in cis)) / len(cis)
    return max(0.0, avg - _Z95 * se), min(1.0, avg + _Z95 * se)


def _main_row(r, nb: NotebookResult, i: int) -> dict:
    where = f"{nb.path}: rows[{i}]"
    if not isinstance(r, dict):
        raise DataError(f"{where} must be an object, got {type(r).__name__}")
    mid = r.get("method_id")
    if not isinstance(mid, str) or not mid:
        raise DataError(f"{where} lacks a 'method_id' string")
    where = f"{where} ({mid})"
    datasets = [k for k in r if f"{k}_ci" in r and f"{k}_n" in r]
    if not datasets:
        raise DataError(f"{where} has no per-dataset accuracy (keys <dataset>, <dataset>_ci, <dataset>_n)")
    student = _student_of(r, nb)
    out = {"notebook": nb.stem, "method": str(r.get("method") or mid), "method_id": mid, "student": student,
           "student_params": _size_of(r, nb, student)}
    for ds in datasets:
        out[ds] = _number(r[ds], f"{where} '{ds}'", 0, 1)
        out[f"{ds}_ci_low"], out[f"{ds}_ci_high"] = _interval(r[f"{ds}_ci"], f"{where} '{ds}_ci'")
        out[f"{ds}_n"] = _count(r[f"{ds}_n"], f"{where} '{ds}_n'")
    for split, names in zip(("id", "ood"), domain_sets()):
        present = [d for d in names if d in datasets]
        avg = _optional(r.get(f"{split}_avg"), f"{where} '{split}_avg'")
        if math.isnan(avg) and present:  # the harness's definition: plain mean of the sets present
            avg = float(np.mean([out[d] for d in present]))
        out[f"{split}_avg"] = avg
        out[f"{split}_ci_low"], out[f"{split}_ci_high"] = _average_ci(
            avg, [(out[f"{d}_ci_low"], out[f"{d}_ci_high"]) for d in present])
        out[f"{split}_datasets"] = ",".join(present)
    for key in ("no_answer_rate", "well_formed_rate", "strict_id_avg", "prefill_tmacs", "inference_tflops",
                "eval_seconds", "train_seconds"):
        out[key] = _optional(r.get(key), f"{where} '{key}'")
    out["items"] = _count(r["items"], f"{where} 'items'") if r.get("items") is not None else \
        sum(out[f"{d}_n"] for d in datasets)
    per_item = 1e12 / out["items"] if out["items"] else math.nan
    out["inference_flops_per_item"] = out["inference_tflops"] * per_item
    out["prefill_macs_per_item"] = out["prefill_tmacs"] * per_item
    return out


def main_table(collected: Collected) -> tuple[pd.DataFrame, list[str]]:
    """The main results table from the ``rows`` of notebooks 03, 04, 05 (first source wins per method_id),
    and notes on what was dropped. Per dataset: accuracy, ``_ci_low``, ``_ci_high``, ``_n``."""
    rows, notes, seen = [], [], {}
    for stem in MAIN_SOURCES:
        nb = collected.notebooks.get(stem)
        if nb is None:
            continue
        raw = nb.results.get("rows")
        if not isinstance(raw, list):
            raise DataError(f"{nb.path}: 'rows' must be a list of result rows, got {type(raw).__name__}")
        for i, r in enumerate(raw):
            row = _main_row(r, nb, i)
            if row["method_id"] in seen:
                notes.append(f"method {row['method_id']!r} is in {seen[row['method_id']]} and {stem}: "
                             f"the {seen[row['method_id']]} row is kept")
                continue
            seen[row["method_id"]] = stem
            rows.append(row)
    lead = ["notebook", "method", "method_id", "student", "student_params", "id_avg", "id_ci_low", "id_ci_high",
            "ood_avg", "ood_ci_low", "ood_ci_high"]
    found = list(dict.fromkeys(k for r in rows for k in r if f"{k}_n" in r))
    ordered = [d for names in domain_sets() for d in names]
    datasets = [d for d in ordered if d in found] + [d for d in found if d not in ordered]
    per_ds = [c for d in datasets for c in (d, f"{d}_ci_low", f"{d}_ci_high", f"{d}_n")]
    tail = ["items", "no_answer_rate", "well_formed_rate", "strict_id_avg", "inference_flops_per_item",
            "inference_tflops", "prefill_macs_per_item", "prefill_tmacs", "eval_seconds", "train_seconds",
            "id_datasets", "ood_datasets"]
    table = pd.DataFrame(rows, columns=lead + per_ds + tail)
    for d in datasets:  # a dataset one method was not evaluated on stays empty, not zero
        table[f"{d}_n"] = table[f"{d}_n"].astype("Int64")
    return table, notes


def _pct(v, lo=None, hi=None) -> str:
    if v is None or pd.isna(v):
        return "–"
    return f"{100 * v:.1f}" + ("" if lo is None or pd.isna(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")


def _md(rows: list[list[str]], header: list[str]) -> str:
    esc = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]) + "\n"


def _shown_path(path) -> str:
    """A results folder as a reader should see it: relative to the repository when inside it."""
    from nesylib.pipeline.runs import REPO_ROOT

    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else p.name


def main_table_markdown(table: pd.DataFrame, notes=(), title: str | None = None) -> str:
    """A Markdown version of ``main_table``: accuracy % [95% CI], n in the header when it is the same for all."""
    datasets = datasets_of(table)
    header = ["Method", "Notebook", "Student", "ID avg", "OOD avg"]
    for d in datasets:
        ns = table[f"{d}_n"].dropna().unique()
        header.append(f"{d} (n={int(ns[0])})" if len(ns) == 1 else d)
    header += ["No answer %", "Inference GFLOPs / item"]
    body = []
    for r in table.to_dict("records"):
        cells = [r["method"], r["notebook"], r["student"], _pct(r["id_avg"], r["id_ci_low"], r["id_ci_high"]),
                 _pct(r["ood_avg"], r["ood_ci_low"], r["ood_ci_high"])]
        for d in datasets:
            same_n = table[f"{d}_n"].dropna().nunique() == 1
            cell = _pct(r[d], r[f"{d}_ci_low"], r[f"{d}_ci_high"])
            cells.append(cell if same_n or pd.isna(r[d]) else f"{cell} n={r[f'{d}_n']}")
        flops = r["inference_flops_per_item"]
        cells += [_pct(r["no_answer_rate"]), "–" if pd.isna(flops) else f"{flops / 1e9:.1f}"]
        body.append(cells)
    text = (f"{title}\n\n" if title else "") + (_md(body, header) if body else "No main-table rows were found.\n")
    foot = ["Accuracy in % with 95% bootstrap intervals. ID/OOD averages are plain means of the per-dataset "
            "accuracies; their intervals are approximate (per-dataset intervals combined as independent normal "
            "errors). Inference FLOPs: mean over all evaluated items, prompt and generation (nesylib.evaluation.flops)."]
    return text + "\n" + "\n".join(f"- {n}" for n in foot + list(notes)) + "\n"


def flops_points(table: pd.DataFrame) -> pd.DataFrame:
    """(method, student, split ID/OOD) points: average accuracy with its CI against FLOPs per item."""
    pts = []
    for r in table.to_dict("records"):
        for split, key in (("ID", "id"), ("OOD", "ood")):
            if pd.isna(r[f"{key}_avg"]):
                continue
            pts.append({"method": r["method"], "method_id": r["method_id"], "notebook": r["notebook"],
                        "student": r["student"], "student_params": r["student_params"], "split": split,
                        "accuracy": r[f"{key}_avg"], "ci_low": r[f"{key}_ci_low"], "ci_high": r[f"{key}_ci_high"],
                        "inference_flops_per_item": r["inference_flops_per_item"],
                        "prefill_macs_per_item": r["prefill_macs_per_item"], "items": r["items"]})
    return pd.DataFrame(pts, columns=["method", "method_id", "notebook", "student", "student_params", "split",
                                      "accuracy", "ci_low", "ci_high", "inference_flops_per_item",
                                      "prefill_macs_per_item", "items"])


# ------------------------------------------------------------------------ synthetic, ablations
def synthetic_table(collected: Collected) -> pd.DataFrame | None:
    """Notebook 08's rows, one per (method, split): accuracy, CI, n, the multiple-choice subset, "derives
    the answer" (the reasoning ends on the gold option's text) with its CI, the paired difference against
    Std-CoT, the share of needed facts in the knowledge of the test and training prompts, and prefill cost
    relative to Std-CoT. Floors (chance, co-occurrence heuristic) have kind "floor"."""
    nb = collected.notebooks.get(SYNTHETIC)
    if nb is None:
        return None
    raw = nb.results.get("rows")
    if not isinstance(raw, list):
        raise DataError(f"{nb.path}: 'rows' must be a list of result rows, got {type(raw).__name__}")
    out = []
    for i, r in enumerate(raw):
        where = f"{nb.path}: rows[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("method_id"), str):
            raise DataError(f"{where} must be an object with a 'method_id' string")
        where += f" ({r['method_id']})"
        splits = [s for s in ("test", "ood") if s in r or f"{s}_mc" in r]
        for s in splits:
            acc = r.get(s)
            lo, hi = _interval(r[f"{s}_ci"], f"{where} '{s}_ci'") if r.get(f"{s}_ci") is not None else (None, None)
            mlo, mhi = (_interval(r[f"{s}_mc_ci"], f"{where} '{s}_mc_ci'") if r.get(f"{s}_mc_ci") is not None
                        else (None, None))
            dlo, dhi = (r[f"{s}_diff_ci"] if isinstance(r.get(f"{s}_diff_ci"), list) else (None, None))
            out.append({"method": r.get("method") or r["method_id"], "method_id": r["method_id"],
                        "kind": "floor" if r["method_id"] in ("chance", "cooccurrence") else "method", "split": s,
                        "accuracy": None if acc is None else _number(acc, f"{where} '{s}'", 0, 1),
                        "ci_low": lo, "ci_high": hi,
                        "n": None if r.get(f"{s}_n") is None else _count(r[f"{s}_n"], f"{where} '{s}_n'"),
                        "mc_accuracy": r.get(f"{s}_mc"), "mc_ci_low": mlo, "mc_ci_high": mhi,
                        "diff_vs_std": r.get(f"{s}_diff_vs_std"), "diff_ci_low": dlo, "diff_ci_high": dhi,
                        "derives": r.get(f"{s}_derives"),
                        "derives_ci_low": (r.get(f"{s}_derives_ci") or [None, None])[0],
                        "derives_ci_high": (r.get(f"{s}_derives_ci") or [None, None])[1],
                        "facts_in_knowledge_test": r.get("facts_in_knowledge"),
                        "facts_in_knowledge_train": r.get("train_facts_in_knowledge"),
                        "no_answer_rate": r.get("no_answer_rate"), "prefill_tmacs": r.get("prefill_tmacs"),
                        "prefill_vs_std": r.get("prefill_vs_std")})
    table = pd.DataFrame(out)
    if len(table):
        table["n"] = table["n"].astype("Int64")
    return table


def ablation_table(collected: Collected) -> pd.DataFrame | None:
    """Notebook 06's ``sweeps`` {name: [row, ...]} as one long table (None when 06 did not run)."""
    nb = collected.notebooks.get(ABLATIONS)
    if nb is None:
        return None
    sweeps = nb.results.get("sweeps")
    if not isinstance(sweeps, dict):
        raise DataError(f"{nb.path}: 'sweeps' must be an object {{sweep name: [row, ...]}}, "
                        f"got {type(sweeps).__name__}")
    out = []
    for name, rows in sweeps.items():
        if not isinstance(rows, list):
            raise DataError(f"{nb.path}: sweeps[{name!r}] must be a list of rows")
        for i, r in enumerate(rows):
            where = f"{nb.path}: sweeps[{name!r}][{i}]"
            lacking = [k for k in SWEEP_KEYS if not isinstance(r, dict) or k not in r]
            if lacking:
                raise DataError(f"{where} lacks {lacking}")
            lo, hi = _interval([r["ci_low"], r["ci_high"]], f"{where} ci_low/ci_high")
            out.append({"sweep": str(name), "variant": str(r["variant"]), "value": r["value"],
                        "accuracy": _number(r["accuracy"], f"{where} 'accuracy'", 0, 1), "ci_low": lo, "ci_high": hi,
                        "n": _count(r["n"], f"{where} 'n'"), "split": str(r.get("split") or "all"),
                        "inference_tflops": _optional(r.get("inference_tflops"), f"{where} 'inference_tflops'")})
    return pd.DataFrame(out, columns=["sweep", "variant", "value", "accuracy", "ci_low", "ci_high", "n", "split",
                                      "inference_tflops"])


# -------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """Everything the figures notebook draws, built from one results folder."""
    collected: Collected
    main: pd.DataFrame
    points: pd.DataFrame
    synthetic: pd.DataFrame | None
    ablations: pd.DataFrame | None
    notes: list[str]


def build_report(results_dir) -> Report:
    """Collect a results folder and build every table; notes say what was missing or dropped."""
    collected = collect(results_dir)
    main, notes = main_table(collected)
    return Report(collected, main, flops_points(main), synthetic_table(collected), ablation_table(collected),
                  collected.notes + notes)


def _pair(cell) -> bool:
    """A two-number interval cell such as ``[np.float64(0.15), np.float64(0.425)]``."""
    if not isinstance(cell, (list, tuple, np.ndarray)) or len(cell) != 2:
        return False
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in cell)


def flat_table(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every interval column split into plain numbers: a column whose filled cells are all
    ``[low, high]`` pairs becomes ``<name>_low`` and ``<name>_high`` in its place (``bbh_ci`` gives
    ``bbh_ci_low``/``bbh_ci_high``, the names main_table uses); numpy scalars become Python numbers.
    Written with ``to_csv`` as it is, such a column holds text like "[np.float64(0.15), np.float64(0.425)]",
    which a CSV reader cannot use as numbers."""
    names, columns = [], []
    for col in df.columns:
        values = df[col]
        filled = [v for v in values if isinstance(v, (list, tuple, np.ndarray)) or not pd.isna(v)]
        if filled and all(_pair(v) for v in filled):
            pairs = [v if _pair(v) else (None, None) for v in values]
            for i, side in enumerate(("low", "high")):
                names.append(f"{col}_{side}")
                columns.append(pd.Series([math.nan if q[i] is None else float(q[i]) for q in pairs],
                                         index=df.index, dtype="float64"))
        else:
            names.append(col)
            columns.append(values.map(lambda v: v.item() if isinstance(v, np.generic) else v)
                           if values.dtype == object else values)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"splitting the interval columns would repeat the column(s) {repeated}")
    return pd.DataFrame(dict(zip(names, columns)), index=df.index)


def write_csv(df: pd.DataFrame, path) -> Path:
    """Write a table as CSV with plain numbers in every numeric cell (``flat_table``), without the index."""
    path = Path(path)
    flat_table(df).to_csv(path, index=False)
    return path


def records(df: pd.DataFrame | None) -> list[dict]:
    """JSON-safe records of a table (NaN -> null)."""
    return [] if df is None or df.empty else json.loads(df.to_json(orient="records"))


def write_tables(report: Report, out_dir) -> list[Path]:
    """main_table.csv/.md, accuracy_vs_flops.csv, and synthetic_table.csv / ablations.csv when present."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "main_table.csv", out / "main_table.md", out / "accuracy_vs_flops.csv"]
    write_csv(report.main, paths[0])
    presets = ", ".join(_setup(report)["presets"]) or "preset not recorded"
    paths[1].write_text(main_table_markdown(report.main, report.notes,
                                            title=f"Main results ({presets}; from {_shown_path(report.collected.dir)})"))
    write_csv(report.points, paths[2])
    for name, df in (("synthetic_table", report.synthetic), ("ablations", report.ablations)):
        if df is not None:
            paths.append(write_csv(df, out / f"{name}.csv"))
    return paths


def _setup(report: Report) -> dict:
    """Preset, teacher, tutor, knowledge writer, training items, device and commit from the files."""
    nbs = report.collected.notebooks
    res = lambda stem: nbs[stem].results if stem in nbs else {}  # noqa: E731
    par = lambda stem: nbs[stem].params if stem in nbs else {}  # noqa: E731
    env = next((nb.env for nb in nbs.values() if nb.env), {})
    teach = res("01_teacher_distillation")
    knowledge = res("04_skintern_curriculum").get("knowledge")
    return {"presets": sorted({str(nb.params["preset"]) for nb in nbs.values() if nb.params.get("preset")}),
            "teacher": teach.get("teacher") or par("01_teacher_distillation").get("teacher_backend"),
            "teacher_model": par("01_teacher_distillation").get("teacher_model"),
            "train_items": teach.get("items"), "train_accepted": teach.get("accepted"),
            "tutor": res("02_kb_construction").get("tutor") or res("03_nesycd_training").get("tutor"),
            "writer": knowledge.get("writer") if isinstance(knowledge, dict) else None,
            "device": env.get("device"), "commit": env.get("git_commit")}
