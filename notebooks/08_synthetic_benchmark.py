# %% [markdown]
# # 08 · A controlled knowledge-sparse benchmark: where each method wins and loses
#
# At 135M parameters and CPU budgets, BBH cannot separate the distillation methods (calibration.md). This
# notebook uses the generated benchmark of `nesylib.synth`, where the papers' premise holds by construction:
# every fact of an invented world (units, mentors, homes, provinces, cloak rules) appears in at most three
# training questions, and test questions combine training facts in new ways (`ood`: with new templates).
# No pretrained model can know a single fact, so a student must either have absorbed the facts during
# training or be handed them at test time.
#
# | id | method | what the student sees at test time |
# |---|---|---|
# | `std` | Std-CoT: question → teacher CoT | the question |
# | `kard` | KARD: BM25 top-k passages of the train items' knowledge (D19) | passages + question |
# | `nesycd` | NesyCD: S_P = Std-CoT → errors on train → KB of teacher analyses → S_E (D14) | top KB entry + question |
# | `skintern` | SKIntern: knowledge + demos decaying over stages 0..T, one adapter (D15-D17) | the question |
# | `ft`, `mt-cot`, `mt-re`, `cascod`, `kaft`, `base` | the other baselines (method.md §5) | as in notebook 05 |
#
# The teacher is programmatic (`SynthTeacher`): correct rationales, error analyses that name the needed
# facts, and per-question knowledge, each only for training questions. The benchmark's parameters are the
# `SynthConfig` defaults, fixed and documented before any result (nesylib/synth/world.py); `synth_config`
# selects them (`"default"`), the tiny test world (`"smoke"`), or overrides.

# %% tags=["parameters"]
# parameters
from typing import Optional, Union
preset: str = "adhoc"
run_root: Optional[str] = None
seed: int = 42
student: str = "smollm2-135m"
train: dict = {}                            # nesylib.training.config.TrainConfig fields, shared by every notebook of a preset
eval_batch_size: int = 16
max_new_tokens: Optional[int] = None        # None: per-task caps from the teacher rationales (1.3 x longest)
train_overrides: dict = {}                  # fields replaced for this notebook only (e.g. a shorter budget)
synth_config: Union[str, dict] = "default"  # default | smoke | a dict of SynthConfig overrides
eval_per_task_synth: Union[int, dict, None] = None  # items per (split, task), a seeded subset: n, {"test": n, "ood": m}, or None (all 192 + 160)
methods: list = ["std", "oracle", "kard", "nesycd", "skintern", "ft"]
stages_T: int = 6                           # SKIntern stages t in 0..T (D15)
max_demos: int = 6                          # SKIntern demos at stage 0 (n_t decays linearly)
compressor: str = "self-info"               # auto | self-info | llmlingua2 | truncate
k_retrieve: int = 3                         # NesyCD: KB hits retrieved per question
k_insert: int = 1                           # NesyCD: hits inserted into the prompt
kb_index_text: str = "question"             # NesyCD: entries are found by question (D13) | knowledge | both
se_train_knowledge: str = "own"             # NesyCD S_E training knowledge: own analysis (D14) | retrieved (as at test time)
se_keep_own: float = 0.0                    # with retrieved: share of error items whose own entry may be retrieved
se_step_budget: str = "own"                 # NesyCD S_E steps: own (an epoch of its 3-format set) | std (Std-CoT's)
kard_k: int = 3                             # KARD: passages per question
kard_keep_own: float = 0.0                  # KARD: share of training items whose own passage may be retrieved (D19: 0)
demo_items_per_task: Optional[int] = None   # NesyCD: S_P answers at most this many train questions per task; None: all
min_knowledge_share: float = 0.5            # stop when the teacher gives usable knowledge (or KB analyses) for fewer items

# %%
import json
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nesylib import report
from nesylib.methods import students
from nesylib.pipeline import param_model, runs
from nesylib.training.backends import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
from nesylib import synth
from nesylib.synth import experiment as sx

ctx = param_model.start("08_synthetic_benchmark", globals())
from nesylib.methods.catalog import check_methods

check_methods(methods)
cfg = students.train_config({**train, **train_overrides})
t_start = time.time()
print(f"backend {backend}; methods {methods}; train config {cfg}")

# %% [markdown]
# ## 1. The benchmark (seeded; written to `benchmark/` with the world)

# %%
config = sx.resolve_config(synth_config)
world = synth.generate_world(config)
bench = synth.generate_benchmark(config, world)
synth.save_benchmark(bench, ctx.path("benchmark"), world)
desc = synth.describe(bench)
print(json.dumps(config.to_dict()))
evals = sx.eval_records(bench, eval_per_task_synth, seed)
eval_features = pd.DataFrame([sx.item_features(r) for r in evals])
print(f"{len(world.facts)} facts; evaluated items: {len(evals)} "
      f"({dict(eval_features.split.value_counts())})")
pd.DataFrame({k: [json.dumps(v)] for k, v in desc.items()}).T.rename(columns={0: "value"})

# %% [markdown]
# How often the facts an evaluation question needs were seen in training (`min_exposure`: the fewest training
# questions stating one of its facts), by split and number of hops:

# %%
eval_features.groupby(["split", "hops", "min_exposure"]).size().unstack(fill_value=0)

# %% [markdown]
# ## 2. Teacher outputs (train questions only) and the students
#
# `SynthTeacher` refuses test and ood records. Every method trains from the base student with the preset's
# recipe; adapters are cached under `students/` by their inputs.

# %%
from transformers import AutoTokenizer

from nesylib.methods import catalog as mth
from nesylib.methods.curriculum import Schedule
from nesylib.pipeline.experiment import KardKnowledge
from nesylib.knowledge.kb import build_kb
from nesylib.knowledge.writer import describe_summary, generate_knowledge, require_kb_entries, require_knowledge
from nesylib.models import resolve_model

teacher = synth.SynthTeacher(world)
train_rows = synth.rationale_records(bench["train"], teacher)
if len(train_rows) != len(bench["train"]):
    raise RuntimeError(f"the teacher failed on {len(bench['train']) - len(train_rows)} train items")
tok = AutoTokenizer.from_pretrained(resolve_model(student))
spec = sx.synth_task_spec(train_rows, tok)
print("generation caps per task:", dict(spec.max_new_tokens_by_task) if max_new_tokens is None else max_new_tokens)
eval_sets = {"synth": evals}
lab = mth.Lab(student, cfg, ctx.dir.parent, ctx.dir, specs={"synth": spec}, batch_size=eval_batch_size,
              max_new_tokens=max_new_tokens, seed=seed)
knowledge = {}
results, extra = {}, {}
if {"kard", "kaft", "skintern"} & set(methods):
    knowledge, failures = generate_knowledge(bench["train"], teacher)
    runs.write_jsonl(ctx.path("knowledge.jsonl"), [{"uid": u, "knowledge": k} for u, k in knowledge.items()])
    runs.write_jsonl(ctx.path("knowledge_failures.jsonl"), failures)
    extra["knowledge"] = require_knowledge(len(bench["train"]), len(knowledge), failures, teacher.name,
                                           min_knowledge_share, "knowledge for KARD / KA-FT / SKIntern (08)",
                                           fix="the synthetic teacher (nesylib.synth.SynthTeacher) and synth_config")
    print(describe_summary(extra["knowledge"]))
    if knowledge:
        print("a knowledge text:\n" + next(iter(knowledge.values())))


def facts_of(record):
    return sx.fact_texts(record, world)

# %% [markdown]
# ### The bounds: Std-CoT (no knowledge) and the oracle (exactly the needed facts in the prompt)
#
# The oracle student trains and answers with the KARD prompt holding the facts each question needs, nothing
# else: it shows what this student and recipe can do with knowledge in the prompt, the ceiling for every
# knowledge method below.

# %%
for m in [m for m in methods if m in mth.PLAIN]:
    results[m] = mth.plain_method(lab, m, train_rows, eval_sets)
if "oracle" in methods:
    results["oracle"] = mth.oracle_method(lab, train_rows, eval_sets, facts_of)

# %% [markdown]
# ### NesyCD: S_P's errors on every training question → knowledge base → S_E → retrieval at test time

# %%
if "nesycd" in methods:
    from nesylib.methods.formats import examples_for

    sp_adapter = lab.fit("std", examples_for("std", train_rows))  # S_P is the Std-CoT student
    errs = mth.nesycd_errors(lab, sp_adapter, train_rows, demo_items_per_task)
    kb = build_kb(errs.errors, teacher, student_name=f"S_P {student}")
    kb.save(ctx.path("nesycd", "kb.jsonl"))
    kb_check = require_knowledge(len(errs.errors), len(kb), kb.failures, teacher.name, min_knowledge_share,
                                 "NesyCD KB (08)", fix="the synthetic teacher (nesylib.synth.SynthTeacher)")
    require_kb_entries(len(kb), "nesycd/kb.jsonl of this notebook", len(errs.errors), len(kb.failures),
                       teacher.name, where="this notebook (08)")
    extra["nesycd"] = {"sp_items": len(errs.items), "sp_train_accuracy": errs.result.accuracy,
                       "errors": len(errs.errors), "corrects": len(errs.corrects), "kb_entries": len(kb),
                       "kb_failures": len(kb.failures), "knowledge_check": kb_check}
    print(extra["nesycd"])
    if len(kb):
        print("a KB entry:\n" + kb.entries[0]["summary"])
    results["nesycd"] = mth.nesycd_student(lab, train_rows, kb, eval_sets, k_retrieve, k_insert,
                                           se_train_knowledge, se_keep_own, kb_index_text,
                                           step_budget=se_step_budget)

# %% [markdown]
# ### KARD (and KA-FT): BM25 passages over the training items' knowledge (D19)
#
# Passages are the supplementary-knowledge part of each training item's knowledge (the facts). A training item
# may retrieve its own passage for a seeded share `kard_keep_own` of the items, so that training prompts hold
# about as many of the needed facts as test prompts do (both are reported below).

# %%
if {"kard", "kaft"} & set(methods):
    kard = KardKnowledge(train_rows, knowledge, k=kard_k, keep_own=kard_keep_own, seed=seed)
    print("a KARD passage:", kard.test(evals[0])[0])
    for m in [m for m in ("kard", "kaft") if m in methods]:
        results[m] = mth.kard_method(lab, m, train_rows, eval_sets, kard)

# %% [markdown]
# ### SKIntern: knowledge and demos decay over the stages; the student answers from the question alone

# %%
if "skintern" in methods:
    from nesylib.methods.compress import make_compressor

    comp = make_compressor(compressor, model_name=student)
    results["skintern"] = mth.skintern_method(lab, train_rows, knowledge, eval_sets,
                                              Schedule(T=stages_T, max_demos=max_demos), comp, cfg.cutoff_len)
    del comp
    info = results["skintern"].info
    extra["skintern"] = {k: info[k] for k in ("budget", "stages", "compression")}
    display(pd.DataFrame(info["stages"])[["stage", "steps", "keep_ratio", "n_demos", "knowledge_words_mean",
                                          "prompt_tokens_mean", "items_shortened"]])
results = {m: results[m] for m in methods if m in results}  # table order = the preset's order
timing, train_metrics = lab.timing, lab.train_metrics
timing["total_s"] = round(time.time() - t_start, 1)
timing

# %% [markdown]
# ## 3. Results: accuracy with 95% bootstrap CIs, paired differences against Std-CoT
#
# Floors: chance (25% on the multiple-choice families, 0 on unit conversions, whose answers are free
# numbers) and a heuristic that picks the option occurring in the most training rationales together with a
# name from the question (multiple-choice items only; no reasoning, no fact chaining).
# `facts_in_output`: share of the needed fact sentences the student wrote; `facts_in_knowledge`: share
# contained in the knowledge inserted into the evaluated prompts, and `train facts in knowledge` the same share
# in the training prompts (knowledge methods). `derives`: the student's reasoning ends on the gold option's
# text (multiple choice; on free-number items it equals accuracy), whatever letter it then writes. `prefill`:
# MACs of the evaluated prompts relative to Std-CoT's question-only prompt.

# %%
items = []
for m, res in results.items():
    items += sx.item_rows(m, res.result.rows, evals, world, res.inserted)
runs.write_jsonl(ctx.path("items.jsonl"), items)
heur = sx.cooccurrence_baseline(train_rows, evals, world, seed)
chance = pd.DataFrame(sx.chance_rows(evals))
items_df = pd.DataFrame(items)
by_split = sx.accuracy_by(items, ["split"])
derived_split = sx.accuracy_by([{**i, "correct": i["derives"]} for i in items], ["split"])
train_coverage = {}
for m, res in results.items():
    texts = res.info.get("train_passages") or res.info.get("train_prompts")
    if texts:
        train_coverage[m] = sx.mean_coverage(texts, bench["train"], world)
    elif m == "oracle":
        train_coverage[m] = 1.0
mc_split = sx.accuracy_by([i for i in items if i["mc"]] + heur, ["split"])
paired = sx.paired_vs(items, "std") if "std" in results else pd.DataFrame()


def cell(df, method, split):
    r = df[(df.method == method) & (df.split == split)]
    return None if r.empty else r.iloc[0]


rows = []
for m in list(results) + ["cooccurrence", "chance"]:
    row = {"method": mth.label(m) if m in results else sx.LABELS[m], "method_id": m}
    for s in ("test", "ood"):
        if m == "chance":
            sel = chance[chance.split == s]
            row[s] = float(sel.expected.mean())
            row[f"{s}_mc"] = float(sel[sel.mc].expected.mean())
            continue
        r, rm, rd = cell(by_split, m, s), cell(mc_split, m, s), cell(derived_split, m, s)
        if r is not None:
            row[s], row[f"{s}_ci"], row[f"{s}_n"] = r.accuracy, [r.ci_low, r.ci_high], int(r.n)
        if rd is not None:
            row[f"{s}_derives"], row[f"{s}_derives_ci"] = rd.accuracy, [rd.ci_low, rd.ci_high]
        if rm is not None:
            row[f"{s}_mc"], row[f"{s}_mc_ci"] = rm.accuracy, [rm.ci_low, rm.ci_high]
        d = paired[(paired.method == m) & (paired.split == s)] if len(paired) else paired
        if len(d):
            row[f"{s}_diff_vs_std"] = float(d.iloc[0]["diff"])
            row[f"{s}_diff_ci"] = [float(d.iloc[0].ci_low), float(d.iloc[0].ci_high)]
            row[f"{s}_diff_p"] = float(d.iloc[0].p_value)
    if m in results:
        sel = items_df[items_df.method == m]
        row["no_answer_rate"] = float(1 - sel.has_answer.mean())
        row["facts_in_output"] = float(sel.facts_in_output.mean())
        if "facts_in_knowledge" in sel and sel.facts_in_knowledge.notna().any():
            row["facts_in_knowledge"] = float(sel.facts_in_knowledge.mean())
        if m in train_coverage:
            row["train_facts_in_knowledge"] = float(train_coverage[m])
        row["prefill_tmacs"] = sum(v["prefill_tmacs"] for v in results[m].result.summary["flops"].values())
        row["train_s"], row["eval_s"] = timing.get(f"{m}_train_s"), timing.get(f"{m}_eval_s")
    rows.append(row)
std_macs = next((r["prefill_tmacs"] for r in rows if r["method_id"] == "std"), None)
for r in rows:
    if std_macs and r.get("prefill_tmacs") is not None:
        r["prefill_vs_std"] = r["prefill_tmacs"] / std_macs
table = pd.DataFrame(rows)
report.write_csv(table, ctx.path("synth_results.csv"))


def fmt(v, ci=None):
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return f"{100 * v:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if isinstance(ci, list) else "")


pretty = pd.DataFrame([{
    "method": r["method"], "test": fmt(r.get("test"), r.get("test_ci")), "ood": fmt(r.get("ood"), r.get("ood_ci")),
    "test derives": fmt(r.get("test_derives"), r.get("test_derives_ci")),
    "ood derives": fmt(r.get("ood_derives"), r.get("ood_derives_ci")),
    "test MC": fmt(r.get("test_mc"), r.get("test_mc_ci")), "ood MC": fmt(r.get("ood_mc"), r.get("ood_mc_ci")),
    "Δ test vs Std-CoT": fmt(r.get("test_diff_vs_std"), r.get("test_diff_ci")),
    "Δ ood vs Std-CoT": fmt(r.get("ood_diff_vs_std"), r.get("ood_diff_ci")),
    "no answer": fmt(r.get("no_answer_rate")), "facts in output": fmt(r.get("facts_in_output")),
    "facts in knowledge (test)": fmt(r.get("facts_in_knowledge")),
    "facts in knowledge (train)": fmt(r.get("train_facts_in_knowledge")),
    "prefill": f"{r['prefill_vs_std']:.2f}x" if r.get("prefill_vs_std") else ""} for r in rows])
ctx.path("synth_results.md").write_text(
    f"Synthetic benchmark, student {student}, {len(evals)} items (accuracy %, 95% CI)\n\n"
    + sx.markdown_table(pretty.to_dict("records"), list(pretty.columns)))
pretty

# %% [markdown]
# ### Where each method wins and loses: by fact exposure, hops, family, split

# %%
def pivot(df, col):
    t = df.assign(acc=lambda d: d.apply(lambda r: f"{100 * r.accuracy:.0f} [{100 * r.ci_low:.0f}, "
                                                   f"{100 * r.ci_high:.0f}] n={r.n}", axis=1))
    return t.pivot(index="method", columns=col, values="acc")


by_exposure = sx.accuracy_by(items + heur, ["min_exposure"])
by_hops = sx.accuracy_by(items + heur, ["hops"])
by_task = sx.accuracy_by(items + heur, ["task"])
by_split_exposure = sx.accuracy_by(items, ["split", "min_exposure"])
for name, df, col in (("min_exposure (test + ood)", by_exposure, "min_exposure"), ("hops", by_hops, "hops"),
                      ("family", by_task, "task")):
    print(name)
    display(pivot(df, col))

# %% [markdown]
# Wins and losses against Std-CoT on the same items (paired bootstrap difference, percentage points):

# %%
wins = pd.concat([sx.paired_vs(items, "std", by=g).rename(columns={g: "group"}).assign(by=g)
                  for g in ("min_exposure", "hops", "task")]) if "std" in results else pd.DataFrame()
if len(wins):
    display(wins.assign(diff=lambda d: d.apply(lambda r: f"{100 * r['diff']:+.0f} [{100 * r.ci_low:+.0f}, "
                                                        f"{100 * r.ci_high:+.0f}]", axis=1))
            .pivot(index=["by", "group"], columns="method", values="diff"))

# %% [markdown]
# Retrieval methods: accuracy when the inserted knowledge contains every needed fact, some, or none.

# %%
retr = items_df[items_df.method.isin([m for m, r in results.items() if r.inserted])].copy()
if len(retr):
    retr["knowledge_has"] = pd.cut(retr.facts_in_knowledge, [-0.01, 0.0, 0.999, 1.0], labels=["none", "some", "all"])
    by_coverage = retr.groupby(["method", "knowledge_has"], observed=True).agg(
        n=("correct", "size"), accuracy=("correct", "mean")).reset_index()
    display(by_coverage)
else:
    by_coverage = pd.DataFrame()

# %% [markdown]
# ## 4. Plots

# %%
labels = [mth.label(m) for m in results]
fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(results) + 2), sharey=True)
for ax, s in zip(axes, ("test", "ood")):
    for i, m in enumerate(results):
        r = cell(by_split, m, s)
        ax.errorbar(r.accuracy, i, xerr=[[r.accuracy - r.ci_low], [r.ci_high - r.accuracy]], fmt="o", capsize=3,
                    color=f"C{i}")
    ax.axvline(float(chance[chance.split == s].expected.mean()), ls=":", color="grey", label="chance")
    ax.set_yticks(range(len(results)), labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% CI)")
    ax.set_title(f"{s} ({len(chance[chance.split == s])} items)")
axes[0].legend(loc="lower right", fontsize=8)
fig.suptitle(f"Synthetic knowledge-sparse benchmark, student {student}")
fig.tight_layout()
fig.savefig(ctx.path("accuracy.png"), dpi=120)
plt.show()

fig, ax = plt.subplots(figsize=(7, 4))
for i, m in enumerate(list(results) + ["cooccurrence"]):
    d = by_exposure[by_exposure.method == m].sort_values("min_exposure")
    ax.plot(d.min_exposure, d.accuracy, "o-" if m != "cooccurrence" else "x--", color=f"C{i}", label=mth.label(m) if m in results else sx.LABELS[m])
    ax.fill_between(d.min_exposure, d.ci_low, d.ci_high, color=f"C{i}", alpha=0.12)
ax.set_xticks(sorted(by_exposure.min_exposure.unique()))
ax.set_xlabel("training questions stating the least-seen needed fact")
ax.set_ylabel("accuracy (test + ood)")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title("Accuracy vs fact exposure (the co-occurrence heuristic: MC items only)")
fig.tight_layout()
fig.savefig(ctx.path("accuracy_vs_exposure.png"), dpi=120)
plt.show()

# %%
def records(df):
    return json.loads(df.to_json(orient="records")) if len(df) else []


ctx.save_results({
    "student": student, "backend": backend, "train_config": vars(cfg), "synth_config": config.to_dict(),
    "benchmark": desc, "eval_items": len(evals), "rows": records(table), "paired_vs_std": records(paired),
    "by_exposure": records(by_exposure), "by_hops": records(by_hops), "by_task": records(by_task),
    "by_split_exposure": records(by_split_exposure), "retrieval_coverage": records(by_coverage),
    "paired_by_group": records(wins), "train_coverage": train_coverage,
    "train_metrics": train_metrics, "extra": extra, "timing": timing,
    "generation_caps": dict(spec.max_new_tokens_by_task) if max_new_tokens is None else max_new_tokens})
