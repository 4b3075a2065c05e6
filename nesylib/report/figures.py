"""The report's figures: matplotlib Figure objects (no pyplot state) drawn from its tables."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nesylib.report.collect import format_size


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
