"""Train and evaluate one student method: the few lines every method notebook shares.

``inference_prompts(method)`` gives the evaluation prompt builder of each method (D11: the same
builders as training); ``train_student`` trains a method's adapter into a folder keyed by its
inputs (the training engine skips an identical finished run, so notebooks share students such as
Std-CoT = NesyCD's S_P); ``evaluate_student`` scores it on every evaluation slice in one batched
generation pass and writes the sample log.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from nesylib.methods import prompts
from nesylib.errors import ConfigError

INFERENCE_METHODS = ("base", "std", "ft", "mt-cot", "mt-re", "kard", "kaft", "cascod", "kb", "skintern")
METHOD_LABELS = {"base": "Base (no fine-tuning)", "std": "Std-CoT", "ft": "Answer-only FT", "mt-cot": "MT-CoT",
                 "mt-re": "Step-by-step", "kard": "KARD", "kaft": "KA-FT", "cascod": "CasCoD", "kb": "NesyCD",
                 "skintern": "SKIntern"}


def inference_prompts(method: str, knowledge: Callable[[dict], object] | None = None):
    """(build_prompt, two_stage or None) for evaluating ``method``.

    ``knowledge(record)`` supplies retrieved passages (kard, kaft: a list) or the inserted KB text
    (kb: a string). SKIntern and the base model answer from P-STD, the question alone.
    """
    if method not in INFERENCE_METHODS:
        raise ConfigError(f"method={method!r}; choose one of {INFERENCE_METHODS}")
    if method in ("kard", "kaft", "kb") and knowledge is None:
        raise ConfigError(f"method={method!r} needs a knowledge(record) function for retrieval at test time")
    if method in ("base", "std", "skintern"):
        return prompts.std, None
    if method == "ft":
        return prompts.ft, None
    if method == "mt-cot":
        return (lambda r: prompts.mt_cot(r)[1]), None
    if method == "mt-re":
        return (lambda r: prompts.mt_re(r)[1]), None
    if method == "kard":
        return (lambda r: prompts.kard(r, knowledge(r))), None
    if method == "kaft":
        return (lambda r: prompts.kaft(r, knowledge(r))), None
    if method == "kb":
        return (lambda r: prompts.kb(r, knowledge(r))), None
    # CasCoD: generate a rationale, then answer from the training layout of stage 2 (D18)
    return prompts.cascod, lambda r, stage1: prompts.cascod(r, _rationale_part(stage1))


def _rationale_part(text: str) -> str:
    """Stage-1 output up to any answer sentence the student wrote anyway."""
    return text.split(prompts.ANSWER_MARKER)[0].strip()


def train_student(method: str, examples, config, out_dir: Path, base: str):
    """Train (or reuse) ``method``'s adapter; returns nesylib.training.config.TrainResult."""
    from nesylib.training.engine import train_lora

    return train_lora(base, examples, config, Path(out_dir))


def evaluate_student(method: str, base: str, adapter_dir, eval_sets: dict[str, list[dict]], out_dir: Path, *,
                     knowledge=None, batch_size: int = 16, max_new_tokens: int | None = None, seed: int = 42,
                     specs: dict | None = None, engine: str = "hf", progress: bool = True):
    """Evaluate a student (merged adapter, D20) on all slices in one pass; writes samples.jsonl. ``progress``: a
    text bar of the sequences generated (stderr: the notebook's output, or the terminal under ``nesylib run``).
    ``specs`` replaces the TaskSpec of a dataset (e.g. the synthetic benchmark's per-task caps).
    ``engine``: "hf" (the model on the GPU when there is one), "vllm" (the adapter served as a LoRA on a
    vLLM engine kept for the process, nesylib.generation.vllm_engine.VLLMEngine) or "auto"."""
    from nesylib.evaluation.evaluate import evaluate
    from nesylib.generation.engines import resolve_engine

    build, two_stage = inference_prompts(method, knowledge)
    model, tok = _student_for(base, adapter_dir, resolve_engine(engine))
    records = [r for recs in eval_sets.values() for r in recs]
    return evaluate(model, tok, records, build, method=method, out_dir=out_dir, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, two_stage=two_stage,
                    stage2_max_new_tokens=16 if two_stage else None, specs=specs, seed=seed, progress=progress,
                    engine=resolve_engine(engine))


def _student_for(base: str, adapter_dir, engine: str):
    """(model, tokenizer) for ``engine``: the merged student (on the GPU when there is one) for "hf";
    for "vllm" the student's files (``ModelFiles``: nothing loaded but configs and the tokenizer)."""
    import torch

    from nesylib.training.engine import load_student

    if engine == "hf":
        return load_student(base, adapter_dir, device="cuda" if torch.cuda.is_available() else None)
    from transformers import AutoTokenizer

    from nesylib.generation.vllm_engine import ModelFiles

    files = ModelFiles.load(base, adapter_dir)
    has_tok = adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file()
    return files, AutoTokenizer.from_pretrained(str(adapter_dir) if has_tok else files.base)


def result_row(method: str, result, train_metrics: dict | None = None, **extra) -> dict:
    """One row of the main results table: accuracy with CI per dataset, ID/OOD averages, FLOPs."""
    s = result.summary
    row = {"method": METHOD_LABELS.get(method, method), "method_id": method, **extra}
    for ds, v in s["datasets"].items():
        row[f"{ds}"] = v["accuracy"]
        row[f"{ds}_ci"] = [v["ci_low"], v["ci_high"]]
        row[f"{ds}_n"] = v["n"]
    row["id_avg"], row["ood_avg"] = s.get("id_average"), s.get("ood_average")
    row["no_answer_rate"], row["well_formed_rate"] = s.get("no_answer_rate"), s.get("well_formed_rate")
    row["strict_id_avg"] = s["strict"]["id_average"]
    row["prefill_tmacs"] = sum(v["prefill_tmacs"] for v in s["flops"].values())
    row["inference_tflops"] = sum(v["inference_tflops"] for v in s["flops"].values())
    row["items"] = len(result.rows)
    row["eval_seconds"] = s["tokens"]["seconds"]
    if train_metrics:
        row["train_seconds"] = train_metrics.get("seconds")
        row["train_final_loss"] = train_metrics.get("final_loss")
    return row


def student_dir(run_root, method: str, examples, config, base: str) -> Path:
    """A folder named by what determines the adapter, shared by every notebook of the run.

    Two notebooks that train the same method on the same examples with the same recipe (Std-CoT
    in 05 and NesyCD's S_P in 02) get the same folder, and the engine reuses the finished run.
    """
    from dataclasses import asdict

    from nesylib.files import stable_hash
    from nesylib.training.config import TRACKING_ONLY, config_key

    if examples and hasattr(examples[0], "examples"):  # curriculum stages: each stage's steps and examples
        content = [[st.steps, [asdict(e) for e in st.examples]] for st in examples]
    else:
        content = [asdict(e) for e in examples]
    # logging settings leave the weights alone: the same folder with or without them (world_size: keyed from 2)
    cfg = config_key(config, TRACKING_ONLY)
    key = stable_hash({"base": base, "config": cfg, "examples": content})
    return Path(run_root) / "students" / f"{method}-{key}"


def train_config(params: dict):
    """nesylib.training.config.TrainConfig from a preset's ``train`` dict; unknown keys are named."""
    import dataclasses

    from nesylib.training.engine import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"parameter 'train' has unknown key(s) {unknown}; allowed: {sorted(known)}")
    return TrainConfig(**params).validate()
