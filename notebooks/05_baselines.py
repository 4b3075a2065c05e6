# %% [markdown]
# # 05 · Baselines: the students NesyCD and SKIntern are compared against
#
# Each baseline is LoRA-fine-tuned on the same rationale dataset (notebook 01) with the same recipe and
# evaluated with the same harness (method.md §5, §6):
#
# | id | method | trains on | answers with |
# |---|---|---|---|
# | `ft` | answer-only FT | question → gold answer | the answer directly |
# | `std` | Std-CoT | question → teacher CoT | a CoT |
# | `mt-cot` | MT-CoT | `[Explanation Generation]` → CoT and `[Answer Prediction]` → answer, loss 0.7/0.3 | the answer directly |
# | `mt-re` | Step-by-step | `Rationale:` → rationale and `Answer:` → answer, loss 0.7/0.3 | the answer directly |
# | `kard` | KARD | retrieved knowledge + question → CoT | a CoT with knowledge retrieved for the test question |
# | `cascod` | CasCoD | question → rationale, then question + rationale → answer, 0.7/0.3 | rationale, then answer |
#
# KARD's passages are BM25 top-3 over the SKIntern knowledge of the training items (D19; the item's own is
# excluded while training), so this notebook reads notebook 04's knowledge when `kard` is in `methods`.

# %% tags=["parameters"]
# parameters
from typing import Optional
preset: str = "adhoc"
run_root: Optional[str] = None
data_dir: Optional[str] = None
seed: int = 42
student: str = "smollm2-135m"
bbh_tasks: Optional[list] = None
train_per_task: Optional[int] = None
gsm8k_train: Optional[int] = None
eval_per_task: dict = {"bbh": None}
train: dict = {}                      # nesylib.training.config.TrainConfig fields, e.g. epochs, lr, per_device_batch
eval_batch_size: int = 16
max_new_tokens: Optional[int] = None  # None: per-task caps (calibration.md); 1024 is the authors' protocol
methods: list = ["base", "ft", "std", "mt-cot", "mt-re", "kard", "cascod"]
kard_k: int = 3                       # KARD: passages per question

# %%
import matplotlib.pyplot as plt
import pandas as pd

from nesylib import report
from nesylib.methods import students
from nesylib.pipeline import experiment, param_model
from nesylib.training.backends import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
ctx = param_model.start("05_baselines", globals())
from nesylib.methods.catalog import check_methods

check_methods(methods, ("base", "ft", "std", "mt-cot", "mt-re", "kard", "kaft", "cascod"))
cfg = students.train_config(train)
train_recs = experiment.load_training_set(ctx)
eval_sets = experiment.select_eval(eval_per_task, bbh_tasks, seed, data_dir)
print(f"backend {backend}; {len(train_recs)} training items; evaluation:",
      {k: len(v) for k, v in eval_sets.items()})

# %%
from nesylib.methods import catalog as mth

lab = mth.Lab(student, cfg, ctx.dir.parent, ctx.dir, batch_size=eval_batch_size, max_new_tokens=max_new_tokens,
              seed=seed)
kard_passages = None
if {"kard", "kaft"} & set(methods):
    kard_passages = experiment.kard_knowledge(ctx, train_recs, k=kard_k)

rows = []
for method in methods:
    if method in ("kard", "kaft"):
        run = mth.kard_method(lab, method, train_recs, eval_sets, kard_passages)
    else:  # stored beside the adapter and keyed by the prompts: Std-CoT = NesyCD's S_P, already scored in 03
        run = mth.plain_method(lab, method, train_recs, eval_sets)
    rows.append(students.result_row(method, run.result, lab.train_metrics.get(method)))
    print(f"{method}: ID avg {rows[-1]['id_avg']}, OOD avg {rows[-1]['ood_avg']}")
table = pd.DataFrame(rows)
report.write_csv(table, ctx.path("baselines.csv"))
table[["method"] + [c for c in table.columns if c in eval_sets] + ["id_avg", "ood_avg", "no_answer_rate"]]

# %% [markdown]
# ## Accuracy with 95% bootstrap confidence intervals

# %%
fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
for i, r in enumerate(rows):
    for j, ds in enumerate(eval_sets):
        lo, hi = r[f"{ds}_ci"]
        ax.errorbar(r[ds], i + 0.12 * (j - len(eval_sets) / 2), xerr=[[r[ds] - lo], [hi - r[ds]]], fmt="o",
                    color=f"C{j}", label=ds if i == 0 else None, capsize=2)
ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
ax.set_xlabel("accuracy")
ax.legend(loc="lower right", fontsize=8)
ax.set_title(f"Baselines, student {student}")
fig.tight_layout()
fig.savefig(ctx.path("baselines.png"), dpi=120)
plt.show()

# %%
ctx.save_results({"rows": rows, "student": student, "backend": backend, "train_config": vars(cfg)})
