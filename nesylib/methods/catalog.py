"""Every distillation method, defined once, for the real benchmarks and the synthetic one alike.

A notebook makes one ``Lab`` (the student, the training recipe, where students and evaluations
go) and calls one function per method. The function builds the method's training examples,
trains (or finds) its adapter, and evaluates it with the method's inference prompt:

    lab = Lab(student, cfg, run_root=ctx.dir.parent, out_dir=ctx.dir, specs={"synth": spec})
    res = plain_method(lab, "std", train_rows, eval_sets)                  # base, ft, std, mt-cot, mt-re, cascod
    res = kard_method(lab, "kard", train_rows, eval_sets, KardKnowledge(...))   # kard, kaft
    res = oracle_method(lab, train_rows, eval_sets, facts_of)              # upper bound: the needed facts
    sp = plain_method(lab, "std", ...); errs = nesycd_errors(lab, sp.adapter, train_rows)   # NesyCD 1-2
    kb = build_kb(errs.errors, tutor)                                      # NesyCD 3 (nesylib.knowledge.kb)
    res = nesycd_student(lab, train_rows, kb, eval_sets, ...)              # NesyCD 5-6
    res = skintern_method(lab, train_rows, knowledge, eval_sets, ...)      # SKIntern

Each returns a ``MethodRun``: the adapter, the evaluation, the knowledge each evaluated prompt
carried (uid -> text, for coverage analyses) and what the method reports about itself.
Students are stored under ``<run_root>/students/<name>-<key of inputs>`` and their evaluations
beside them, so notebooks that run the same method on the same data share one student.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from nesylib.errors import ConfigError

# method id -> (label, inference prompt id in nesylib.methods.students)
METHODS = {
    "base": ("Base (no fine-tuning)", "base"), "ft": ("Answer-only FT", "ft"), "std": ("Std-CoT", "std"),
    "mt-cot": ("MT-CoT", "mt-cot"), "mt-re": ("Step-by-step", "mt-re"), "cascod": ("CasCoD", "cascod"),
    "kard": ("KARD", "kard"), "kaft": ("KA-FT", "kaft"), "nesycd": ("NesyCD", "kb"),
    "skintern": ("SKIntern", "skintern"), "oracle": ("Oracle knowledge (upper bound)", "kard"),
}
PLAIN = ("base", "ft", "std", "mt-cot", "mt-re", "cascod")


def label(method: str) -> str:
    return METHODS[method][0] if method in METHODS else method


def check_methods(methods, allowed=tuple(METHODS), name: str = "methods") -> list[str]:
    if not isinstance(methods, (list, tuple)):
        raise ConfigError(f"parameter {name!r} must be a list of method ids, got {methods!r}")
    bad = [m for m in methods if m not in allowed]
    if bad:
        raise ConfigError(f"parameter {name!r} names unknown method(s) {bad}; choose from {list(allowed)}")
    return list(methods)


@dataclass
class MethodRun:
    method: str
    adapter: Path | None
    result: object                      # nesylib.evaluation.evaluate.EvalResult
    inserted: dict[str, str] | None = None   # uid -> knowledge text in the evaluated prompt
    info: dict = field(default_factory=dict)


@dataclass
class Lab:
    """What every method of one notebook shares: student, recipe, evaluation settings, folders."""
    student: str
    config: object                      # nesylib.training.config.TrainConfig
    run_root: Path                      # students/ is shared by every notebook of the run
    out_dir: Path                       # this notebook's folder: eval/<name>/ gets each evaluation
    specs: dict | None = None           # dataset -> TaskSpec override (the synthetic caps)
    batch_size: int = 16
    max_new_tokens: int | None = None
    seed: int = 42
    engine: str = "hf"                  # evaluation engine: hf | vllm | auto (nesylib.generation.engines.get_engine)
    timing: dict = field(default_factory=dict)
    train_metrics: dict = field(default_factory=dict)
    trained: dict = field(default_factory=dict)   # name -> nesylib.training.config.TrainResult (full metrics)
    log: bool = True

    def say(self, msg: str) -> None:
        if self.log:
            print(msg, flush=True)

    def fit(self, name: str, examples) -> Path:
        """Train (or find) the adapter for ``examples`` (Examples or train.Stage list)."""
        from nesylib.methods.students import student_dir
        from nesylib.training.engine import train_lora

        out = student_dir(self.run_root, name, examples, self.config, self.student)
        t0 = time.time()
        res = train_lora(self.student, examples, self.config, out)
        self.trained[name] = res
        self.timing[f"{name}_train_s"] = round(time.time() - t0, 1)
        m = res.metrics
        self.train_metrics[name] = {k: m.get(k) for k in ("steps", "final_loss", "seconds", "tokens_seen",
                                                          "tokens_per_s", "target_token_share")}
        self.say(f"{name}: {'cached' if res.cached else 'trained'}, {m.get('steps')} steps, loss "
                 f"{m.get('final_loss')}, {self.timing[f'{name}_train_s']} s")
        return res.adapter_dir

    def score(self, method: str, adapter, eval_sets: dict[str, list[dict]], knowledge=None, name: str | None = None):
        """Evaluate ``adapter`` with ``method``'s inference prompt on every slice; stored beside
        the adapter under a key of its prompts (reused when asked again) and copied to
        ``out_dir/eval/<name>``."""
        from nesylib.evaluation.cache import evaluate_cached
        from nesylib.methods.students import evaluate_student

        name = name or method
        infer = METHODS[method][1] if method in METHODS else method
        kw = dict(knowledge=knowledge, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                  seed=self.seed, specs=self.specs, engine=self.engine)
        t0 = time.time()
        copy_to = Path(self.out_dir) / "eval" / name
        if adapter is None:
            result = evaluate_student(infer, self.student, None, eval_sets, copy_to, **kw)
            reused = False
        else:
            result, _, reused = evaluate_cached(infer, self.student, adapter, eval_sets, Path(adapter).parent / "evals",
                                                copy_to=copy_to, **kw)
        self.timing[f"{name}_eval_s"] = round(time.time() - t0, 1)
        n = sum(len(v) for v in eval_sets.values())
        self.say(f"{name}: accuracy {result.accuracy:.3f} on {n} items, {self.timing[f'{name}_eval_s']} s"
                 f"{' (stored answers reused)' if reused else ''}")
        return result


# ----------------------------------------------------------------------------------- methods
def plain_method(lab: Lab, method: str, train_rows: list[dict], eval_sets) -> MethodRun:
    """A method without knowledge: the untrained base model, answer-only FT, Std-CoT, MT-CoT,
    Step-by-step, CasCoD (its two-stage inference comes with its prompt id)."""
    from nesylib.methods.formats import examples_for

    check_methods([method], PLAIN, "method")
    adapter = None if method == "base" else lab.fit(method, examples_for(method, train_rows))
    return MethodRun(method, adapter, lab.score(method, adapter, eval_sets))


def kard_method(lab: Lab, method: str, train_rows: list[dict], eval_sets, passages) -> MethodRun:
    """KARD (CoT) or KA-FT (answer) with passages from ``passages`` (an experiment.KardKnowledge):
    its training passages for the train items, retrieval for the evaluated ones (D19)."""
    from nesylib.methods.formats import examples_for

    check_methods([method], ("kard", "kaft"), "method")
    adapter = lab.fit(method, examples_for(method, train_rows, passages.train))
    test = {r["uid"]: passages.test(r) for recs in eval_sets.values() for r in recs}
    result = lab.score(method, adapter, eval_sets, knowledge=lambda r: test[r["uid"]])
    return MethodRun(method, adapter, result, {u: "\n".join(p) for u, p in test.items()},
                     {"train_passages": {u: "\n".join(p) for u, p in passages.train.items()}})


def oracle_method(lab: Lab, train_rows: list[dict], eval_sets, facts_of) -> MethodRun:
    """The upper bound: the KARD prompt holding exactly the facts each question needs
    (``facts_of(record) -> list of sentences``), at training and at test time. Only a benchmark
    that knows its questions' facts (the synthetic one) has it."""
    from nesylib.methods.formats import examples_for

    train_k = {r["uid"]: list(facts_of(r)) for r in train_rows}
    adapter = lab.fit("oracle", examples_for("kard", train_rows, train_k))
    test = {r["uid"]: list(facts_of(r)) for recs in eval_sets.values() for r in recs}
    result = lab.score("oracle", adapter, eval_sets, knowledge=lambda r: test[r["uid"]])
    return MethodRun("oracle", adapter, result, {u: "\n".join(p) for u, p in test.items()})


@dataclass
class NesycdErrors:
    errors: list[dict]
    corrects: list[dict]
    result: object  # S_P's evaluation on the training questions
    items: list[dict]


def nesycd_errors(lab: Lab, sp_adapter, train_rows: list[dict], per_task: int | None = None) -> NesycdErrors:
    """NesyCD step 2: S_P answers the training questions in P-STD (every one by default;
    ``per_task`` caps them per task) and is scored; its wrong answers are the KB's material."""
    from nesylib.data.benchmarks import subsample
    from nesylib.methods.nesycd import demonstrations_from_eval

    items = subsample(train_rows, per_task, lab.seed) if per_task else list(train_rows)
    by_ds: dict[str, list[dict]] = {}
    for r in items:
        by_ds.setdefault(r["dataset"], []).append(r)
    result = lab.score("std", sp_adapter, by_ds, name="nesycd_sp_train")
    errors, corrects = demonstrations_from_eval(items, result)
    return NesycdErrors(errors, corrects, result, items)


def nesycd_student(lab: Lab, train_rows: list[dict], kb, eval_sets, k_retrieve: int = 3, k_insert: int = 1,
                   train_knowledge: str = "own", keep_own: float = 0.0, index_text: str = "question",
                   retriever: str = "bm25", step_budget: str = "own") -> MethodRun:
    """NesyCD steps 5-6: S_E from the base model on D14's concatenation (P-KB errors, P-STD all,
    P-FT all; one cross-entropy over their target tokens), then retrieval at test time.

    ``train_knowledge``: "own" gives each error item its own analysis (the authors' choice);
    "retrieved" retrieves it as at test time, the item's own entry allowed for a seeded share
    ``keep_own`` (see experiment.KardKnowledge). ``index_text``: what entries are found by.
    ``step_budget``: see ``nesycd_fit``."""
    from nesylib.methods.nesycd import retrieved_knowledge

    examples = nesycd_examples(train_rows, kb, k_retrieve, k_insert, train_knowledge, keep_own, index_text,
                               retriever, lab.seed)
    train_inserted = {e.uid: e.prompt for e in examples if e.kind == "kb"}
    adapter = nesycd_fit(lab, examples, len(train_rows), step_budget)
    records = [r for recs in eval_sets.values() for r in recs]
    inserted = retrieved_knowledge(records, kb, k_retrieve=k_retrieve, k_insert=k_insert) if len(kb) else \
        {r["uid"]: "" for r in records}
    result = lab.score("nesycd", adapter, eval_sets, knowledge=lambda r: inserted[r["uid"]])
    return MethodRun("nesycd", adapter, result, inserted, {"train_prompts": train_inserted,
                                                           "kb_entries": len(kb), "examples": len(examples)})


SE_STEP_BUDGETS = ("own", "std")


def nesycd_fit(lab: Lab, examples: list, n_questions: int, step_budget: str = "own") -> Path:
    """Train S_E on its concatenated set. ``step_budget`` "own": the recipe's epochs over that set
    (about 2.8x the Std-CoT steps: P-KB errors + P-STD all + P-FT all, the authors' setting); "std":
    the Std-CoT student's steps on the ``n_questions`` training questions (as SKIntern's budget, D17),
    so S_E sees a seeded sample of its set in which each format keeps its share."""
    from nesylib.training.engine import Stage, run_steps

    if step_budget not in SE_STEP_BUDGETS:
        raise ConfigError(f"parameter 'se_step_budget' must be one of {list(SE_STEP_BUDGETS)}, got {step_budget!r}")
    if step_budget == "own":
        return lab.fit("nesycd", examples)
    steps = run_steps(n_questions, lab.config)
    return lab.fit("nesycd", [Stage(list(examples), steps=steps, name="main")])


def nesycd_examples(train_rows: list[dict], kb, k_retrieve: int = 3, k_insert: int = 1, train_knowledge: str = "own",
                    keep_own: float = 0.0, index_text: str = "question", retriever: str = "bm25",
                    seed: int = 42) -> list:
    """S_E's training Examples (D14) with the KB indexed for retrieval (see nesycd_student)."""
    from nesylib.methods.nesycd import se_training_examples

    if train_knowledge not in ("own", "retrieved"):
        raise ConfigError(f"parameter 'se_train_knowledge' must be 'own' or 'retrieved', got {train_knowledge!r}")
    if len(kb):
        kb.index(retriever, text=index_text)
    return se_training_examples(train_rows, kb, own_summary=train_knowledge == "own",
                                keep_own=keep_own if train_knowledge == "retrieved" else None,
                                k_retrieve=k_retrieve, k_insert=k_insert, seed=seed)


def skintern_method(lab: Lab, train_rows: list[dict], knowledge: dict[str, str], eval_sets, schedule, compressor,
                    cutoff_len: int, epochs: float | None = None) -> MethodRun:
    """SKIntern (D15-D17): each item's knowledge compressed to the stage keep-ratios, demos pruned
    stage by stage, one adapter through all stages on the Std-CoT step budget, then question-only
    (P-STD) inference."""
    from nesylib.methods.compress import compress_stages
    from nesylib.methods.skintern import progressive_plan, training_budget
    from transformers import AutoTokenizer

    from nesylib.models import resolve_model
    from nesylib.training.engine import Stage

    tok = AutoTokenizer.from_pretrained(resolve_model(lab.student))
    budget = training_budget(len(train_rows), lab.config, schedule.T, epochs)
    t0 = time.time()
    stages_k, comp = compress_stages(knowledge, schedule, compressor, tok)
    lab.timing["skintern_compress_s"] = round(time.time() - t0, 1)
    plan = progressive_plan(train_rows, stages_k, schedule, budget["total_steps"], seed=lab.seed, tokenizer=tok,
                            cutoff_len=cutoff_len)
    adapter = lab.fit("skintern", [Stage(p.examples, p.steps, name=f"t{p.stage}") for p in plan])
    return MethodRun("skintern", adapter, lab.score("skintern", adapter, eval_sets),
                     info={"budget": budget, "stages": [p.report for p in plan], "compression": comp,
                           "plan": plan})
