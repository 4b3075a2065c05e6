"""A student's evaluation, stored beside its adapter and reused when the same student is asked
the same prompts again (Std-CoT in 05 = NesyCD's S_P in 02/03; 08's students in 06)."""
from __future__ import annotations

import json
from pathlib import Path

# The evaluation code whose bytes are part of the cache key, relative to the package root (nesylib/).
_EVAL_CODE = ("generation/generate.py", "evaluation/evaluate.py", "training/adapters.py", "evaluation/extract.py",
              "evaluation/metrics.py", "evaluation/flops.py", "generation/vllm_engine.py", "generation/engines.py",
              "generation/stopping.py", "generation/decode.py")


def numeric_setting(batch_size: int, engine: str = "hf") -> dict:
    """What decides the floating-point path of a batched evaluation besides its inputs. Greedy
    outputs are batch-invariant in exact arithmetic, but with several threads a matmul's blocking
    (and so its last bits) depends on the batch shape, the thread count, the kernels the CPU
    dispatches to and the torch build; a near-tie between two tokens can then flip. Part of the
    evaluation key, so a stored evaluation is reused only where it would come out the same.

    ``engine`` ("hf" or "vllm", after ``engines.resolve_engine``): another engine runs other kernels, so
    it and its version join the setting; for "hf" nothing is added (keys of stored evaluations stay)."""
    import torch

    out = {"batch_size": int(batch_size), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu": torch.backends.cpu.get_cpu_capability(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if engine != "hf":
        from importlib.metadata import PackageNotFoundError, version

        try:
            out[engine] = version(engine)
        except PackageNotFoundError:
            out[engine] = None
        out["engine"] = engine
    return out


def evaluation_key(method: str, base: str, adapter_dir, eval_sets: dict[str, list[dict]], knowledge=None,
                   max_new_tokens: int | None = None, seed: int = 42, specs: dict | None = None,
                   batch_size: int = 16, engine: str = "hf") -> str:
    """What determines an evaluation's outputs: the student (base + adapter fingerprint), every
    prompt, the caps and seed, the task specs (versions, or the whole of a spec passed in
    ``specs``), the evaluation code and the numeric setting (``numeric_setting``, with the engine)."""
    from dataclasses import asdict

    from nesylib.evaluation.evaluate import get_task_spec
    from nesylib.generation.engines import resolve_engine
    from nesylib.pipeline.runs import file_hash, stable_hash
    from nesylib.methods.students import inference_prompts

    build, _ = inference_prompts(method, knowledge)
    records = [r for recs in eval_sets.values() for r in recs]
    student = "base"
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        result = adapter_dir.parent / "train_result.json"
        student = (json.loads(result.read_text())["fingerprint"] if result.is_file()
                   else file_hash(adapter_dir / "adapter_model.safetensors"))
    here = Path(__file__).parents[1]  # the package root: _EVAL_CODE names files relative to it
    return stable_hash({
        "method": method, "base": str(base), "student": student, "max_new_tokens": max_new_tokens, "seed": seed,
        "prompts": stable_hash([[r["uid"], build(r)] for r in records]),
        "specs": {ds: (asdict(specs[ds]) if specs and ds in specs else get_task_spec(ds).version)
                  for ds in sorted({r["dataset"] for r in records})},
        "code": [file_hash(here / f) for f in _EVAL_CODE],
        "numeric": numeric_setting(batch_size, resolve_engine(engine)),
    })


def evaluate_cached(method: str, base: str, adapter_dir, eval_sets: dict[str, list[dict]], cache_root, *,
                    knowledge=None, batch_size: int = 16, max_new_tokens: int | None = None, seed: int = 42,
                    specs: dict | None = None, copy_to=None, engine: str = "hf"):
    """``students.evaluate_student`` into ``cache_root/<method>-<evaluation_key>``, or the stored
    result when that folder is complete (its summary.json is written last). Notebooks that
    evaluate the same student on the same prompts (S_P in 03 and Std-CoT in 05, NesyCD's S_E in
    08 and 06) then pay once. ``copy_to``: a folder (replaced) that gets a copy of the evaluation,
    so a run folder stays browsable. ``engine``: "hf", "vllm" or "auto" (``engines.get_engine``); a vLLM
    evaluation is stored under another key than a transformers one. Returns (EvalResult, folder, cached)."""
    import shutil

    from nesylib.data.benchmarks import read_jsonl
    from nesylib.evaluation.evaluate import EvalResult
    from nesylib.generation.engines import resolve_engine
    from nesylib.methods.students import evaluate_student

    engine = resolve_engine(engine)
    key = evaluation_key(method, base, adapter_dir, eval_sets, knowledge, max_new_tokens, seed, specs, batch_size,
                         engine)
    out = Path(cache_root) / f"{method}-{key}"
    summary_file, samples = out / "summary.json", out / "samples.jsonl"
    cached = summary_file.is_file() and samples.is_file()
    if cached:
        stored = json.loads(summary_file.read_text())
        result = EvalResult(read_jsonl(samples), stored["summary"], stored["meta"], samples)
    else:
        result = evaluate_student(method, base, adapter_dir, eval_sets, out, knowledge=knowledge,
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, specs=specs,
                                  engine=engine)
    if copy_to is not None:
        shutil.rmtree(copy_to, ignore_errors=True)
        shutil.copytree(out, copy_to)
    return result, out, cached
