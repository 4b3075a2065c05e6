# %% [markdown]
# # 02 · NesyCD knowledge base: the tutor analyses the student's mistakes
#
# NesyCD (method.md §3) keeps general reasoning in the student's weights and puts specialised knowledge in a
# human-readable symbolic knowledge base (KB) written from the student's own errors:
#
# 1. **General distillation → S_P.** Std-CoT on the rationale dataset (notebook 01). The adapter lives in the
#    run's shared `students/` folder, so `05_baselines` reuses it as its Std-CoT student.
# 2. **Demonstration collection.** S_P answers the *training* questions (P-STD, greedy); each answer is scored with
#    the evaluation comparator and kept as an error or a correct case.
# 3. **Symbolic knowledge distillation.** The tutor T_T reads each error (question + wrong answer) and writes a
#    `Learning Summary:` and `Supplementary Knowledge:` (the project's error-analysis prompt, D12). Invalid or
#    failed replies are asked again (3 attempts) and then recorded as failures, never silently dropped; when
#    fewer than `min_knowledge_share` of the errors get a usable analysis, the notebook stops, naming the tutor,
#    the counts and the first unparseable reply.
# 4. **The KB** is saved as `kb.jsonl` (one entry a line, with provenance: source item, student, tutor, prompt
#    version) — it can be edited by hand and is reloaded by `03_nesycd_training`, which retrieves from it with
#    BM25 or dense retrieval over `task_description + question` (D13).
#
# Tutors: `tutor_backend="derived"` (the cpu and smoke default, no network) turns each error item's accepted
# teacher rationale into the two sections — an offline stand-in, item-specific rather than a tutor's
# generalisation, and reported as a deviation. `"openai"` uses any OpenAI-compatible endpoint (key read from the
# environment variable named by `api_key_env`, every call cached in `store_path`); `"local"` a transformers chat
# model.

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
train: dict = {}                           # nesylib.training.config.TrainConfig fields for S_P (the Std-CoT recipe of the preset)
eval_batch_size: int = 16
max_new_tokens: Optional[int] = None       # None: per-task caps (calibration.md); 1024 is the authors' protocol
tutor_backend: str = "derived"             # derived | openai | local
tutor_model: Optional[str] = None          # openai/local: the model name
tutor_base_url: Optional[str] = None       # openai: e.g. http://localhost:8000/v1 for a vLLM server
api_key_env: str = "OPENAI_API_KEY"        # the environment variable that holds the API key
store_path: Optional[str] = None           # None: <run_root>/stores/02_kb_construction/tutor_store.jsonl
concurrency: int = 8                       # calls in flight at once
budget_usd: Optional[float] = None         # stop new paid tutor calls beyond this spend (needs price_in_out)
price_in_out: Optional[list] = None        # [USD per 1M input tokens, USD per 1M output tokens] of tutor_model
demo_items_per_task: Optional[int] = None  # S_P answers at most this many training questions per task; None: all
retriever: str = "bm25"                    # bm25 | dense, for the retrieval example below
gate: bool = False                         # True: S_P's confidence margins on the demonstrations, to judge 03's gate
gate_threshold: float = 68.0
min_knowledge_share: float = 0.5           # stop when the tutor gives a usable analysis for fewer of S_P's errors

# %%
import matplotlib.pyplot as plt
import pandas as pd

from nesylib.methods import nesycd, students
from nesylib.pipeline import experiment, param_model
from nesylib.training.backends import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
ctx = param_model.start("02_kb_construction", globals())
cfg = students.train_config(train)
train_recs = experiment.load_training_set(ctx)
print(f"backend {backend}; {len(train_recs)} training items with an accepted rationale")

# %% [markdown]
# ## 1 · General distillation: S_P = Std-CoT

# %%
from nesylib.methods import catalog as mth
from nesylib.methods.formats import examples_for

lab = mth.Lab(student, cfg, ctx.dir.parent, ctx.dir, batch_size=eval_batch_size, max_new_tokens=max_new_tokens,
              seed=seed)
sp_adapter = lab.fit("std", examples_for("std", train_recs))  # the Std-CoT student of 05, shared
sp_dir = sp_adapter.parent
sp_metrics = lab.train_metrics["std"]

# %% [markdown]
# ## 2 · Demonstration collection: S_P on the training questions

# %%
found = mth.nesycd_errors(lab, sp_adapter, train_recs, demo_items_per_task)
demo_recs, demo_eval, errors, corrects = found.items, found.result, found.errors, found.corrects
demo_dir = ctx.path("eval", "nesycd_sp_train")
print(f"S_P answered {len(demo_recs)} training questions in {demo_eval.summary['tokens']['seconds']:.0f} s: "
      f"{len(errors)} errors, {len(corrects)} correct")
counts = pd.DataFrame([{"task": t, "items": sum(d["record"]["task"] == t for d in errors + corrects),
                        "errors": sum(d["record"]["task"] == t for d in errors)}
                       for t in dict.fromkeys(r["task"] for r in demo_recs)], columns=["task", "items", "errors"])
counts["error_rate"] = (counts.errors / counts["items"]).round(3)
counts

# %%
gate_table = None
if gate and errors + corrects:
    # How well would the confidence gate (03) separate questions S_P gets wrong from those it gets right?
    from nesylib.knowledge.kb import confidence_margin
    from nesylib.training.engine import load_student

    sp_model, sp_tok = load_student(student, sp_adapter)
    margins = pd.DataFrame([{"outcome": "error" if d["stu_right_score"] == 0 else "correct",
                             "margin": confidence_margin(sp_model, sp_tok, d["question"])} for d in errors + corrects])
    del sp_model
    margins["skips_knowledge"] = margins.margin > gate_threshold
    gate_table = margins.groupby("outcome").agg(items=("margin", "size"), mean_margin=("margin", "mean"),
                                               share_above_threshold=("skips_knowledge", "mean")).round(3)
    display(gate_table)

# %% [markdown]
# ## 3 · Symbolic knowledge distillation: the tutor writes the KB

# %%
from nesylib.knowledge.kb import build_kb

tutor = nesycd.tutor_from_params(tutor_backend, train_recs, tutor_model, tutor_base_url, api_key_env,
                                 store_path or ctx.store("tutor_store.jsonl"), concurrency, budget_usd,
                                 {tutor_model: price_in_out} if price_in_out else None)
kb = build_kb(errors, tutor, student_name=f"S_P {student} ({sp_dir.name})")
kb_path = kb.save(ctx.path("kb.jsonl"))
tutor_calls = tutor.summary.as_dict() if hasattr(tutor, "summary") else {"calls": 0, "note": "offline tutor"}
print(f"tutor {tutor.name}: {len(kb)} entries, {len(kb.failures)} failures -> {kb_path}")
stats = pd.DataFrame(nesycd.kb_statistics(kb, errors, corrects))
stats

# %%
from nesylib.knowledge.writer import describe_summary, require_knowledge

if kb.failures:
    failures_table = pd.DataFrame(kb.failures)
    display(failures_table[[c for c in ("source_uid", "task", "attempts", "reason", "reply") if c in failures_table]])
# too few analyses: stop here rather than let 03 train a "NesyCD" student without knowledge
kb_check = require_knowledge(len(errors), len(kb), kb.failures, tutor.name, min_knowledge_share, "NesyCD KB (02)",
                             fix="the tutor parameters (tutor_backend, tutor_model, tutor_base_url, api_key_env)")
print(describe_summary(kb_check))

# %%
fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(stats))))
per_task = stats[stats.task != "all"]
ax.barh(per_task.task, per_task["items"], color="tab:gray", alpha=0.35, label="questions answered by S_P")
ax.barh(per_task.task, per_task.errors, color="tab:red", alpha=0.7, label="errors")
ax.barh(per_task.task, per_task.kb_entries, color="tab:blue", height=0.4, label="KB entries")
ax.set_xlabel("items")
ax.legend(fontsize=8, loc="lower right")
ax.set_title(f"NesyCD KB from S_P's training errors (tutor: {tutor.name})")
fig.tight_layout()
fig.savefig(ctx.path("kb_stats.png"), dpi=120)
plt.show()

# %% [markdown]
# ### Sample entries

# %%
for e in kb.entries[:3]:
    print(f"--- entry {e['id']} | {e['source_uid']} | tutor {e['teacher']}")
    print("question:", e["question"][:300])
    print("student's wrong answer:", e["student_output"][:300].replace(chr(10), " "))
    print(e["summary"][:900])
    print()

# %% [markdown]
# ## 4 · Retrieval: what a test question would get

# %%
from nesylib.methods import prompts

eval_sets = experiment.select_eval(eval_per_task, bbh_tasks, seed, data_dir)
examples = [recs[0] for recs in eval_sets.values() if recs][:3]
retrieval_example = []
if len(kb) and examples:
    kb.index(retriever)
    for rec in examples:
        hits = kb.retrieve(rec, k=3)
        print(f"=== test question {rec['uid']}: {rec['question'][:160]!r}")
        for h in hits:
            e = kb.entries[h["docid"]]
            print(f"  docid {h['docid']:4d}  score {h['score']:.3f}  {e['source_uid']}: {e['question'][:90]!r}")
        retrieval_example.append({"uid": rec["uid"], "hits": [{"docid": h["docid"], "score": h["score"],
                                                              "source_uid": kb.entries[h["docid"]]["source_uid"]}
                                                             for h in hits]})
    print()
    print("P-KB prompt of the first test question (top hit inserted):")
    print(prompts.kb(examples[0], kb.knowledge_for(examples[0]))[:1500])
elif not len(kb):
    print(f"The KB is empty ({len(errors)} errors of S_P, {len(kb.failures)} tutor failures): "
          "03 refuses to train NesyCD on it.")
else:
    print("No test questions selected (eval_per_task): nothing to retrieve for.")

# %%
sp_train = {k: sp_metrics.get(k) for k in ("steps", "seconds", "final_loss", "tokens_per_s")}
results_path = ctx.save_results({
    "student": student, "backend": backend, "sp_adapter": str(sp_adapter),
    "sp_train": sp_train, "demo_items": len(demo_recs), "errors": len(errors), "corrects": len(corrects),
    "train_error_rate": round(len(errors) / len(demo_recs), 4) if demo_recs else None,
    "demo_eval_dir": str(demo_dir), "demo_eval_seconds": demo_eval.summary["tokens"]["seconds"],
    "kb_path": str(kb_path), "kb_entries": len(kb), "failures": len(kb.failures),
    "failures_path": str(kb.failures_path(kb_path)) if kb.failures else None,
    "tutor": tutor.name, "tutor_calls": tutor_calls, "per_task": nesycd.kb_statistics(kb, errors, corrects),
    "knowledge_check": kb_check | {"min_knowledge_share": min_knowledge_share},
    "retriever": retriever, "retrieval_example": retrieval_example,
    "gate_diagnostic": gate_table.reset_index().to_dict("records") if gate_table is not None else None,
})
print(f"KB: {len(kb)} entries from {len(errors)} errors of {len(demo_recs)} answered training questions")
