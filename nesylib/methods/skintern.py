"""SKIntern stage data: P-INTER examples for each curriculum stage (method.md §4, D15-D17).

At stage t every train item becomes one example: its stage-t compressed knowledge
(``summarydec{t}``), ``schedule.n_demos(t)`` demos of the same task (their ``rationale`` as the
demo answer), then the question; the target is the item's own ``rationale``. At t = T there is no
knowledge and no demo, so the prompt is exactly P-STD, the inference prompt (D17).

Training is not done here. ``progressive_plan`` returns, stage by stage, the examples and the
number of optimiser steps; the training engine runs them with ONE adapter, ONE optimiser and ONE
cosine schedule over the summed steps (D17):

    from nesylib.training.engine import Stage, TrainConfig, steps_for, train_lora
    cfg = TrainConfig(...)
    plan = progressive_plan(train, knowledge_stages, Schedule(), total_steps=steps_for(len(train), 10, cfg),
                            tokenizer=tok, cutoff_len=cfg.cutoff_len)
    train_lora("smollm2-135m", [Stage(p.examples, p.steps, name=f"t{p.stage}") for p in plan], cfg, out_dir)

Notebook glue (04_skintern_curriculum):
    training_budget(n, cfg, T)        D17's total steps (the Std-CoT budget) and its split over the stages
    stage_losses(metrics)             per-stage training loss from train_lora's loss curve and stage ends
    plan_table(plan, ...)             the per-stage table (compression, demos, cutoff fitting, MACs, loss)
    inference_stage_prompts(test, ...) stage-t prompts for test items (what inference costs without internalising)
    prompt_cost_table(sets, ...)      prefill MACs / inference FLOPs of prompt styles on the same items, as ratios
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from nesylib.methods import prompts
from nesylib.methods.curriculum import Schedule, steps_per_stage
from nesylib.methods.demos import CachedEmbedder, Embed, fit_prompt, select_demos
from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import Example


def _rationale(r: dict) -> str:
    text = r.get("rationale")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"train record {r.get('uid')!r} has no 'rationale' (the teacher CoT): SKIntern "
                        f"uses it as the target and as demo answers")
    return text


def stage_examples(train_records: list[dict], knowledge_stages: dict[str, dict[str, str]], schedule: Schedule,
                   t: int, demo_mode: str = "random", seed: int = 42, tokenizer=None, cutoff_len: int | None = None,
                   embedder: Embed | None = None) -> tuple[list[Example], dict]:
    """The stage-t training examples (one per train record, in order) and a report.

    ``knowledge_stages[uid][f"summarydec{t}"]`` is the item's knowledge at stage t (a missing uid
    means no knowledge, counted in the report). With ``tokenizer`` and ``cutoff_len`` each prompt is
    fitted so that prompt + target + EOS fits (demos dropped first, then knowledge words, D16).
    Report keys: stage, keep_ratio, n_demos, items, demos_mean, demo_shortfall (items whose task had
    fewer candidates than n_demos), no_knowledge, knowledge_words_mean, and with a tokenizer
    prompt_tokens_mean, target_tokens_mean; with a cutoff also demos_dropped,
    knowledge_words_dropped, items_shortened, over_cutoff.
    """
    n = schedule.n_demos(t)  # validates t
    if cutoff_len is not None and tokenizer is None:
        raise ConfigError("cutoff_len needs a tokenizer to count tokens; pass tokenizer= as well")
    if demo_mode == "similar" and embedder is not None and not isinstance(embedder, CachedEmbedder):
        embedder = CachedEmbedder(embedder)
    by_task: dict[tuple, list[dict]] = defaultdict(list)
    for r in train_records:
        by_task[(r.get("dataset"), r["task"])].append(r)
    key = f"summarydec{t}"
    examples = []
    rep = {"stage": t, "keep_ratio": round(schedule.keep_ratio(t), 4), "n_demos": n, "items": len(train_records),
           "demos_mean": 0.0, "demo_shortfall": 0, "no_knowledge": 0, "knowledge_words_mean": 0.0}
    sums = defaultdict(float)
    for r in train_records:
        target = _rationale(r)
        stages = knowledge_stages.get(r["uid"])
        if stages is None:
            knowledge = ""
            rep["no_knowledge"] += 1
        elif key not in stages:
            raise DataError(f"knowledge for {r['uid']!r} has no {key!r} (has {sorted(stages)})")
        else:
            knowledge = stages[key]
        demos = select_demos(r, by_task[(r.get("dataset"), r["task"])], n, demo_mode, seed, t, embedder)
        rep["demo_shortfall"] += len(demos) < n
        demos = [{"question": d["question"], "rationale": _rationale(d)} for d in demos]
        if cutoff_len is not None:
            target_len = len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            prompt, info = fit_prompt(r, knowledge, demos, tokenizer, cutoff_len, target_len)
            sums["demos_dropped"] += info["demos_dropped"]
            sums["knowledge_words_dropped"] += info["knowledge_words_dropped"]
            sums["items_shortened"] += bool(info["demos_dropped"] or info["knowledge_words_dropped"])
            sums["over_cutoff"] += not info["fits"]
            demos = demos[:len(demos) - info["demos_dropped"]]
            kw = len(knowledge.split()) - info["knowledge_words_dropped"]
        else:
            prompt = prompts.inter(r, knowledge, demos)
            kw = len(knowledge.split())
        sums["demos"] += len(demos)
        sums["kw"] += kw
        if tokenizer is not None:
            sums["prompt_tokens"] += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            sums["target_tokens"] += len(tokenizer(target, add_special_tokens=False)["input_ids"])
        examples.append(Example(prompt=prompt, target=target, group="main", uid=r["uid"]))
    m = max(len(train_records), 1)
    rep["demos_mean"] = round(sums["demos"] / m, 3)
    rep["knowledge_words_mean"] = round(sums["kw"] / m, 1)
    if tokenizer is not None:
        rep["prompt_tokens_mean"] = round(sums["prompt_tokens"] / m, 1)
        rep["target_tokens_mean"] = round(sums["target_tokens"] / m, 1)
    if cutoff_len is not None:
        for k in ("demos_dropped", "knowledge_words_dropped", "items_shortened", "over_cutoff"):
            rep[k] = int(sums[k])
    return examples, rep


@dataclass
class StagePlan:
    stage: int
    steps: int               # optimiser steps to run on this stage's examples
    examples: list[Example]
    report: dict


def progressive_plan(train_records: list[dict], knowledge_stages: dict[str, dict[str, str]], schedule: Schedule,
                     total_steps: int, demo_mode: str = "random", seed: int = 42, tokenizer=None,
                     cutoff_len: int | None = None, embedder: Embed | None = None) -> list[StagePlan]:
    """A ``StagePlan`` per stage 0..T: its examples and its share of ``total_steps`` (D17).

    The caller trains the stages in order with one continuing adapter, optimiser and cosine schedule
    over ``total_steps`` (see the module docstring); the last stage's prompts equal P-STD, the
    inference prompt. ``report`` is ``stage_examples``' report plus ``steps``.
    """
    steps = steps_per_stage(total_steps, schedule.T)  # fail before rendering anything
    if embedder is not None and not isinstance(embedder, CachedEmbedder):
        embedder = CachedEmbedder(embedder)  # shared by all stages: each question embedded once
    plan = []
    for t in schedule.stages:
        examples, rep = stage_examples(train_records, knowledge_stages, schedule, t, demo_mode, seed,
                                       tokenizer, cutoff_len, embedder)
        rep["steps"] = steps[t]
        plan.append(StagePlan(stage=t, steps=steps[t], examples=examples, report=rep))
    return plan


# ------------------------------------------------------------------------------- notebook glue
def training_budget(n_items: int, config, T: int, epochs: float | None = None) -> dict:
    """D17's step budget: the Std-CoT run's optimiser steps on the same items, split over stages 0..T.

    The Std-CoT steps are ``steps_for(n_items, epochs, config)`` with ``epochs`` if given, else
    ``config.max_steps`` when set (a step-capped preset: Std-CoT trains exactly that many), else
    ``config.epochs``. A budget smaller than the T+1 stages is raised to T+1 (one step a stage) and
    flagged. Returns {std_cot_steps, total_steps, per_stage, source, raised}.
    """
    from nesylib.training.engine import steps_for

    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ConfigError(f"n_items must be a positive integer, got {n_items!r}")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0:
            raise ConfigError(f"epochs_budget must be a number > 0 or None, got {epochs!r}")
        std, source = steps_for(n_items, epochs, config), f"epochs_budget={epochs}"
    elif config.max_steps:
        std, source = int(config.max_steps), f"train.max_steps={config.max_steps}"
    else:
        std, source = steps_for(n_items, config.epochs, config), f"train.epochs={config.epochs}"
    total = max(std, T + 1)
    return {"std_cot_steps": std, "total_steps": total, "per_stage": steps_per_stage(total, T),
            "source": source, "raised": total > std}


def stage_losses(metrics: dict) -> list[dict]:
    """Per-stage training loss from ``train_lora`` metrics (``loss_curve`` and ``stage_ends``).

    A logged loss at step s belongs to the stage whose steps include s. Trainer logs the mean over
    the ``logging_steps`` before s, so only ``logging_steps=1`` keeps stages apart exactly.
    Rows: stage, first_step, last_step, logged (points), loss_first, loss_last, loss_mean.
    """
    ends = metrics.get("stage_ends")
    curve = metrics.get("loss_curve")
    if not ends or curve is None:
        raise ConfigError("metrics need 'stage_ends' and 'loss_curve' "
                          "(the metrics of nesylib.training.engine.train_lora)")
    rows, start = [], 0
    for t, end in enumerate(ends):
        pts = [float(loss) for step, loss in curve if start < step <= end]
        rows.append({"stage": t, "first_step": start + 1, "last_step": end, "logged": len(pts),
                     "loss_first": round(pts[0], 4) if pts else None,
                     "loss_last": round(pts[-1], 4) if pts else None,
                     "loss_mean": round(sum(pts) / len(pts), 4) if pts else None})
        start = end
    return rows


def plan_table(plan: list[StagePlan], compression_report: list[dict] | None = None,
               n_linear_params: int | None = None, losses: list[dict] | None = None) -> list[dict]:
    """One row per stage from a ``progressive_plan`` (its reports: nothing is rendered again).

    Adds the compressor's achieved ratios (``compress_stages`` report), the mean prefill MACs of
    a stage prompt, N_linear x prompt tokens (D22; needs a plan built with a tokenizer), and the
    training loss per stage (``stage_losses``).
    """
    comp = {row["stage"]: row for row in (compression_report or [])}
    loss = {row["stage"]: row for row in (losses or [])}
    keys = ("keep_ratio", "n_demos", "demos_mean", "demo_shortfall", "knowledge_words_mean", "no_knowledge",
            "prompt_tokens_mean", "target_tokens_mean", "demos_dropped", "knowledge_words_dropped",
            "items_shortened", "over_cutoff", "steps")
    rows = []
    for p in plan:
        row = {"stage": p.stage, "achieved_ratio": comp.get(p.stage, {}).get("achieved_ratio"),
               "achieved_token_ratio": comp.get(p.stage, {}).get("achieved_token_ratio")}
        row.update({k: p.report[k] for k in keys if k in p.report})
        if n_linear_params is not None:
            if "prompt_tokens_mean" not in p.report:
                raise ConfigError("n_linear_params needs prompt token counts: build the plan with tokenizer=")
            row["prefill_macs_mean"] = round(n_linear_params * p.report["prompt_tokens_mean"])
        if p.stage in loss:
            row.update(loss_mean=loss[p.stage]["loss_mean"], loss_last=loss[p.stage]["loss_last"])
        rows.append(row)
    return rows


def inference_stage_prompts(test_records: list[dict], train_records: list[dict], knowledge: dict[str, str],
                            schedule: Schedule, t: int = 0, demo_mode: str = "random", seed: int = 42,
                            tokenizer=None, cutoff_len: int | None = None,
                            embedder: Embed | None = None) -> tuple[list[str], dict]:
    """Stage-t prompts for *test* items: what answering would cost without internalisation.

    A test item has no knowledge of its own, so it gets the knowledge of its nearest train item
    (BM25 over the knowledge texts, query = task description + question, as KARD's retrieval,
    D19), cut to the stage's keep-ratio by leading words, and ``schedule.n_demos(t)`` demos of the
    same task from ``train_records`` (none for tasks without train items, e.g. OOD sets). With a
    tokenizer and ``cutoff_len`` each prompt is fitted to the cutoff (no target to reserve).
    Report: items, demos_mean, no_demos, no_knowledge, items_shortened.
    """
    from nesylib.methods.compress import WordTruncationCompressor
    from nesylib.knowledge.retrieval import BM25Retriever

    n = schedule.n_demos(t)
    if cutoff_len is not None and tokenizer is None:
        raise ConfigError("cutoff_len needs a tokenizer to count tokens; pass tokenizer= as well")
    pool = [(uid, text) for uid, text in knowledge.items() if text.strip()]
    index = BM25Retriever([text for _, text in pool]) if pool else None
    if demo_mode == "similar" and embedder is not None and not isinstance(embedder, CachedEmbedder):
        embedder = CachedEmbedder(embedder)
    by_task: dict[tuple, list[dict]] = defaultdict(list)
    for r in train_records:
        by_task[(r.get("dataset"), r["task"])].append(r)
    cut = WordTruncationCompressor()
    out, rep = [], {"items": len(test_records), "demos_mean": 0.0, "no_demos": 0, "no_knowledge": 0,
                    "items_shortened": 0}
    total_demos = 0
    for r in test_records:
        hits = index.search(f"{r['task_description']} {r['question']}", k=1) if index else []
        k = cut.compress([pool[hits[0].docid][1]], schedule.keep_ratio(t))[0].text if hits else ""
        rep["no_knowledge"] += not k.strip()
        demos = select_demos(r, by_task[(r.get("dataset"), r["task"])], n, demo_mode, seed, t, embedder)
        demos = [{"question": d["question"], "rationale": _rationale(d)} for d in demos]
        if cutoff_len is not None:
            prompt, info = fit_prompt(r, k, demos, tokenizer, cutoff_len, 0)
            rep["items_shortened"] += bool(info["demos_dropped"] or info["knowledge_words_dropped"])
            total_demos += len(demos) - info["demos_dropped"]
        else:
            prompt = prompts.inter(r, k, demos)
            total_demos += len(demos)
        rep["no_demos"] += len(demos) == 0
        out.append(prompt)
    rep["demos_mean"] = round(total_demos / max(len(test_records), 1), 3)
    return out, rep


def prompt_cost_table(prompt_sets: dict[str, list[str]], tokenizer, dims: dict, groups: list[str] | None = None,
                      generated_tokens: list[int] | None = None, reference: str = "skintern") -> list[dict]:
    """Per-item inference cost of several prompt styles for the same items (D22), with ratios.

    ``prompt_sets[name][i]`` is style ``name``'s prompt for item i; ``dims`` is
    ``nesylib.evaluation.flops.model_dims(model)``. Token counts use ``tokenizer(p, add_special_tokens=False)``
    as the generation engine does. Rows per group (``groups[i]``, e.g. the dataset, then "all")
    and style: items, prompt_tokens_mean, prefill_macs_mean (N_linear x tokens, the authors'
    "tflops"), prefill_ratio (the style's MACs over ``reference``'s); with ``generated_tokens``
    (one count per item, the same for every style: the reference's own outputs) also
    inference_flops_mean (2 x N_linear x all tokens + attention) and inference_ratio.
    """
    from nesylib.evaluation.flops import inference_flops, prefill_macs

    if reference not in prompt_sets:
        raise ConfigError(f"reference {reference!r} is not one of the prompt sets {sorted(prompt_sets)}")
    n = len(prompt_sets[reference])
    for name, ps in prompt_sets.items():
        if len(ps) != n:
            raise ConfigError(f"prompt set {name!r} has {len(ps)} prompts, {reference!r} has {n}: one per item each")
    groups = list(groups) if groups is not None else ["all"] * n
    gen = list(generated_tokens) if generated_tokens is not None else None
    if len(groups) != n or (gen is not None and len(gen) != n):
        raise ConfigError(f"groups and generated_tokens need one entry per item ({n})")
    tokens = {name: [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in ps]
              for name, ps in prompt_sets.items()}
    labels = list(dict.fromkeys(groups)) + (["all"] if set(groups) != {"all"} else [])
    rows = []
    for g in labels:
        idx = [i for i in range(n) if g == "all" or groups[i] == g]
        macs = {name: sum(prefill_macs(dims["n_linear"], tokens[name][i]) for i in idx) for name in prompt_sets}
        flops = ({name: sum(inference_flops(None, tokens[name][i], gen[i], dims=dims) for i in idx)
                  for name in prompt_sets} if gen is not None else None)
        for name in prompt_sets:
            row = {"group": g, "prompt": name, "items": len(idx),
                   "prompt_tokens_mean": round(sum(tokens[name][i] for i in idx) / len(idx), 1),
                   "prefill_macs_mean": round(macs[name] / len(idx)),
                   "prefill_ratio": round(macs[name] / macs[reference], 3) if macs[reference] else None}
            if flops is not None:
                row["inference_flops_mean"] = round(flops[name] / len(idx))
                row["inference_ratio"] = round(flops[name] / flops[reference], 3) if flops[reference] else None
            rows.append(row)
    return rows
