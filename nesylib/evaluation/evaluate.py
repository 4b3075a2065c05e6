"""Evaluation runner: task specs as data, generation, scoring, sample logs (method.md §6, D20-D22).

A ``TaskSpec`` holds what the evaluation of one benchmark needs besides the model and the prompt
builder: where its records come from, the generation cap, the stop strings, the scoring rule and
a version to bump whenever any of these change (as lm-evaluation-harness does).

Generation caps (calibration.md): ``max(320, ceil(1.3 x longest target))`` in new tokens,
where a target is a filtered teacher rationale plus EOS, counted with the SmolLM2 tokenizer:
the D2 Codex rationales per BBH task and the D3 GSM8K reference rationales (GSM-Plus reuses the
GSM8K cap). AGIEval and ARC have no teacher targets, so they get the floor of 320. The test
suite recomputes the table from the data. The authors' protocol is 1024 new tokens for every
set (D20): pass ``max_new_tokens=1024``. Sequences that loop stop early either way.

``evaluate`` writes one JSON line per item to ``out_dir/samples.jsonl`` and the summary to
``out_dir/summary.json``, both atomically.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from nesylib.errors import ConfigError, DataError
from nesylib.training.adapters import _merged_adapter, merge_lora  # noqa: F401 (merge_lora: public here too)
from nesylib.generation.generate import Sampling
from nesylib.generation.stopping import DEFAULT_STOP_STRINGS

FLOOR_NEW_TOKENS = 320
TARGET_MARGIN = 1.3
EXTRACTORS = ("authors",)


def cap_from_targets(target_token_lengths: Sequence[int], floor: int = FLOOR_NEW_TOKENS,
                     margin: float = TARGET_MARGIN) -> int:
    """The calibration.md cap: ``max(floor, ceil(margin x the longest target))``."""
    lengths = list(target_token_lengths)
    return max(int(floor), math.ceil(margin * max(lengths))) if lengths else int(floor)


# Longest filtered target per BBH task (SmolLM2 tokens, EOS included) -> cap_from_targets.
# Longest targets: geometric_shapes 858, formal_fallacies 701, dyck_languages 537,
# word_sorting 510, logical_deduction_seven_objects 492, tracking_shuffled_objects_seven 490.
BBH_MAX_NEW_TOKENS = {
    "boolean_expressions": 320, "causal_judgement": 320, "date_understanding": 320, "disambiguation_qa": 354,
    "dyck_languages": 699, "formal_fallacies": 912, "geometric_shapes": 1116, "hyperbaton": 528,
    "logical_deduction_five_objects": 325, "logical_deduction_seven_objects": 640,
    "logical_deduction_three_objects": 320, "movie_recommendation": 320, "multistep_arithmetic_two": 400,
    "navigate": 366, "object_counting": 320, "penguins_in_a_table": 320, "reasoning_about_colored_objects": 320,
    "ruin_names": 329, "salient_translation_error_detection": 436, "snarks": 320, "sports_understanding": 320,
    "temporal_sequences": 320, "tracking_shuffled_objects_five_objects": 394,
    "tracking_shuffled_objects_seven_objects": 637, "tracking_shuffled_objects_three_objects": 320,
    "web_of_lies": 320, "word_sorting": 663,
}
GSM8K_MAX_NEW_TOKENS = 453  # longest D3 rationale: 348 tokens


@dataclass(frozen=True)
class TaskSpec:
    """How one evaluation set is generated and scored."""
    name: str
    loader: str | None                       # load_dataset_records name; None: records come from elsewhere
    max_new_tokens: int = FLOOR_NEW_TOKENS   # cap for every task of the set ...
    max_new_tokens_by_task: Mapping[str, int] = field(default_factory=dict)  # ... unless its task has its own
    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
    extractor: str = "authors"               # scoring rule: nesylib.evaluation.extract (lenient + strict)
    version: str = "1"
    available: bool = True
    note: str = ""

    def cap(self, task: str) -> int:
        return int(self.max_new_tokens_by_task.get(task, self.max_new_tokens))

    def load(self, split: str = "test", data_dir=None) -> list[dict]:
        """The set's records (nesylib.data.benchmarks); a clear error for an unavailable set."""
        if not self.available:
            raise DataError(f"evaluation set {self.name!r} is unavailable: {self.note}")
        if self.loader is None:
            raise ConfigError(f"evaluation set {self.name!r} has no loader: {self.note}")
        from nesylib.data.benchmarks import load_dataset_records

        return load_dataset_records(self.loader, split, data_dir)


TASK_SPECS: dict[str, TaskSpec] = {
    "bbh": TaskSpec("bbh", "bbh", max(BBH_MAX_NEW_TOKENS.values()), BBH_MAX_NEW_TOKENS),
    "gsm8k": TaskSpec("gsm8k", "gsm8k", GSM8K_MAX_NEW_TOKENS),
    "agieval": TaskSpec("agieval", "agieval", FLOOR_NEW_TOKENS, note="no teacher targets: cap = floor"),
    "arc-e": TaskSpec("arc-e", "arc-e", FLOOR_NEW_TOKENS, note="no teacher targets: cap = floor"),
    "arc-c": TaskSpec("arc-c", "arc-c", FLOOR_NEW_TOKENS, note="no teacher targets: cap = floor"),
    "gsm8k_plus": TaskSpec("gsm8k_plus", "gsm8k_plus", GSM8K_MAX_NEW_TOKENS, note="cap of GSM8K (same style)"),
    "synth": TaskSpec("synth", None, FLOOR_NEW_TOKENS, note="records come from nesylib.synth"),
    "bb": TaskSpec("bb", "bb", available=False,
                   note="BB-sub is not available (method.md D4): its pinned files are not public; report it as n/a"),
}


def custom_task_spec(name: str) -> TaskSpec | None:
    """The spec of a dataset defined by configuration (nesylib.data.custom_data), or None: its cap is the
    entry's ``max_new_tokens`` (default the floor), and its version follows the entry and the data
    file's content, so a changed gold answer or answer type is never scored from a stored evaluation."""
    from nesylib.data.custom_data import fingerprint, lookup
    from nesylib.pipeline.runs import stable_hash

    entry = lookup(name)
    if entry is None:
        return None
    return TaskSpec(name, name, int(entry["max_new_tokens"] or FLOOR_NEW_TOKENS),
                    version=f"custom-{stable_hash(fingerprint({name: entry}))}",
                    note=f"configured dataset, answer type {entry['answer_type']}")


def get_task_spec(name: str) -> TaskSpec:
    """The spec of an evaluation set (built-in or configured); unknown or unavailable sets raise a clear error."""
    spec = TASK_SPECS.get(name) or custom_task_spec(name)
    if spec is None:
        raise ConfigError(f"no TaskSpec for dataset {name!r}; known: {sorted(TASK_SPECS)} "
                          "(pass specs={name: TaskSpec(...)} to evaluate for a new set)")
    if not spec.available:
        raise DataError(f"evaluation set {name!r} is unavailable: {spec.note}")
    return spec


def _scorers(extractor: str):
    if extractor != "authors":
        raise ConfigError(f"TaskSpec.extractor must be one of {EXTRACTORS}, got {extractor!r}")
    from nesylib.evaluation.extract import extract_answer, has_answer, is_correct, is_correct_strict, is_well_formed

    return is_correct, is_correct_strict, extract_answer, has_answer, is_well_formed


# ---------------------------------------------------------------------------------- LoRA
# ------------------------------------------------------------------------------- runner
@dataclass
class EvalResult:
    rows: list[dict]          # one scored row per record, in record order (also in samples.jsonl)
    summary: dict             # nesylib.evaluation.metrics.summarize(rows) + strict accuracy, stops, tokens, FLOPs
    meta: dict                # method, specs, caps, engine, timings
    samples_path: Path | None = None

    @property
    def accuracy(self) -> float:
        return sum(bool(r["correct"]) for r in self.rows) / len(self.rows)


def _check_records(records) -> list[dict]:
    if isinstance(records, dict) or not isinstance(records, Sequence):
        raise ConfigError("records must be a list of record dicts (nesylib.data.benchmarks loaders)")
    records = list(records)
    if not records:
        raise ConfigError("records is empty: nothing to evaluate")
    seen = set()
    for i, r in enumerate(records):
        missing = [k for k in ("uid", "dataset", "task", "question", "answer") if k not in r]
        if missing:
            raise DataError(f"records[{i}] lacks key(s) {missing}")
        if r["uid"] in seen:
            raise DataError(f"records[{i}]: duplicate uid {r['uid']!r}")
        seen.add(r["uid"])
    return records


def _prompts(fn, records, what: str, extra=None) -> list[str]:
    out = []
    for i, r in enumerate(records):
        p = fn(r) if extra is None else fn(r, extra[i])
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{what} returned {type(p).__name__} {p!r:.60} for {r['uid']}; it must return a "
                              "non-empty prompt string")
        out.append(p)
    return out


def _answer_text(stage2_prompt: str, completion: str) -> str:
    """CasCoD's stage-2 completion as an answer statement: the prompt ends with the answer marker,
    so the marker is put back in front of the completion before scoring."""
    from nesylib.methods.prompts import ANSWER_MARKER

    if stage2_prompt.rstrip().endswith(ANSWER_MARKER):
        return f"{ANSWER_MARKER} {completion.lstrip()}"
    return completion


def evaluate(model, tokenizer, records, build_prompt: Callable[[dict], str], *, method: str = "std",
             out_dir=None, batch_size: int = 16, max_new_tokens: int | None = None,
             two_stage: Callable[[dict, str], str] | None = None, stage2_max_new_tokens: int | None = None,
             specs: Mapping[str, TaskSpec] | None = None, engine: str = "hf", sampling: Sampling | None = None,
             seed: int = 42, merge: bool = True, stop_on_repetition: bool = True, add_bos: bool = False,
             progress: bool = True, n_boot: int = 1000) -> EvalResult:
    """Generate for every record, score, log and summarise.

    ``build_prompt(record) -> str`` gives the (stage-1) prompt. ``max_new_tokens`` overrides the
    per-task caps of the specs (``1024`` = the authors' protocol). ``two_stage(record,
    stage1_text) -> str`` enables CasCoD inference: its prompt is generated from once more and
    that completion is the answer; ``prompt_tokens``/``generated_tokens`` then hold one count
    per stage (the FLOPs convention counts both, D22). A PeftModel is evaluated with its
    adapter merged (D20) and unmerged again afterwards, unless ``merge=False``. ``engine="vllm"`` takes
    a ``vllm_engine.ModelFiles`` (base + adapter folder, served as a LoRA) or a model; ``meta["vllm"]`` says
    how it was served. ``add_bos``
    must match the student's training (D11; off by default). ``prompt_tokens`` counts the BOS.
    """
    from nesylib.generation.engines import get_engine
    from nesylib.generation.vllm_engine import vllm_available

    records = _check_records(records)
    spec_of = {}
    for ds in dict.fromkeys(r["dataset"] for r in records):
        spec_of[ds] = specs[ds] if specs and ds in specs else get_task_spec(ds)
        if not spec_of[ds].available:
            raise DataError(f"evaluation set {ds!r} is unavailable: {spec_of[ds].note}")
    stop_sets = {spec.stop_strings for spec in spec_of.values()}
    if len(stop_sets) > 1:
        raise ConfigError(f"records mix datasets with different stop strings {sorted(stop_sets)}; "
                          "evaluate them in separate calls")
    stop_strings = stop_sets.pop()
    scorers = {ds: _scorers(spec.extractor) for ds, spec in spec_of.items()}
    if max_new_tokens is not None and int(max_new_tokens) < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    caps = [int(max_new_tokens) if max_new_tokens else spec_of[r["dataset"]].cap(r["task"]) for r in records]
    gen = get_engine(engine)
    kw = dict(batch_size=batch_size, stop_strings=stop_strings, stop_on_repetition=stop_on_repetition,
              progress=progress, sampling=sampling, seed=seed, add_bos=add_bos)

    prompts = _prompts(build_prompt, records, "build_prompt")
    t0 = time.perf_counter()
    uses_vllm = engine == "vllm" or (engine == "auto" and vllm_available())
    # the vLLM engine serves a PeftModel's adapter itself (as a LoRA, or merged into a copy)
    with _merged_adapter(model, merge and not uses_vllm) as merged:
        outs = gen(model, tokenizer, prompts, max_new_tokens=caps, **kw)
        stage2_prompts = stage2 = None
        if two_stage is not None:
            stage2_prompts = _prompts(two_stage, records, "two_stage", [o.text for o in outs])
            caps2 = [int(stage2_max_new_tokens)] * len(records) if stage2_max_new_tokens else caps
            stage2 = gen(model, tokenizer, stage2_prompts, max_new_tokens=caps2, **kw)
    seconds = time.perf_counter() - t0
    served = getattr(gen, "last_served", None) if uses_vllm else None  # LoRA, merged copy or base: and why

    rows = []
    for i, (rec, out) in enumerate(zip(records, outs)):
        correct_fn, strict_fn, extract_fn, has_answer_fn, well_formed_fn = scorers[rec["dataset"]]
        row = {"uid": rec["uid"], "dataset": rec["dataset"], "task": rec["task"], "method": method,
               "prompt": prompts[i]}
        if stage2 is None:
            final, scored = out, out.text
            row.update(prompt_tokens=out.prompt_tokens, generated_tokens=out.generated_tokens)
        else:
            final = stage2[i]
            scored = _answer_text(stage2_prompts[i], final.text)
            row.update(stage1_output=out.text, stage1_stopped_by=out.stopped_by, stage2_prompt=stage2_prompts[i],
                       prompt_tokens=[out.prompt_tokens, final.prompt_tokens],
                       generated_tokens=[out.generated_tokens, final.generated_tokens])
        q = rec["question"]
        row.update(output=final.text, scored_output=scored, answer=extract_fn(scored, rec["task"]),
                   gold=rec["answer"], correct=bool(correct_fn(scored, rec["answer"], rec["task"], q)),
                   correct_strict=bool(strict_fn(scored, rec["answer"], rec["task"], q)),
                   has_answer=bool(has_answer_fn(scored, rec["task"])), well_formed=bool(well_formed_fn(scored)),
                   stopped_by=final.stopped_by, max_new_tokens=caps[i])
        rows.append(row)

    meta = {"method": method, "engine": engine, "batch_size": batch_size, "sampling": asdict(sampling) if sampling
            else None, "seed": seed, "stop_strings": list(stop_strings), "two_stage": two_stage is not None,
            "add_bos": add_bos, "lora_merged": merged.merged or (served or {}).get("mode") == "merged",
            "vllm": served,
            "max_new_tokens_override": max_new_tokens,
            "specs": {ds: {"version": s.version, "extractor": s.extractor, "max_new_tokens": s.max_new_tokens,
                           "by_task": dict(s.max_new_tokens_by_task)} for ds, s in spec_of.items()},
            "seconds": seconds}
    from nesylib.methods.prompts import PROMPT_VERSION

    meta["prompt_version"] = PROMPT_VERSION
    summary = _summarize(rows, model, seconds, n_boot, seed)
    samples_path = None
    if out_dir is not None:
        from nesylib.pipeline.runs import write_json, write_jsonl

        out_dir = Path(out_dir)
        samples_path = write_jsonl(out_dir / "samples.jsonl", rows)
        write_json(out_dir / "summary.json", {"summary": summary, "meta": meta})
    return EvalResult(rows, summary, meta, samples_path)


def _flat(x) -> int:
    return sum(x) if isinstance(x, list) else int(x)


def _summarize(rows: list[dict], model, seconds: float, n_boot: int, seed: int) -> dict:
    from nesylib.evaluation.metrics import summarize

    summary = summarize(rows, n_boot=n_boot, seed=seed)
    strict = summarize([{**r, "correct": r["correct_strict"]} for r in rows], n_boot=n_boot, seed=seed)
    summary["strict"] = {"datasets": {ds: {k: v[k] for k in ("n", "accuracy", "ci_low", "ci_high")}
                                      for ds, v in strict["datasets"].items()},
                         "id_average": strict["id_average"], "ood_average": strict["ood_average"]}
    summary["stopped_by"] = dict(Counter(r["stopped_by"] for r in rows))
    gen_tokens = sum(_flat(r["generated_tokens"]) for r in rows)
    summary["tokens"] = {"prompt": sum(_flat(r["prompt_tokens"]) for r in rows), "generated": gen_tokens,
                         "seconds": round(seconds, 3), "generated_per_s": gen_tokens / seconds if seconds else None}
    summary["flops"] = _flops(rows, model)
    return summary


def _flops(rows: list[dict], model) -> dict:
    """Per-dataset prefill MACs and inference FLOPs (D22, nesylib.evaluation.flops)."""
    from nesylib.evaluation.flops import flops_for_items

    config = model.config  # the architecture's layers, without LoRA's extra ones
    out = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == ds]
        f = flops_for_items(config, [r["prompt_tokens"] for r in sel], [r["generated_tokens"] for r in sel])
        out[ds] = {k: f[k] for k in ("n_items", "prefill_tmacs", "inference_tflops", "convention")}
    return out
