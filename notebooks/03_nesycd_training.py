# %% [markdown]
# # 03 · NesyCD: the KB-augmented student S_E
#
# Steps 5–6 of NesyCD (method.md §3, D13–D14), on the KB that `02_kb_construction` wrote from S_P's errors.
#
# * **Training (D14).** S_E is LoRA-tuned *from the base model* (not from S_P) on one concatenated set with one
#   cross-entropy loss: (a) every KB item in the P-KB prompt with its own analysis inserted (or, with
#   `own_summary=False`, the best-matching *other* entry: leave-one-out retrieval), (b) every training item in
#   P-STD (Direct CoT) and (c) every training item in P-FT (Answer Prediction). Same recipe as every student.
# * **Inference.** Each test question (query `task_description + question`) retrieves the top `k_retrieve`
#   entries; the first `k_insert` are inserted into P-KB. With no hit the prompt is plain P-STD. The optional
#   confidence gate (off by default, D13; the question is in its prompt and decoding is greedy) lets confident
#   items go without knowledge. OOD sets retrieve from the same in-domain KB, as the authors did.
# * **Reported.** The NesyCD row of the main table; beside it S_P (= Std-CoT) and S_E answering without
#   knowledge (P-STD), which isolates what retrieval at test time adds.

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
train: dict = {}                      # nesylib.training.config.TrainConfig fields (the recipe every student shares)
eval_batch_size: int = 16
max_new_tokens: Optional[int] = None  # None: per-task caps (calibration.md); 1024 is the authors' protocol
k_retrieve: int = 3                   # KB entries retrieved per question
k_insert: int = 1                     # retrieved entries inserted into the prompt
retriever: str = "bm25"               # bm25 | dense
gate: bool = False                    # the confidence gate of method.md §3 step 4, fixed as D13 says
gate_threshold: float = 68.0
own_summary: bool = True              # False: training summaries by leave-one-out retrieval (D14 option)
compare_sp: bool = True               # evaluate S_P on the same slices (stored beside S_P, so 05 can reuse it)
ablation_no_knowledge: bool = True    # evaluate S_E once more with P-STD prompts

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from nesylib import report
from nesylib.methods import nesycd, prompts, students
from nesylib.pipeline import experiment, param_model
from nesylib.knowledge.kb import KnowledgeBase
from nesylib.knowledge.writer import require_kb_entries
from nesylib.training.backends import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
ctx = param_model.start("03_nesycd_training", globals())
if not 1 <= k_insert <= k_retrieve:
    raise ValueError(f"parameters k_insert={k_insert} and k_retrieve={k_retrieve}: need 1 <= k_insert <= k_retrieve")
cfg = students.train_config(train)
kb_run = ctx.upstream("02_kb_construction")
kb_info = json.loads((kb_run / "results.json").read_text())
kb = KnowledgeBase.load(kb_run / "kb.jsonl")
# NesyCD without knowledge is not NesyCD: an empty KB stops here, naming 02's KB and why it is empty
require_kb_entries(len(kb), kb_run / "kb.jsonl", kb_info.get("errors"), kb_info.get("failures", 0), kb_info["tutor"])
kb.index(retriever)
train_recs = experiment.load_training_set(ctx)
eval_sets = experiment.select_eval(eval_per_task, bbh_tasks, seed, data_dir)
test_recs = [r for recs in eval_sets.values() for r in recs]
print(f"backend {backend}; KB {len(kb)} entries (tutor {kb_info['tutor']}); {len(train_recs)} training items; "
      "evaluation:", {k: len(v) for k, v in eval_sets.items()})

# %% [markdown]
# ## S_E: LoRA from the base model on KB errors (P-KB) + Direct CoT (P-STD) + Answer Prediction (P-FT)

# %%
from nesylib.methods import catalog as mth

lab = mth.Lab(student, cfg, ctx.dir.parent, ctx.dir, batch_size=eval_batch_size, max_new_tokens=max_new_tokens,
              seed=seed)
# D14's concatenation; own_summary=False retrieves each error item's knowledge leaving its own entry out
se_examples = mth.nesycd_examples(train_recs, kb, k_retrieve, k_insert, "own" if own_summary else "retrieved",
                                  keep_own=0.0, retriever=retriever, seed=seed)
part_a = se_examples[:len(se_examples) - 2 * len(train_recs)]
n_kb = sum(prompts.KB_INTRO in e.prompt for e in part_a)  # leave-one-out may find nothing: then P-STD
print(f"S_E training set: {len(se_examples)} examples = {len(part_a)} P-KB "
      f"({n_kb} with knowledge) + {len(train_recs)} P-STD + {len(train_recs)} P-FT")
se_adapter = lab.fit("nesycd", se_examples)
se_metrics = lab.train_metrics["nesycd"]
print(f"S_E: {se_adapter}; share of target tokens per format: {se_metrics.get('target_token_share')}")
shown = part_a[0] if part_a else (se_examples[0] if se_examples else None)
if shown is not None:
    print("--- one P-KB training prompt ---" if part_a else "--- one training prompt (no P-KB example) ---")
    print(shown.prompt[:1200])

# %% [markdown]
# ## Inference with retrieved knowledge

# %%
gate_fn = None
if gate:
    from nesylib.knowledge.kb import confidence_gate
    from nesylib.training.engine import load_student

    gate_model, gate_tok = load_student(student, se_adapter)
    gate_fn = lambda r: confidence_gate(gate_model, gate_tok, prompts.std(r), threshold=gate_threshold)  # noqa: E731
knowledge = nesycd.retrieved_knowledge(test_recs, kb, k_retrieve=k_retrieve, k_insert=k_insert, gate=gate_fn)
if gate:
    del gate_model
top = dict(zip([r["uid"] for r in test_recs], kb.retrieve_many(test_recs, k=1)))
retrieval = pd.DataFrame([{
    "dataset": r["dataset"], "knowledge": knowledge[r["uid"]] != prompts.NO_SUMMARY,
    "same_task_hit": bool(top[r["uid"]]) and kb.entries[top[r["uid"]][0]["docid"]]["task"] == r["task"],
} for r in test_recs], columns=["dataset", "knowledge", "same_task_hit"]).groupby("dataset", sort=False).mean().round(3)
retrieval.columns = ["share with knowledge inserted", "top hit from the same task"]
retrieval

# %%
# evaluations are stored beside their student (shared, reusable) and copied to eval/<name>/ here
res_kb = lab.score("nesycd", se_adapter, eval_sets, knowledge=lambda r: knowledge[r["uid"]], name="kb")
row = students.result_row("kb", res_kb, se_metrics, kb_entries=len(kb), tutor=kb_info["tutor"],
                          retriever=retriever, k_retrieve=k_retrieve, k_insert=k_insert, gate=gate,
                          own_summary=own_summary,
                          knowledge_rate=round(sum(t != prompts.NO_SUMMARY for t in knowledge.values())
                                               / len(knowledge), 4) if knowledge else None)
print(f"NesyCD S_E: ID avg {row['id_avg']}, OOD avg {row['ood_avg']}")
report.write_csv(pd.DataFrame([row]), ctx.path("nesycd.csv"))
sample = next((s for s in res_kb.rows if prompts.KB_INTRO in s["prompt"]), res_kb.rows[0] if res_kb.rows else None)
if sample is None:
    print("no test questions were evaluated (eval_per_task)")
else:
    print("--- a P-KB test prompt and S_E's answer ---" if prompts.KB_INTRO in sample["prompt"]
          else "--- a test prompt (no knowledge retrieved for any) and S_E's answer ---")
    print(sample["prompt"][-1200:])
    print(">>>", sample["output"][:600])

# %% [markdown]
# ## What the knowledge adds: S_P vs S_E without knowledge vs S_E with the KB

# %%
ablation = []
if compare_sp:
    sp_adapter = kb_info["sp_adapter"]  # the S_P whose errors built this KB
    sp_metrics = json.loads((Path(sp_adapter).parent / "train_result.json").read_text())
    res_sp = lab.score("std", sp_adapter, eval_sets, name="sp")
    ablation.append(students.result_row("std", res_sp, sp_metrics) | {"method": "S_P (Std-CoT)", "variant": "sp"})
if ablation_no_knowledge:
    res_nok = lab.score("std", se_adapter, eval_sets, name="se_no_knowledge")
    ablation.append(students.result_row("kb", res_nok, se_metrics)
                    | {"method": "S_E without knowledge (P-STD)", "variant": "se_no_knowledge"})
ablation.append(row | {"method": "S_E with KB (NesyCD)", "variant": "se_kb"})
ablation_table = pd.DataFrame(ablation)
report.write_csv(ablation_table, ctx.path("ablation.csv"))
ablation_table[["method"] + list(eval_sets) + ["id_avg", "ood_avg", "no_answer_rate", "prefill_tmacs"]]

# %%
fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(eval_sets)), 3.8))
width = 0.8 / len(ablation)
for i, r in enumerate(ablation):
    xs = [j + (i - (len(ablation) - 1) / 2) * width for j in range(len(eval_sets))]
    acc = [r[ds] for ds in eval_sets]
    err = [[r[ds] - r[f"{ds}_ci"][0] for ds in eval_sets], [r[f"{ds}_ci"][1] - r[ds] for ds in eval_sets]]
    ax.errorbar(xs, acc, yerr=err, fmt="o", capsize=3, label=r["method"], color=f"C{i}")
ax.set_xticks(range(len(eval_sets)), list(eval_sets))
ax.set_ylabel("accuracy (95% bootstrap CI)")
ax.set_ylim(-0.02, 1.02)
ax.legend(fontsize=8)
ax.set_title(f"NesyCD on {student}: S_P vs S_E")
fig.tight_layout()
fig.savefig(ctx.path("nesycd.png"), dpi=120)
plt.show()

# %%
results_path = ctx.save_results({"rows": [row], "ablation": ablation, "student": student, "backend": backend,
                  "kb_entries": len(kb), "kb_path": str(kb_run / "kb.jsonl"), "tutor": kb_info["tutor"],
                  "se_adapter": str(se_adapter), "se_train_examples": len(se_examples), "se_kb_examples": n_kb,
                  "retrieval": retrieval.reset_index().to_dict("records"),
                  "evals": {n: str(ctx.path("eval", n))
                            for n in ["kb"] + [r["variant"] for r in ablation if r["variant"] != "se_kb"]},
                  "train_config": vars(cfg)})
