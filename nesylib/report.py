"""Tables, figures and captions of a finished run, read from its notebooks' results.json files alone.

Input layout: ``<dir>/<stem>/results.json`` (with ``params.json`` and ``env.json`` beside it), which is
both a run folder ``results/runs/<preset>/`` and its exported copy ``results/<preset>/``. Nothing here
loads a model or recomputes an accuracy: every number comes from those files, and a notebook whose
results are absent is listed in the report's notes rather than filled in.

* ``main_table``: one row per real-benchmark method (the ``rows`` of 03, 04 and 05; a method found in
  two notebooks keeps the first one in notebook order), accuracy with 95% CIs per dataset, ID/OOD
  averages, no-answer rate and inference FLOPs.
* ``flops_points``: the same methods as (FLOPs per item, ID or OOD accuracy) points, one series per student.
* ``synthetic_table``: notebook 08's rows per split; ``ablation_table``: notebook 06's sweeps.
* ``fig_*`` draw them (matplotlib ``Figure`` objects, no pyplot state); ``caption`` writes what a figure
  shows and cannot show from the results' own metadata; ``draw_all`` saves PNG + caption pairs.
* ``write_csv`` writes any table with plain numbers in its cells (a ``[low, high]`` column becomes
  ``<name>_low`` and ``<name>_high``), so that a CSV reader gets numbers, not list text.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nesylib.data import domain_sets
from nesylib.errors import ConfigError, DataError

MAIN_SOURCES = ("03_nesycd_training", "04_skintern_curriculum", "05_baselines")
ABLATIONS = "06_ablations"
SYNTHETIC = "08_synthetic_benchmark"
# what each notebook contributes here, so a missing one is reported with its consequence
ROLES = {"01_teacher_distillation": "the teacher and training-item counts in captions",
         "02_kb_construction": "the NesyCD tutor in captions", "03_nesycd_training": "the NesyCD row",
         "04_skintern_curriculum": "the SKIntern row", "05_baselines": "the baseline rows",
         ABLATIONS: "the ablation panels", SYNTHETIC: "the synthetic-benchmark table and figure"}
FIGURES = ("accuracy_vs_flops", "main_accuracy", "synthetic_accuracy", "ablations")
SWEEP_KEYS = ("sweep", "variant", "value", "accuracy", "ci_low", "ci_high", "n")
_STEM = re.compile(r"^\d\d_\w+$")
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", re.IGNORECASE)
_Z95 = 1.959964


# ------------------------------------------------------------------------------------ reading
@dataclass
class NotebookResult:
    """One notebook's folder: its results.json and (when present) params.json and env.json."""
    stem: str
    path: Path
    results: dict
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


@dataclass
class Collected:
    """Every finished notebook under a results folder, in notebook order, and what was not there."""
    dir: Path
    notebooks: dict[str, NotebookResult]
    missing: list[str]
    notes: list[str]


def _read_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def collect(results_dir) -> Collected:
    """Read ``<results_dir>/<NN_name>/results.json`` of every notebook except figure notebooks."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results_dir {str(root)!r} is not a folder; expected a run folder "
                          "(results/runs/<preset>) or an exported one (results/<preset>)")
    found, notes = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _STEM.match(p.name) and "figures" not in p.name):
        res = d / "results.json"
        if not res.is_file():
            if (d / "params.json").is_file():
                notes.append(f"{d.name} started but has no results.json (unfinished): left out")
            continue
        extra = {n: _read_object(d / f"{n}.json") if (d / f"{n}.json").is_file() else {} for n in ("params", "env")}
        found[d.name] = NotebookResult(d.name, res, _read_object(res), extra["params"], extra["env"])
    if not found:
        raise ConfigError(f"results_dir {str(root)!r} has no <notebook>/results.json; run the notebooks first "
                          "(python -m nesylib run --preset <name>) or point at results/<preset>")
    missing = [s for s in ROLES if s not in found]
    if missing:
        notes.insert(0, f"not found in {root} (skipped, nothing filled in): "
                        + "; ".join(f"{s} ({ROLES[s]})" for s in missing))
    return Collected(root, found, missing, notes)


def _number(value, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DataError(f"{where} must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(f"{where} = {value!r} is outside [{lo}, {hi}]")
    return float(value)


def _optional(value, where: str) -> float:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return math.nan if missing else _number(value, where)


def _count(value, where: str) -> int:
    v = _number(value, where, lo=0)
    if v != int(v):
        raise DataError(f"{where} must be a whole item count, got {value!r}")
    return int(v)


def _interval(value, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(f"{where} must be [low, high], got {value!r}")
    lo, hi = (_number(v, where, 0, 1) for v in value)
    if lo > hi:
        raise DataError(f"{where} = {value!r}: low above high")
    return lo, hi


# ------------------------------------------------------------------------------- model sizes
def model_size(name: str | None) -> float | None:
    """Parameters of a student from its name ("smollm2-135m" -> 1.35e8; aliases of models.PAPER_STUDENTS
    resolve to their hub ids first); None when the name states no size."""
    if not name:
        return None
    from nesylib.models import PAPER_STUDENTS

    m = _SIZE.search(PAPER_STUDENTS.get(name, str(name)))
    if not m:
        return None
    return float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6)


def format_size(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "size unknown"
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _student_of(row: dict, nb: NotebookResult) -> str:
    return str(row.get("student") or nb.results.get("student") or nb.params.get("student") or "unknown")


def _size_of(row: dict, nb: NotebookResult, student: str) -> float:
    stored = row.get("student_params") or nb.results.get("student_params")
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return float(stored)
    size = model_size(student)
    return math.nan if size is None else size


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
    from nesylib.runs import REPO_ROOT

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
            "errors). Inference FLOPs: mean over all evaluated items, prompt and generation (nesylib.flops)."]
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


# ------------------------------------------------------------------------------------ figures
def _figure(w: float, h: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no backend switch

    fig = Figure(figsize=(w, h))
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _yerr(acc, lo, hi) -> np.ndarray:
    acc, lo, hi = (np.asarray(pd.to_numeric(pd.Series(v), errors="coerce"), dtype=float) for v in (acc, lo, hi))
    return np.nan_to_num(np.clip([acc - lo, hi - acc], 0, None))


def _label_clusters(xs, ys, labels, dx: float = 0.03, dy: float = 0.03):
    """One label per group of points that would print on top of each other (log-x distance < dx decades,
    accuracy distance < dy): the methods of a group are listed together, one per line."""
    pts = sorted(zip(np.log10(np.asarray(xs, dtype=float)), np.asarray(ys, dtype=float), labels))
    groups: list[list] = []
    for p in pts:
        for g in groups:
            if abs(p[0] - g[0][0]) < dx and abs(p[1] - g[0][1]) < dy:
                g.append(p)
                break
        else:
            groups.append([p])
    return [(10 ** g[0][0], g[0][1], "\n".join(str(p[2]) for p in g)) for g in groups]


def fig_accuracy_vs_flops(points: pd.DataFrame, flops: str = "inference"):
    """Accuracy (95% CI) against FLOPs per item on a log axis, one panel per split, one colour per student."""
    col = {"inference": "inference_flops_per_item", "prefill": "prefill_macs_per_item"}.get(flops)
    if col is None:
        raise ValueError(f"flops={flops!r}; choose 'inference' or 'prefill'")
    pts = points[pd.to_numeric(points[col], errors="coerce") > 0]
    if pts.empty:
        raise ValueError(f"no point has a positive {col}: nothing to draw")
    splits = [s for s in ("ID", "OOD") if s in set(pts.split)]
    students = list(dict.fromkeys(pts.student))
    fig, axes = _figure(5.6 * len(splits), 4.4, 1, len(splits))
    for ax, split in zip(axes, splits):
        for j, st in enumerate(students):
            d = pts[(pts.split == split) & (pts.student == st)]
            if d.empty:
                continue
            ax.errorbar(d[col], d.accuracy, yerr=_yerr(d.accuracy, d.ci_low, d.ci_high), fmt="o", capsize=3,
                        color=f"C{j}", label=f"{st} ({format_size(d.student_params.iloc[0])})")
            for x, y, label in _label_clusters(d[col], d.accuracy, d.method):
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(("inference FLOPs" if flops == "inference" else "prefill MACs") + " per evaluated item (log)")
        ax.set_ylabel(f"{split} average accuracy (95% CI)")
        ax.set_title(f"{split} accuracy vs {flops} compute")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="student", title_fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def fig_main_bars(table: pd.DataFrame):
    """ID and OOD average accuracy per method, bars with approximate 95% CIs."""
    if table.empty:
        raise ValueError("the main table is empty: nothing to draw")
    several = table.student.nunique() > 1
    labels = [f"{m}\n({s})" if several else m for m, s in zip(table.method, table.student)]
    x = np.arange(len(table))
    fig, (ax,) = _figure(max(6.0, 0.9 * len(table) + 2), 4.2)
    for k, (name, key) in enumerate((("ID average", "id"), ("OOD average", "ood"))):
        ok = table[f"{key}_avg"].notna().to_numpy()
        d = table[ok]
        ax.bar(x[ok] + (k - 0.5) * 0.38, d[f"{key}_avg"], width=0.38, color=f"C{k}", label=name,
               yerr=_yerr(d[f"{key}_avg"], d[f"{key}_ci_low"], d[f"{key}_ci_high"]), capsize=3)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (approx. 95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Main results: ID and OOD averages")
    fig.tight_layout()
    return fig


def fig_synthetic(table: pd.DataFrame):
    """Synthetic benchmark accuracy per method (95% CI), one panel per split; chance as a dotted line."""
    methods = table[(table.kind == "method") & table.accuracy.notna()]
    if methods.empty:
        raise ValueError("the synthetic table has no method accuracy: nothing to draw")
    splits = list(dict.fromkeys(methods.split))
    names = list(dict.fromkeys(methods.method))
    fig, axes = _figure(5.2 * len(splits), 0.45 * len(names) + 2, 1, len(splits))
    for ax, s in zip(axes, splits):
        d = methods[methods.split == s].set_index("method").reindex(names)
        ys = np.arange(len(names))
        ax.errorbar(d.accuracy, ys, xerr=_yerr(d.accuracy, d.ci_low, d.ci_high), fmt="o", capsize=3)
        chance = table[(table.method_id == "chance") & (table.split == s)].accuracy.dropna()
        if len(chance):
            ax.axvline(float(chance.iloc[0]), ls=":", color="grey", label="chance")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_yticks(ys, names)
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy (95% CI)")
        ns = d.n.dropna().unique()
        ax.set_title(f"{s}" + (f" (n={int(ns[0])})" if len(ns) == 1 else ""))
    fig.tight_layout()
    return fig


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def fig_ablations(table: pd.DataFrame):
    """One panel per sweep: accuracy (95% CI) against the swept value (numeric axis) or variant, per split."""
    if table.empty:
        raise ValueError("the ablation table is empty: nothing to draw")
    sweeps = list(dict.fromkeys(table.sweep))
    ncols = min(3, len(sweeps))
    nrows = math.ceil(len(sweeps) / ncols)
    fig, axes = _figure(4.6 * ncols, 3.6 * nrows, nrows, ncols)
    for ax, name in zip(axes, sweeps):
        d = table[table.sweep == name]
        numeric = _numeric(d.value)
        variants = list(dict.fromkeys(d.variant))
        splits = list(dict.fromkeys(d.split))
        for j, s in enumerate(splits):
            e = d[d.split == s]
            if numeric:
                e = e.sort_values("value")
                xs = e.value.astype(float).to_numpy()
            else:
                xs = np.array([variants.index(v) for v in e.variant]) + 0.1 * (j - (len(splits) - 1) / 2)
            ax.errorbar(xs, e.accuracy, yerr=_yerr(e.accuracy, e.ci_low, e.ci_high), fmt="o-" if numeric else "o",
                        capsize=3, color=f"C{j}", label=s)
        if not numeric:
            ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        else:
            ax.set_xticks(sorted(set(d.value.astype(float))))
            ax.set_xlabel("value")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_title(name)
        if len(splits) > 1:
            ax.legend(fontsize=8)
    for ax in axes[len(sweeps):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- captions
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


def _setup_text(report: Report, students: dict[str, float], synthetic: bool = False) -> str:
    s = _setup(report)
    parts = [f"preset {', '.join(s['presets'])}" if s["presets"] else "preset not recorded",
             "student " + ", ".join(f"`{k}` ({_params_text(v)})" for k, v in students.items())]
    if synthetic:
        parts.append("teacher: the programmatic SynthTeacher of nesylib.synth (rationales, error analyses and "
                     "knowledge for training questions only)")
    else:
        parts.append(f"teacher `{s['teacher']}`" + (f" (model {s['teacher_model']})" if s["teacher_model"] else "")
                     if s["teacher"] else "teacher not recorded (01_teacher_distillation missing)")
        if s["train_items"] is not None:
            parts.append(f"{s['train_accepted']} of {s['train_items']} training questions kept a teacher rationale")
        if s["tutor"]:
            parts.append(f"NesyCD tutor `{s['tutor']}`")
        if s["writer"]:
            parts.append(f"SKIntern knowledge writer `{s['writer']}`")
    if s["device"]:
        parts.append(f"run on {s['device']}" + (f", commit {s['commit']}" if s["commit"] else ""))
    return "; ".join(parts) + "."


def _params_text(size: float | None) -> str:
    known = size is not None and not math.isnan(size)
    return f"{format_size(size)} parameters" if known else "parameter count not stated in its name"


def _paper_sizes() -> tuple[float, float]:
    from nesylib.models import PAPER_STUDENTS

    sizes = [model_size(v) for v in PAPER_STUDENTS.values()]
    sizes = [x for x in sizes if x]
    return min(sizes), max(sizes)


def _scale_text(students: dict[str, float]) -> str:
    lo, hi = _paper_sizes()
    out = []
    for name, size in students.items():
        if size is None or math.isnan(size):
            out.append(f"`{name}` states no parameter count, so its scale cannot be compared with the papers' "
                       f"students ({format_size(lo)}–{format_size(hi)})")
        elif size < lo:
            out.append(f"`{name}` ({format_size(size)}) is smaller than every student of the papers "
                       f"({format_size(lo)}–{format_size(hi)}): the numbers show the pipeline and the compute "
                       "mechanism at this scale, not the papers' accuracy claims")
        else:
            out.append(f"`{name}` ({format_size(size)}) is within the papers' student range "
                       f"({format_size(lo)}–{format_size(hi)})")
    return "; ".join(out) + "."


def _overlap_text(rows: list[tuple[str, float, float, float]], what: str, noun: str = "method") -> str:
    """Which pairs of (label, accuracy, low, high) have disjoint intervals."""
    rows = [r for r in rows if not any(pd.isna(v) for v in r[1:])]
    if len(rows) < 2:
        return f"{what}: fewer than two {noun}s with an interval, nothing to compare."
    apart = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:] if a[2] > b[3] or b[2] > a[3]]
    pairs = len(rows) * (len(rows) - 1) // 2
    if not apart:
        who = f"both {noun}s" if len(rows) == 2 else f"all {len(rows)} {noun}s"
        return f"{what}: the intervals of {who} overlap, so these items support no ranking of them."
    shown = [f"{a[0]} {'>' if a[1] > b[1] else '<'} {b[0]}" for a, b in apart[:6]]
    rest = "" if len(apart) == pairs else "; all other differences are within the intervals"
    return (f"{what}: {len(apart)} of {pairs} {noun} pairs have disjoint intervals ({'; '.join(shown)}"
            f"{'; …' if len(apart) > 6 else ''}){rest}.")


def _precision_text(lows, highs, ns, unit: str = "per-set accuracy") -> str:
    half = (np.asarray(highs, dtype=float) - np.asarray(lows, dtype=float)) / 2
    half = half[~np.isnan(half)]
    ns = [int(n) for n in ns if not pd.isna(n)]
    if not len(half) or not ns:
        return ""
    n_text = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)} to {max(ns)}"
    text = f"Each {unit} rests on {n_text} items; "
    if np.median(half) == 0:  # a bootstrap of all-wrong (or all-right) answers has no spread
        return text + ("most intervals have zero width because every answer in the set was scored the same; "
                       "that reflects the few items, not certainty.")
    return text + (f"the median 95% interval is ±{100 * np.median(half):.1f} points, so smaller differences "
                   "cannot be read from it.")


def _main_data_text(table: pd.DataFrame) -> str:
    parts = []
    for d in datasets_of(table):
        ns = sorted(table[f"{d}_n"].dropna().unique())
        parts.append(f"{d}: {int(ns[0])} items" if len(ns) == 1 else f"{d}: {int(ns[0])}–{int(ns[-1])} items")
    items = sorted(table["items"].dropna().unique())
    total = f"{int(items[0])}" if len(items) == 1 else f"{int(items[0])}–{int(items[-1])}"
    sources = ", ".join(dict.fromkeys(table.notebook))
    return (f"Evaluation slices per method: {'; '.join(parts)} ({total} in all). {_plural(len(table), 'method')}, "
            f"rows from {sources}. ID = {', '.join(domain_sets()[0])}; OOD = {', '.join(domain_sets()[1])} "
            f"(those present).")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _students(df: pd.DataFrame) -> dict[str, float]:
    return {st: float(g.student_params.iloc[0]) for st, g in df.groupby("student", sort=False)}


def caption(name: str, report: Report) -> str:
    """Markdown caption of figure ``name`` (one of FIGURES), every number taken from the report."""
    if name not in FIGURES:
        raise ValueError(f"caption name={name!r}; choose one of {FIGURES}")
    if name == "synthetic_accuracy":
        return _synthetic_caption(report)
    if name == "ablations":
        return _ablation_caption(report)
    t = report.main
    students = _students(t)
    ds = datasets_of(t)
    lows = [v for d in ds for v in t[f"{d}_ci_low"]]
    highs = [v for d in ds for v in t[f"{d}_ci_high"]]
    ns = [v for d in ds for v in t[f"{d}_n"]]
    overlap = " ".join(_overlap_text(list(zip(t.method, t[f"{k}_avg"], t[f"{k}_ci_low"], t[f"{k}_ci_high"])),
                                     f"{k.upper()} average") for k in ("id", "ood"))
    if name == "accuracy_vs_flops":
        panels = " and ".join(dict.fromkeys(report.points.split))
        head = (f"**Accuracy against inference compute.** Each point is one method: its {panels} average accuracy "
                "(one panel each) with an approximate 95% interval, against its mean inference FLOPs per evaluated "
                "item (prompt prefill plus generation with attention, counted from token numbers by nesylib.flops; "
                "log axis; the mean runs over all evaluated sets). One colour per student.")
        can = ("which methods spend more compute per question on these very items: FLOPs are counted, not timed, "
               "so their differences carry no sampling noise and come from prompt length (retrieved knowledge, "
               "demonstrations) and answer length.")
        extra = (" Only one student was run, so the plot says nothing about how accuracy scales with model size."
                 if len(students) == 1 else "")
    else:
        head = ("**Main results.** ID and OOD average accuracy per method (bars), with approximate 95% intervals "
                "combined from the per-dataset bootstrap intervals; main_table.md lists every dataset.")
        can = "each method's accuracy on these slices and how uncertain it is."
        extra = ""
    return "\n\n".join([
        head, f"*Setup.* {_setup_text(report, students)}", f"*Data.* {_main_data_text(t)}",
        f"*What it can show:* {can}",
        f"*What it cannot show:* {_precision_text(lows, highs, ns)} {overlap} {_scale_text(students)}{extra}",
    ] + ([f"*Notes.* {'; '.join(report.notes)}."] if report.notes else [])) + "\n"


def _paired_text(methods: pd.DataFrame) -> str:
    """The paired differences against Std-CoT (same items) whose 95% interval excludes zero."""
    d = methods[methods.diff_vs_std.notna() & methods.diff_ci_low.notna() & methods.diff_ci_high.notna()]
    if d.empty:
        return ""
    apart = [f"{r.method} {100 * r.diff_vs_std:+.1f} points [{100 * r.diff_ci_low:+.1f}, {100 * r.diff_ci_high:+.1f}] "
             f"on {r.split}" for r in d.itertuples() if r.diff_ci_low > 0 or r.diff_ci_high < 0]
    if not apart:
        return ("Paired against Std-CoT on the same items, every method's difference has a 95% interval that "
                "includes zero.")
    return (f"Paired against Std-CoT on the same items (a finer test than overlapping intervals), these differences "
            f"exclude zero at 95%: {'; '.join(apart)}; the other {len(d) - len(apart)} include it.")


def _prefill_text(methods: pd.DataFrame) -> str:
    """Prompt cost per method relative to Std-CoT's question-only prompt on the same items."""
    cost = {r.method_id: (r.method, r.prefill_tmacs) for r in methods.drop_duplicates("method_id").itertuples()
            if not pd.isna(r.prefill_tmacs) and r.prefill_tmacs > 0}
    if "std" not in cost or len(cost) < 2:
        return ""
    base = cost["std"][1]
    parts = [f"{label} {v / base:.2f}x" for mid, (label, v) in cost.items() if mid != "std"]
    return (f"*Compute.* Prefill MACs of the evaluated prompts relative to Std-CoT's question-only prompt on the "
            f"same items: {', '.join(parts)}.")


def _synthetic_caption(report: Report) -> str:
    nb = report.collected.notebooks[SYNTHETIC]
    t = report.synthetic
    student = _student_of({}, nb)
    students = {student: _size_of({}, nb, student)}
    m = t[(t.kind == "method") & t.accuracy.notna()]
    bench = nb.results.get("benchmark") or {}
    sizes = bench.get("sizes") or {}
    per_split = "; ".join(f"{s}: {', '.join(str(int(n)) for n in sorted(m[m.split == s].n.dropna().unique()))} "
                          f"items evaluated" for s in dict.fromkeys(m.split))
    data = [f"Generated benchmark (synth_config {nb.params.get('synth_config', 'not recorded')!r})"]
    if sizes:
        data.append("split sizes " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    if bench.get("facts_in_train") is not None:
        data.append(f"{bench['facts_in_train']} facts stated in training, each in "
                    f"{bench.get('mean_train_exposure')} training questions on average")
    data.append(per_split)
    chance = t[t.method_id == "chance"]
    floors = "; ".join(f"chance on {r.split}: {_pct(r.accuracy)}%" for r in chance.itertuples()
                       if not pd.isna(r.accuracy))
    overlap = " ".join(_overlap_text(list(zip(e.method, e.accuracy, e.ci_low, e.ci_high)), f"{s} split")
                       for s, e in m.groupby("split", sort=False))
    compute = _prefill_text(m)
    return "\n\n".join([
        f"**Synthetic knowledge-sparse benchmark.** Accuracy per method with 95% bootstrap intervals, one panel per "
        f"split (ood uses question templates unseen in training); dotted line: chance ({floors or 'not recorded'}).",
        f"*Setup.* {_setup_text(report, students, synthetic=True)}", f"*Data.* {'; '.join(data)}.",
        "*What it can show:* whether a method answers from facts it could only have absorbed in training or been "
        "handed at test time: the world is invented, so no pretrained model knows any of its facts.",
        f"*What it cannot show:* {_precision_text(m.ci_low, m.ci_high, m.n, 'per-split accuracy')} {overlap} "
        f"{_paired_text(m)} {_scale_text(students)} Results on an invented world need not transfer to the real "
        "benchmarks.",
    ] + ([compute] if compute else [])) + "\n"


def _ablation_caption(report: Report) -> str:
    nb = report.collected.notebooks[ABLATIONS]
    t = report.ablations
    student = _student_of({}, nb)
    students = {student: _size_of({}, nb, student)}
    sweeps, overlaps = [], []
    for name, d in t.groupby("sweep", sort=False):
        ns = sorted(d.n.unique())
        n_text = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        sweeps.append(f"{name}: {', '.join(dict.fromkeys(d.variant))} ({n_text} items each)")
        for s, e in d.groupby("split", sort=False):
            overlaps.append(_overlap_text(list(zip(e.variant, e.accuracy, e.ci_low, e.ci_high)),
                                          f"{name}" + ("" if s == "all" else f" ({s})"), "variant"))
    return "\n\n".join([
        "**Ablations.** One panel per sweep: accuracy with 95% intervals for each variant (a line over numeric "
        "values; split series where the sweep records them).",
        f"*Setup.* {_setup_text(report, students, synthetic=True)} Each variant differs from notebook 08's run "
        f"in the swept factor only.", f"*Data.* synthetic benchmark (notebook 08's evaluation items); "
        f"{'; '.join(sweeps)}.",
        "*What it can show:* how far each knob moves accuracy on these items, relative to the interval widths.",
        f"*What it cannot show:* {_precision_text(t.ci_low, t.ci_high, t.n, 'variant accuracy')} {' '.join(overlaps)} "
        f"{_scale_text(students)}",
    ]) + "\n"


def save_figure(fig, out_dir, name: str, text: str) -> list[Path]:
    """Write ``<name>.png`` and its caption ``<name>.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png, md = out / f"{name}.png", out / f"{name}.md"
    fig.savefig(png, dpi=120)
    md.write_text(f"![{name}]({name}.png)\n\n{text}")
    return [png, md]


def draw_all(report: Report, out_dir) -> dict[str, tuple[object, list[Path]]]:
    """Draw and save every figure the results allow: {name: (figure, [png, md])}; a skipped one adds a note."""
    todo = []
    if report.main.empty:
        report.notes.append("no main-table rows (03/04/05 missing): accuracy_vs_flops and main_accuracy skipped")
    else:
        if (pd.to_numeric(report.points.inference_flops_per_item, errors="coerce") > 0).any():
            todo.append(("accuracy_vs_flops", lambda: fig_accuracy_vs_flops(report.points)))
        else:
            report.notes.append("no method recorded inference FLOPs: accuracy_vs_flops skipped")
        todo.append(("main_accuracy", lambda: fig_main_bars(report.main)))
    if report.synthetic is not None:
        todo.append(("synthetic_accuracy", lambda: fig_synthetic(report.synthetic)))
    if report.ablations is not None and not report.ablations.empty:
        todo.append(("ablations", lambda: fig_ablations(report.ablations)))
    return {name: (fig, save_figure(fig, out_dir, name, caption(name, report)))
            for name, fig in ((name, make()) for name, make in todo)}
