from nbtool import write_notebook

write_notebook("notebooks/08_synthetic_benchmark.ipynb", [
    """#md
# 08 · A controlled knowledge-sparse benchmark: where each method wins and loses

At 135M parameters and CPU budgets, BBH cannot separate the distillation methods (calibration.md). This
notebook uses the generated benchmark of `nesylib.synth`, where the papers' premise holds by construction:
every fact of an invented world (units, mentors, homes, provinces, cloak rules) appears in at most three
training questions, and test questions combine training facts in new ways (`ood`: with new templates).
No pretrained model can know a single fact, so a student must either have absorbed the facts during
training or be handed them at test time.

| id | method | what the student sees at test time |
|---|---|---|
| `std` | Std-CoT: question → teacher CoT | the question |
| `kard` | KARD: BM25 top-k passages of the train items' knowledge (D19) | passages + question |
| `nesycd` | NesyCD: S_P = Std-CoT → errors on train → KB of teacher analyses → S_E (D14) | top KB entry + question |
| `skintern` | SKIntern: knowledge + demos decaying over stages 0..T, one adapter (D15-D17) | the question |
| `ft`, `mt-cot`, `mt-re`, `cascod`, `kaft`, `base` | the other baselines (method.md §5) | as in notebook 05 |

The teacher is programmatic (`SynthTeacher`): correct rationales, error analyses that name the needed
facts, and per-question knowledge, each only for training questions. The benchmark's parameters are the
`SynthConfig` defaults, fixed and documented before any result (nesylib/synth/world.py); `synth_config`
selects them (`"default"`), the tiny test world (`"smoke"`), or overrides.""",
    """# parameters
preset = "adhoc"
run_root = None
seed = 42
student = "smollm2-135m"
train = {}                   # nesylib.train.TrainConfig fields, shared by every notebook of a preset
train_overrides = {}         # fields replaced for this notebook only (e.g. a shorter budget)
eval_batch_size = 16
max_new_tokens = None        # None: per-task caps from the teacher rationales (1.3 x longest)
synth_config = "default"     # default | smoke | a dict of SynthConfig overrides
eval_per_task_synth = None   # items per (split, task), a seeded subset; None: all 192 test + 160 ood
methods = ["std", "kard", "nesycd", "skintern", "ft"]
stages_T = 6                 # SKIntern stages t in 0..T (D15)
max_demos = 6                # SKIntern demos at stage 0 (n_t decays linearly)
compressor = "self-info"     # self-info | truncate | llmlingua2 | auto
k_retrieve = 3               # NesyCD: KB hits retrieved per question
k_insert = 1                 # NesyCD: hits inserted into the prompt
kard_k = 3                   # KARD: passages per question
demo_items_per_task = None   # NesyCD: S_P answers at most this many training questions per task; None: all""",
    """import json
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from nesylib import runs, students
from nesylib.train import pick_backend

backend = pick_backend()  # before transformers is used: unsloth patches it on a GPU
from nesylib import synth
from nesylib.synth import experiment as sx

params = dict(preset=preset, run_root=run_root, seed=seed, student=student, train=train,
              train_overrides=train_overrides, eval_batch_size=eval_batch_size, max_new_tokens=max_new_tokens,
              synth_config=synth_config, eval_per_task_synth=eval_per_task_synth, methods=methods,
              stages_T=stages_T, max_demos=max_demos, compressor=compressor, k_retrieve=k_retrieve,
              k_insert=k_insert, kard_k=kard_k, demo_items_per_task=demo_items_per_task)
ctx = runs.start("08_synthetic_benchmark", params, schema={
    "seed": int, "student": str, "train": dict, "train_overrides": dict, "eval_batch_size": int,
    "max_new_tokens": (int, type(None)), "synth_config": (str, dict), "eval_per_task_synth": (int, type(None)),
    "methods": list, "stages_T": int, "max_demos": int, "compressor": ["self-info", "truncate", "llmlingua2", "auto"],
    "k_retrieve": int, "k_insert": int, "kard_k": int, "demo_items_per_task": (int, type(None))})
bad = sorted(set(methods) - set(sx.METHODS))
if bad:
    raise ValueError(f"parameter 'methods' has unknown method(s) {bad}; choose from {sorted(sx.METHODS)}")
cfg = students.train_config({**train, **train_overrides})
t_start = time.time()
print(f"backend {backend}; methods {methods}; train config {cfg}")""",
    """#md
## 1. The benchmark (seeded; written to `benchmark/` with the world)""",
    """config = sx.resolve_config(synth_config)
world = synth.generate_world(config)
bench = synth.generate_benchmark(config, world)
synth.save_benchmark(bench, ctx.path("benchmark"), world)
desc = synth.describe(bench)
print(json.dumps(config.to_dict()))
evals = sx.eval_records(bench, eval_per_task_synth, seed)
eval_features = pd.DataFrame([sx.item_features(r) for r in evals])
print(f"{len(world.facts)} facts; evaluated items: {len(evals)} "
      f"({dict(eval_features.split.value_counts())})")
pd.DataFrame({k: [json.dumps(v)] for k, v in desc.items()}).T.rename(columns={0: "value"})""",
    """#md
How often the facts an evaluation question needs were seen in training (`min_exposure`: the fewest training
questions stating one of its facts), by split and number of hops:""",
    """eval_features.groupby(["split", "hops", "min_exposure"]).size().unstack(fill_value=0)""",
    """#md
## 2. Teacher outputs (train questions only) and the students

`SynthTeacher` refuses test and ood records. Every method trains from the base student with the preset's
recipe; adapters are cached under `students/` by their inputs.""",
    """from transformers import AutoTokenizer

from nesylib.curriculum import Schedule
from nesylib.experiment import KardKnowledge
from nesylib.formats import examples_for
from nesylib.knowledge import generate_knowledge
from nesylib.models import resolve_model
from nesylib.nesycd import retrieved_knowledge, se_training_examples
from nesylib.skintern import training_budget
from nesylib.train import train_lora

teacher = synth.SynthTeacher(world)
train_rows = synth.rationale_records(bench["train"], teacher)
if len(train_rows) != len(bench["train"]):
    raise RuntimeError(f"the teacher failed on {len(bench['train']) - len(train_rows)} train items")
tok = AutoTokenizer.from_pretrained(resolve_model(student))
spec = sx.synth_task_spec(train_rows, tok)
print("generation caps per task:", dict(spec.max_new_tokens_by_task) if max_new_tokens is None else max_new_tokens)
knowledge = {}
if {"kard", "kaft", "skintern"} & set(methods):
    knowledge, failures = generate_knowledge(bench["train"], teacher)
    if failures:
        raise RuntimeError(f"knowledge failed for {len(failures)} items: {failures[:3]}")
    runs.write_jsonl(ctx.path("knowledge.jsonl"), [{"uid": u, "knowledge": k} for u, k in knowledge.items()])
timing, train_metrics, results, inserted, extra = {}, {}, {}, {}, {}


def fit(method, examples):
    out = students.student_dir(ctx.dir.parent, f"synth-{method}", examples, cfg, student)
    t0 = time.time()
    res = train_lora(student, examples, cfg, out)
    timing[f"{method}_train_s"] = round(time.time() - t0, 1)
    train_metrics[method] = {k: res.metrics.get(k) for k in ("steps", "final_loss", "seconds", "tokens_seen",
                                                              "tokens_per_s")}
    print(f"{method}: {'cached' if res.cached else 'trained'}, {res.metrics.get('steps')} steps, "
          f"loss {res.metrics.get('final_loss')}, {timing[f'{method}_train_s']} s")
    return res.adapter_dir


def score(method, adapter, records, knowledge_fn=None, name=None):
    t0 = time.time()
    res = sx.evaluate_method(method, student, adapter, records, ctx.path("eval", name or method),
                             knowledge=knowledge_fn, spec=spec, batch_size=eval_batch_size,
                             max_new_tokens=max_new_tokens, seed=seed)
    timing[f"{name or method}_eval_s"] = round(time.time() - t0, 1)
    print(f"{name or method}: accuracy {res.accuracy:.3f} on {len(records)} items, "
          f"{timing[f'{name or method}_eval_s']} s{' (stored answers reused)' if 'reused_from' in res.meta else ''}")
    return res""",
    """#md
### Std-CoT (and NesyCD's S_P, the same student)""",
    """if {"std", "nesycd"} & set(methods):
    std_adapter = fit("std", examples_for("std", train_rows))
    if "std" in methods:
        results["std"] = score("std", std_adapter, evals)""",
    """#md
### NesyCD: S_P's errors on the training questions → knowledge base → S_E → retrieval at test time""",
    """if "nesycd" in methods:
    from nesylib.data import subsample

    demo_recs = subsample(bench["train"], demo_items_per_task, seed)  # as in 02: a seeded share per task
    sp = score("std", std_adapter, demo_recs, name="nesycd_sp_train")
    kb, errors, corrects = sx.nesycd_kb(sp, demo_recs, teacher, student_name=f"S_P {student}")
    kb.save(ctx.path("nesycd", "kb.jsonl"))
    extra["nesycd"] = {"sp_items": len(demo_recs), "sp_train_accuracy": sp.accuracy, "errors": len(errors), "corrects": len(corrects),
                       "kb_entries": len(kb), "kb_failures": len(kb.failures)}
    print(extra["nesycd"])
    se_adapter = fit("nesycd", se_training_examples(train_rows, kb))
    inserted["nesycd"] = retrieved_knowledge(evals, kb, k_retrieve=k_retrieve, k_insert=k_insert)
    results["nesycd"] = score("nesycd", se_adapter, evals, lambda r: inserted["nesycd"][r["uid"]])""",
    """#md
### KARD (and KA-FT): BM25 passages from the pool of the training items' knowledge (D19)""",
    """if {"kard", "kaft"} & set(methods):
    kard = KardKnowledge(train_rows, knowledge, k=kard_k)
    passages = {r["uid"]: kard.test(r) for r in evals}
    for m in [m for m in ("kard", "kaft") if m in methods]:
        adapter = fit(m, examples_for(m, train_rows, kard.train))
        inserted[m] = {u: "\\n".join(p) for u, p in passages.items()}
        results[m] = score(m, adapter, evals, lambda r: passages[r["uid"]])""",
    """#md
### SKIntern: knowledge and demos decay over the stages; the student answers from the question alone""",
    """if "skintern" in methods:
    from nesylib.compress import make_compressor

    schedule = Schedule(T=stages_T, max_demos=max_demos)
    comp = make_compressor(compressor, model_name=student)
    budget = training_budget(len(train_rows), cfg, stages_T)  # the Std-CoT steps over the stages (D17)
    t0 = time.time()
    stages, stage_reports, comp_report = sx.skintern_stages(train_rows, knowledge, schedule, comp,
                                                            budget["total_steps"], tok, cfg.cutoff_len, seed)
    timing["skintern_compress_s"] = round(time.time() - t0, 1)
    del comp
    extra["skintern"] = {"budget": budget, "stages": stage_reports, "compression": comp_report}
    display(pd.DataFrame(stage_reports)[["stage", "steps", "keep_ratio", "n_demos", "knowledge_words_mean",
                                          "prompt_tokens_mean", "items_shortened"]])
    results["skintern"] = score("skintern", fit("skintern", stages), evals)""",
    """#md
### Other baselines (answer-only FT, the multi-task ones, the untrained base model)""",
    """for m in [m for m in methods if m in ("ft", "mt-cot", "mt-re", "cascod", "base")]:
    adapter = None if m == "base" else fit(m, examples_for(m, train_rows))
    results[m] = score(m, adapter, evals)
timing["total_s"] = round(time.time() - t_start, 1)
timing""",
    """#md
## 3. Results: accuracy with 95% bootstrap CIs, paired differences against Std-CoT

Floors: chance (25% on the multiple-choice families, 0 on unit conversions, whose answers are free
numbers) and a heuristic that picks the option occurring in the most training rationales together with a
name from the question (multiple-choice items only; no reasoning, no fact chaining).
`facts_in_output`: share of the needed fact sentences the student wrote; `facts_in_knowledge`: share
contained in the knowledge inserted into the prompt (retrieval methods).""",
    """items = []
for m, res in results.items():
    items += sx.item_rows(m, res.rows, evals, world, inserted.get(m))
runs.write_jsonl(ctx.path("items.jsonl"), items)
heur = sx.cooccurrence_baseline(train_rows, evals, world, seed)
chance = pd.DataFrame(sx.chance_rows(evals))
items_df = pd.DataFrame(items)
by_split = sx.accuracy_by(items, ["split"])
mc_split = sx.accuracy_by([i for i in items if i["mc"]] + heur, ["split"])
paired = sx.paired_vs(items, "std") if "std" in results else pd.DataFrame()


def cell(df, method, split):
    r = df[(df.method == method) & (df.split == split)]
    return None if r.empty else r.iloc[0]


rows = []
for m in list(results) + ["cooccurrence", "chance"]:
    row = {"method": sx.LABELS[m], "method_id": m}
    for s in ("test", "ood"):
        if m == "chance":
            sel = chance[chance.split == s]
            row[s] = float(sel.expected.mean())
            row[f"{s}_mc"] = float(sel[sel.mc].expected.mean())
            continue
        r, rm = cell(by_split, m, s), cell(mc_split, m, s)
        if r is not None:
            row[s], row[f"{s}_ci"], row[f"{s}_n"] = r.accuracy, [r.ci_low, r.ci_high], int(r.n)
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
        row["prefill_tmacs"] = sum(v["prefill_tmacs"] for v in results[m].summary["flops"].values())
        row["train_s"], row["eval_s"] = timing.get(f"{m}_train_s"), timing.get(f"{m}_eval_s")
    rows.append(row)
table = pd.DataFrame(rows)
table.to_csv(ctx.path("synth_results.csv"), index=False)


def fmt(v, ci=None):
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return f"{100 * v:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if isinstance(ci, list) else "")


pretty = pd.DataFrame([{
    "method": r["method"], "test": fmt(r.get("test"), r.get("test_ci")), "ood": fmt(r.get("ood"), r.get("ood_ci")),
    "test MC": fmt(r.get("test_mc"), r.get("test_mc_ci")), "ood MC": fmt(r.get("ood_mc"), r.get("ood_mc_ci")),
    "Δ test vs Std-CoT": fmt(r.get("test_diff_vs_std"), r.get("test_diff_ci")),
    "Δ ood vs Std-CoT": fmt(r.get("ood_diff_vs_std"), r.get("ood_diff_ci")),
    "no answer": fmt(r.get("no_answer_rate")), "facts in output": fmt(r.get("facts_in_output")),
    "facts in knowledge": fmt(r.get("facts_in_knowledge"))} for r in rows])
ctx.path("synth_results.md").write_text(
    f"Synthetic benchmark, student {student}, {len(evals)} items (accuracy %, 95% CI)\\n\\n"
    + sx.markdown_table(pretty.to_dict("records"), list(pretty.columns)))
pretty""",
    """#md
### Where each method wins and loses: by fact exposure, hops, family, split""",
    """def pivot(df, col):
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
    display(pivot(df, col))""",
    """#md
Wins and losses against Std-CoT on the same items (paired bootstrap difference, percentage points):""",
    """wins = pd.concat([sx.paired_vs(items, "std", by=g).rename(columns={g: "group"}).assign(by=g)
                  for g in ("min_exposure", "hops", "task")]) if "std" in results else pd.DataFrame()
if len(wins):
    display(wins.assign(diff=lambda d: d.apply(lambda r: f"{100 * r['diff']:+.0f} [{100 * r.ci_low:+.0f}, "
                                                        f"{100 * r.ci_high:+.0f}]", axis=1))
            .pivot(index=["by", "group"], columns="method", values="diff"))""",
    """#md
Retrieval methods: accuracy when the inserted knowledge contains every needed fact, some, or none.""",
    """retr = items_df[items_df.method.isin(list(inserted))].copy()
if len(retr):
    retr["knowledge_has"] = pd.cut(retr.facts_in_knowledge, [-0.01, 0.0, 0.999, 1.0], labels=["none", "some", "all"])
    by_coverage = retr.groupby(["method", "knowledge_has"], observed=True).agg(
        n=("correct", "size"), accuracy=("correct", "mean")).reset_index()
    display(by_coverage)
else:
    by_coverage = pd.DataFrame()""",
    """#md
## 4. Plots""",
    """labels = [sx.LABELS[m] for m in results]
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
    ax.plot(d.min_exposure, d.accuracy, "o-" if m != "cooccurrence" else "x--", color=f"C{i}", label=sx.LABELS[m])
    ax.fill_between(d.min_exposure, d.ci_low, d.ci_high, color=f"C{i}", alpha=0.12)
ax.set_xticks(sorted(by_exposure.min_exposure.unique()))
ax.set_xlabel("training questions stating the least-seen needed fact")
ax.set_ylabel("accuracy (test + ood)")
ax.set_ylim(0, 1)
ax.legend(fontsize=8)
ax.set_title("Accuracy vs fact exposure (the co-occurrence heuristic: MC items only)")
fig.tight_layout()
fig.savefig(ctx.path("accuracy_vs_exposure.png"), dpi=120)
plt.show()""",
    """def records(df):
    return json.loads(df.to_json(orient="records")) if len(df) else []


ctx.save_results({
    "student": student, "backend": backend, "train_config": vars(cfg), "synth_config": config.to_dict(),
    "benchmark": desc, "eval_items": len(evals), "rows": records(table), "paired_vs_std": records(paired),
    "by_exposure": records(by_exposure), "by_hops": records(by_hops), "by_task": records(by_task),
    "by_split_exposure": records(by_split_exposure), "retrieval_coverage": records(by_coverage),
    "paired_by_group": records(wins),
    "train_metrics": train_metrics, "extra": extra, "timing": timing,
    "generation_caps": dict(spec.max_new_tokens_by_task) if max_new_tokens is None else max_new_tokens})""",
])
