# %% [markdown]
# # 00 · Data: the pinned benchmarks as records
#
# Loads every benchmark of the papers from the pinned files (the data directory, `$NESYLIB_DATA_DIR`,
# or a checksum-verified download), converts them into one record schema, and shows counts per
# dataset, split and task. BBH gets the project's seeded per-task 80/20 split (method.md D1), read
# from the versioned manifest `nesylib/data/splits/bbh_split_v1.json`. A dataset of your own, defined in the
# preset's `datasets:` section (README, "Your own dataset"), is listed in `datasets` by its name.

# %% tags=["parameters"]
# parameters
from typing import Optional
preset: str = "adhoc"
run_root: Optional[str] = None
data_dir: Optional[str] = None  # None: $NESYLIB_DATA_DIR, else download the pinned files into the cache
seed: int = 42
datasets: list = ["bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus"]  # and any configured dataset's name

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nesylib.data import benchmarks
from nesylib.pipeline import param_model

ctx = param_model.start("00_data", globals())
unknown = sorted(set(datasets) - set(benchmarks.known_datasets()))
if unknown:
    raise ValueError(f"parameter 'datasets' has unknown names {unknown}; allowed: {benchmarks.known_datasets()}")

# %%
records = []
for name in datasets:
    for split in benchmarks.dataset_splits(name):
        records += benchmarks.load_dataset_records(name, split, data_dir=data_dir)
df = pd.DataFrame([{k: r[k] for k in ("dataset", "task", "split")} for r in records])
by_set = df.groupby(["dataset", "split"]).size().unstack(fill_value=0)
by_set

# %% [markdown]
# ## BBH: items per task and split

# %%
bbh = df[df.dataset == "bbh"].groupby(["task", "split"]).size().unstack(fill_value=0)
if "bbh" in datasets:
    sizes = {t: len(benchmarks._bbh_examples(t, data_dir)) for t in benchmarks.BBH_TASKS}
    assert benchmarks.compute_bbh_split(sizes) == {t: sorted(v) for t, v in benchmarks.bbh_split().items()}, \
        "the BBH split manifest no longer matches its rule"
bbh

# %%
if len(bbh):
    fig, ax = plt.subplots(figsize=(9, 6))
    plot_df = bbh.reset_index().melt(id_vars="task", var_name="split", value_name="items")
    sns.barplot(data=plot_df, y="task", x="items", hue="split", ax=ax)
    ax.set_title("BBH items per task (seeded 80/20 split, D1)")
    fig.tight_layout()
    fig.savefig(ctx.path("bbh_split.png"), dpi=120)
    plt.show()
else:
    print("BBH is not among the selected datasets")

# %% [markdown]
# ## A record of each dataset

# %%
seen = set()
for r in records:
    if r["dataset"] not in seen:
        seen.add(r["dataset"])
        print(f"--- {r['uid']} (gold {r['answer']!r})\n{r['question'][:300]}\n")

# %%
results = {
    "counts": {f"{d}/{s}": int(n) for (d, s), n in by_set.stack().items() if n},
    "bbh_train": int(bbh.get("train", pd.Series()).sum()), "bbh_test": int(bbh.get("test", pd.Series()).sum()),
    "bbh_tasks": len(bbh),
}
ctx.save_results(results)
results
