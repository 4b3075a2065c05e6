# %% [markdown]
# # 07 · Main table, accuracy against inference FLOPs, and every figure with its caption
#
# This notebook trains and evaluates nothing. It reads the `results.json` files the other notebooks wrote
# (`nesylib.report`) and redraws them:
#
# * **Main table** (`main_table.csv`, `main_table.md`): one row per method from notebooks 03 (NesyCD),
#   04 (SKIntern) and 05 (baselines), accuracy per dataset with 95% bootstrap intervals, ID/OOD averages,
#   no-answer rate and inference FLOPs per item. A method reported by two notebooks keeps the first one.
# * **Accuracy vs inference FLOPs** (`accuracy_vs_flops.png`): the efficiency claim of SKIntern, one series per
#   student.
# * **Synthetic benchmark** (from 08) and **ablation sweeps** (from 06), when those notebooks ran.
#
# Every figure is saved with a caption `<name>.md` written from the results' own metadata (preset, student,
# teacher, item counts) that says what the numbers can and cannot show. A notebook whose results are missing is
# listed, never filled in.
#
# `results_dir = None` reads the run folder this notebook belongs to (run last by `python -m nesylib run`);
# a path such as `"../results/cpu"` redraws the committed results without rerunning anything.

# %% tags=["parameters"]
# parameters
from typing import Optional
preset: str = "adhoc"
run_root: Optional[str] = None
seed: int = 42
results_dir: Optional[str] = None  # None: this preset's run folder; or a folder such as ../results/cpu
student: str = "smollm2-135m"      # recorded only: the students come from the results

# %%
from pathlib import Path

from IPython.display import Image, Markdown, display

from nesylib import report
from nesylib.pipeline import param_model

ctx = param_model.start("07_flops_and_figures", globals())
source = Path(results_dir).resolve() if results_dir else ctx.dir.parent
rep = report.build_report(source)
if not results_dir:  # this run's folders: their files are hashed into done.json, so an edited one re-runs 07
    for nb in rep.collected.notebooks.values():
        ctx.record_read(nb.path.parent)
print(f"reading {source}")
print("found:", ", ".join(rep.collected.notebooks))
for note in rep.notes:
    print("note:", note)

# %% [markdown]
# ## Main table (accuracy %, 95% bootstrap intervals)

# %%
tables = report.write_tables(rep, ctx.dir)
display(Markdown(ctx.path("main_table.md").read_text()))

# %% [markdown]
# ## Figures (each saved as PNG with its caption)

# %%
figures = report.draw_all(rep, ctx.dir)
for name, (fig, paths) in figures.items():
    display(Image(filename=str(paths[0])))  # the saved PNG itself
    display(Markdown(paths[1].read_text().split("\n", 2)[2]))  # the caption, without the image link
if not figures:
    print("no figure could be drawn from these results")

# %% [markdown]
# ## FLOPs per item against the cheapest method

# %%
pts = rep.main[["method", "student", "inference_flops_per_item", "prefill_macs_per_item", "id_avg", "ood_avg"]]
if len(pts) and pts.inference_flops_per_item.notna().any():
    pts = pts.assign(flops_vs_cheapest=pts.inference_flops_per_item / pts.inference_flops_per_item.min())
pts

# %%
ctx.save_results({
    "results_dir": str(source), "inputs": {stem: str(nb.path) for stem, nb in rep.collected.notebooks.items()},
    "missing": rep.collected.missing, "notes": rep.notes,
    "source_presets": sorted({str(nb.params["preset"]) for nb in rep.collected.notebooks.values()
                           if nb.params.get("preset")}),
    "main_table": report.records(rep.main), "flops_points": len(rep.points),
    "synthetic_rows": report.records(rep.synthetic),
    "ablation_sweeps": ({} if rep.ablations is None else rep.ablations.groupby("sweep").size().to_dict()),
    "tables": [p.name for p in tables], "figures": {k: [p.name for p in v[1]] for k, v in figures.items()}})
