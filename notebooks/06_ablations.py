# %% [markdown]
# # 06 · Ablations: one factor at a time around notebook 08's configuration
#
# The papers' ablations, run on the knowledge-sparse synthetic benchmark (notebook 08), where a CPU-sized
# student can show a mechanism at all (calibration.md: BBH slices cannot separate methods at 135M):
#
# | sweep | what varies | what stays | cost |
# |---|---|---|---|
# | `k` | NesyCD: KB entries inserted at test time (0 = P-STD, the question alone) | the S_E student of 08 | evaluation only |
# | `train_size` | Std-CoT: share of the training questions (seeded, per task) | recipe, epochs | one training per share |
# | `schedule` | SKIntern: decay shape (linear, exponential, step) and number of stages T | knowledge, demos, step budget | one training per variant |
# | `content` | SKIntern: knowledge only (no demos) or demos only (no knowledge) | schedule, step budget | one training per variant |
#
# This notebook runs **after** 08 (`nesylib.pipeline.runner.RUN_AFTER`): it reads 08's parameters, benchmark,
# knowledge and knowledge base, so every variant differs from 08's run in the swept factor only; the variant
# equal to 08's configuration reuses 08's cached adapter and, where its prompts match too, 08's stored answers.
# Every sweep is a list parameter; an empty list skips it.

# %% tags=["parameters"]
# parameters
from typing import Optional
preset: str = "adhoc"
run_root: Optional[str] = None
seed: int = 42
student: str = "smollm2-135m"
eval_batch_size: int = 16
k_values: list = [0, 1, 2, 3]             # NesyCD: KB entries inserted per question; 0 is P-STD
train_fractions: list = [0.25, 0.5, 1.0]  # Std-CoT: share of the training questions per task
schedules: list = [["linear", 6], ["exponential", 6], ["step", 6], ["linear", 3]]  # SKIntern: [kind, T]
content_variants: list = ["knowledge_only", "examples_only"]  # SKIntern at 08's schedule

# %%
import json
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nesylib.methods import students
from nesylib.pipeline import param_model
from nesylib.training.backends import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
from nesylib import synth
from nesylib.synth import ablations as ab
from nesylib.synth import experiment as sx

ctx = param_model.start("06_ablations", globals())
sweeps = ab.check_sweeps(k_values, train_fractions, schedules, content_variants)
src = ctx.upstream("08_synthetic_benchmark")
base = ab.base_config(src, student)
cfg = students.train_config({**base["train"], **base["train_overrides"]})
t_start = time.time()
print(f"backend {backend}; 08's configuration: " + json.dumps({k: base[k] for k in (
    "synth_config", "eval_per_task_synth", "stages_T", "max_demos", "compressor", "k_retrieve", "k_insert")}))

# %% [markdown]
# ## The benchmark, knowledge and knowledge base of notebook 08

# %%
from transformers import AutoTokenizer

from nesylib.methods.curriculum import Schedule
from nesylib.knowledge.kb import KnowledgeBase
from nesylib.models import resolve_model
from nesylib.methods import catalog as mth
from nesylib.methods.nesycd import retrieved_knowledge

bench = synth.load_benchmark(src / "benchmark")
world = synth.load_world(src / "benchmark")
teacher = synth.SynthTeacher(world)
train_rows = synth.rationale_records(bench["train"], teacher)
evals = sx.eval_records(bench, base["eval_per_task_synth"], base["seed"])
tok = AutoTokenizer.from_pretrained(resolve_model(student))
spec = sx.synth_task_spec(train_rows, tok)
knowledge = ab.read_knowledge(src / "knowledge.jsonl") if sweeps["schedule"] or sweeps["content"] else {}
kb = KnowledgeBase.load(src / "nesycd" / "kb.jsonl") if sweeps["k"] else None
print(f"{len(train_rows)} training questions, {len(evals)} evaluated items, "
      f"{len(knowledge)} knowledge texts, {len(kb) if kb is not None else 0} KB entries")
eval_sets = {"synth": evals}
lab = mth.Lab(student, cfg, ctx.dir.parent, ctx.dir, specs={"synth": spec}, batch_size=eval_batch_size,
              max_new_tokens=base["max_new_tokens"], seed=base["seed"])
timing, rows = lab.timing, []


def add_rows(sweep, variant, value, method, result):
    rows.extend(ab.sweep_rows(sweep, variant, value, sx.item_rows(method, result.rows, evals, world), result.summary))

# %% [markdown]
# ## k: how many knowledge-base entries NesyCD inserts at test time
#
# S_E is 08's student (trained on its own KB analyses, D14); only the test-time prompt changes. `k = 0` inserts
# nothing (the prompt is P-STD), which asks how much of S_E's accuracy comes from the retrieved knowledge.

# %%
if sweeps["k"]:
    se_adapter = mth.nesycd_fit(lab, mth.nesycd_examples(
        train_rows, kb, base["k_retrieve"], base["k_insert"], base["se_train_knowledge"], base["se_keep_own"],
        base["kb_index_text"], seed=base["seed"]), len(train_rows), base.get("se_step_budget", "own"))
    k_retrieve = max(max(sweeps["k"]), base["k_retrieve"])
    for k in sweeps["k"]:
        inserted = retrieved_knowledge(evals, kb, k_retrieve=k_retrieve, k_insert=k) if k else {}
        res = lab.score("nesycd", se_adapter, eval_sets, lambda r: inserted.get(r["uid"], ab.NO_KNOWLEDGE),
                        name=f"k-k={k}")
        add_rows("k", f"k={k}", k, "nesycd", res)

# %% [markdown]
# ## Training-data size: Std-CoT on a seeded share of the training questions of every task

# %%
for frac in sweeps["train_size"]:
    subset = ab.fraction_per_task(train_rows, frac, base["seed"])
    res = mth.plain_method(lab, "std", subset, eval_sets)
    add_rows("train_size", f"{frac:g} ({len(subset)} questions)", frac, "std", res.result)

# %% [markdown]
# ## SKIntern: schedule shape and number of stages; knowledge only vs demonstrations only
#
# Every variant gets the same step budget as 08's SKIntern (the Std-CoT steps, D17) and answers from the question
# alone. `knowledge_only` shows no demonstrations at any stage; `examples_only` shows the stage's demonstrations
# but no knowledge.

# %%
if sweeps["schedule"] or sweeps["content"]:
    from nesylib.methods.compress import make_compressor
    comp = make_compressor(base["compressor"], model_name=student)
    variants = [(f"{kind}, T={T}", "schedule", Schedule(T=T, kind=kind, max_demos=base["max_demos"]), knowledge)
                for kind, T in sweeps["schedule"]]
    own = Schedule(T=base["stages_T"], kind="linear", max_demos=base["max_demos"])
    variants += [(v, "content", Schedule(T=own.T, kind=own.kind, max_demos=0) if v == "knowledge_only" else own,
                  knowledge if v == "knowledge_only" else {}) for v in sweeps["content"]]
    stage_reports = {}
    for variant, sweep, schedule, know in variants:
        res = mth.skintern_method(lab, train_rows, know, eval_sets, schedule, comp, cfg.cutoff_len)
        stage_reports[variant] = res.info["stages"]
        add_rows(sweep, variant, variant, "skintern", res.result)
    del comp

# %% [markdown]
# ## Results: accuracy with 95% bootstrap CIs (test and ood together, and per split)

# %%
table = pd.DataFrame(rows)
if len(table):
    table.to_csv(ctx.path("ablations.csv"), index=False)
    display(table[table.split == "all"][["sweep", "variant", "accuracy", "ci_low", "ci_high", "n",
                                         "inference_tflops"]])
    sx_md = sx.markdown_table(json.loads(table[table.split == "all"].round(4).to_json(orient="records")),
                              ["sweep", "variant", "accuracy", "ci_low", "ci_high", "n"])
    ctx.path("ablations.md").write_text(sx_md)
timing["total_s"] = round(time.time() - t_start, 1)
timing

# %%
names = [s for s in ("k", "train_size", "schedule", "content") if len(table) and (table.sweep == s).any()]
if names:
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, s in zip(axes[0], names):
        d = table[(table.sweep == s) & (table.split == "all")]
        x = range(len(d))
        ax.errorbar(list(x), d.accuracy, yerr=[d.accuracy - d.ci_low, d.ci_high - d.accuracy], fmt="o", capsize=3)
        ax.set_xticks(list(x), d.variant, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(s)
    axes[0][0].set_ylabel("accuracy (95% CI)")
    fig.suptitle(f"Ablations on the synthetic benchmark ({len(evals)} items), student {student}")
    fig.tight_layout()
    fig.savefig(ctx.path("ablations.png"), dpi=120)
    plt.show()

# %%
ctx.save_results({"student": student, "backend": backend, "base_config": base, "train_config": vars(cfg),
                  "eval_items": len(evals), "sweeps": {s: [r for r in rows if r["sweep"] == s] for s in sweeps},
                  "trained": lab.train_metrics, "timing": timing,
                  "skintern_stage_reports": stage_reports if (sweeps["schedule"] or sweeps["content"]) else {}})
