"""What each figure shows and cannot show, written from the results' own metadata; saving figure + caption."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from nesylib.data.benchmarks import domain_sets
from nesylib.report.collect import ABLATIONS, FIGURES, SYNTHETIC, _size_of, _student_of, format_size, model_size
from nesylib.report.figures import fig_ablations, fig_accuracy_vs_flops, fig_main_bars, fig_synthetic
from nesylib.report.tables import Report, _pct, _setup, datasets_of


# ----------------------------------------------------------------------------------- captions
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
                "item (prompt prefill plus generation with attention, counted from token numbers by nesylib.evaluation.flops; "
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
