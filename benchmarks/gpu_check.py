"""`make gpu-check`: what a GPU machine does with this project, measured in one run of about 8 minutes.

1. Training backends side by side: Unsloth and transformers+peft train the same student (SmolLM2-135M),
   on the same synthetic-benchmark Std-CoT rows with the same LoRA recipe (r=16/alpha=32 all-linear,
   20 steps of 16 items), each in its own process (Unsloth patches transformers at import). Reported:
   steady-state training tokens/s, peak GPU memory, and the Unsloth / peft ratios. Without Unsloth
   installed that half is recorded as skipped and the check goes on.
2. Evaluation engines: the vLLM engine (nesylib.generation.vllm_engine.VLLMEngine) against the transformers engine on
   32 synthetic test items with their per-task caps, greedy, for the base model and for the adapter of
   part 1 (served as a LoRA on the same vLLM engine): identical outputs, or how many differ and the
   first differing pair. Both run in float32 (bfloat16 if vLLM refuses float32; the dtype is recorded).
3. The paper preset's notebooks end to end on a tiny slice: ``python -m nesylib run --preset paper`` with
   the ``--set`` overrides of PAPER_SLICE (the offline student and teachers, 2 BBH tasks, a few items,
   8 optimiser steps per student, 48 new tokens), in a fresh run root.

Writes results/gpu/gpu_check.json (device, versions, each part's numbers or its error) and prints a
summary. Exits 1 at once, before importing anything heavy, when there is no CUDA device; exits 1 after
the run when a part failed.

    make gpu-check                       # or: .venv/bin/python benchmarks/gpu_check.py [--budget-s 480]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "gpu" / "gpu_check.json"
WORK = ROOT / "results" / "runs" / "gpu-check"  # ignored by git: adapters and the paper slice's run root
NO_GPU = "no CUDA device: make gpu-check needs a GPU"
RESULT = "GPU_CHECK_RESULT "  # a worker's result line (training logs share its stdout)
STUDENT = "smollm2-135m"
TRAIN = {"lora_r": 16, "lora_alpha": 32, "max_steps": 20, "per_device_batch": 16, "grad_accum": 1, "cutoff_len": 512,
         "warmup_ratio": 0.0, "logging_steps": 1000, "save_steps": 10_000}
EVAL_ITEMS_PER_TASK = 8  # x 4 synthetic tasks = 32 items
PAPER_SLICE = [
    "common.student=smollm2-135m",                     # offline; the preset's TinyLlama needs the hub
    "common.bbh_tasks=[navigate, date_understanding]",
    "common.train_per_task=4",
    "common.gsm8k_train=4",
    "common.eval_per_task={bbh: 1, gsm8k: 1, agieval: 1, arc-e: 1, arc-c: 1, gsm8k_plus: 1}",
    "common.train.max_steps=8",                        # >= the SKIntern stages below
    "common.max_new_tokens=48",
    "01_teacher_distillation.teacher_backend=replay",  # recorded rationales: no API key, no network
    "01_teacher_distillation.teacher_model=auto",
    "02_kb_construction.tutor_backend=derived",
    "04_skintern_curriculum.knowledge_backend=derived",
    "04_skintern_curriculum.stages_T=2",
    "04_skintern_curriculum.max_demos=1",
    "08_synthetic_benchmark.synth_config=smoke",
    "08_synthetic_benchmark.eval_per_task_synth={test: 2, ood: 1}",
    "08_synthetic_benchmark.stages_T=2",
    "08_synthetic_benchmark.max_demos=1",
    "06_ablations.k_values=[0, 1]",
    "06_ablations.train_fractions=[0.5]",
    "06_ablations.schedules=[[linear, 2]]",
    "06_ablations.content_variants=[examples_only]",
]


def gpu_present() -> bool:
    """Whether torch sees a CUDA device; without an NVIDIA driver node or nvidia-smi, no without importing torch."""
    if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi")):
        return False
    import torch

    return torch.cuda.is_available()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "accelerate", "unsloth", "vllm", "nesylib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _worker(kind: str, arg: str, timeout: float) -> dict:
    """Run ``--worker kind arg`` in a fresh process; it prints its result as one JSON line after RESULT."""
    cmd = [sys.executable, __file__, "--worker", kind, arg]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, timeout), cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {time.time() - t0:.0f} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith(RESULT)]
    if p.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT):])
    return {"error": f"exit {p.returncode}: " + "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])}


# ------------------------------------------------------------------------------------ part 1
def train_rows():
    """Std-CoT Examples of the synthetic benchmark's 480 training questions (programmatic teacher)."""
    from nesylib.methods.formats import examples_for
    from nesylib.synth import SynthConfig, SynthTeacher, generate_benchmark, generate_world, rationale_records

    world = generate_world(SynthConfig())
    bench = generate_benchmark(world.config, world)
    return examples_for("std", rationale_records(bench["train"], SynthTeacher(world)))


def train_worker(backend: str) -> dict:
    from nesylib.training.backends import pick_backend

    pick_backend(backend)  # before transformers: Unsloth patches it at import
    from nesylib.training.engine import TrainConfig, train_lora

    out = WORK / f"train-{backend}"
    m = train_lora(STUDENT, train_rows(), TrainConfig(backend=backend, **TRAIN), out, resume=False).metrics
    keep = ("backend", "steps", "seconds", "tokens_seen", "tokens_per_s", "tokens_per_s_steady",
            "seconds_per_step_steady", "peak_gpu_mem_gib", "bf16_autocast", "final_loss")
    return {**{k: m.get(k) for k in keep}, "adapter": str(out / "adapter")}


def part_train(deadline: float) -> dict:
    import importlib.util

    res = {"student": STUDENT, "config": TRAIN, "data": "synthetic benchmark, 480 Std-CoT training rows"}
    for backend in ("unsloth", "hf"):
        if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
            res[backend] = {"skipped": "the unsloth package is not installed (pip install -e '.[gpu]')"}
            continue
        res[backend] = _worker("train", backend, min(240.0, deadline - time.time()))
    u, h = res["unsloth"], res["hf"]
    if u.get("tokens_per_s_steady") and h.get("tokens_per_s_steady"):
        res["unsloth_over_hf_tokens_per_s"] = round(u["tokens_per_s_steady"] / h["tokens_per_s_steady"], 2)
    if u.get("peak_gpu_mem_gib") and h.get("peak_gpu_mem_gib"):
        res["unsloth_over_hf_peak_mem"] = round(u["peak_gpu_mem_gib"] / h["peak_gpu_mem_gib"], 2)
    return res


# ------------------------------------------------------------------------------------ part 2
def eval_items():
    """(records, Std-CoT prompts, per-task caps) of 32 seeded synthetic test items."""
    from transformers import AutoTokenizer

    from nesylib.methods import prompts
    from nesylib.data.benchmarks import subsample
    from nesylib.models import resolve_model
    from nesylib.synth import SynthConfig, SynthTeacher, generate_benchmark, generate_world, rationale_records
    from nesylib.synth.experiment import synth_task_spec

    world = generate_world(SynthConfig())
    bench = generate_benchmark(world.config, world)
    tok = AutoTokenizer.from_pretrained(resolve_model(STUDENT))
    spec = synth_task_spec(rationale_records(bench["train"], SynthTeacher(world)), tok)
    recs = subsample(bench["test"], EVAL_ITEMS_PER_TASK, 42)
    return recs, [prompts.std(r) for r in recs], [spec.cap(r["task"]) for r in recs], tok


def _compare(prompts, hf, vl) -> dict:
    differ = [i for i, (a, b) in enumerate(zip(hf, vl)) if (a.token_ids, a.text) != (b.token_ids, b.text)]
    out = {"items": len(prompts), "identical": not differ, "n_differ": len(differ)}
    if differ:
        i = differ[0]
        at = next((k for k, (x, y) in enumerate(zip(hf[i].token_ids, vl[i].token_ids)) if x != y),
                  min(len(hf[i].token_ids), len(vl[i].token_ids)))
        out["first_differing"] = {"item": i, "prompt_tail": prompts[i][-160:], "first_token_that_differs": at,
                                  "hf": {"text": hf[i].text, "stopped_by": hf[i].stopped_by},
                                  "vllm": {"text": vl[i].text, "stopped_by": vl[i].stopped_by}}
    return out


def generate_worker(adapter: str) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawn
    import torch

    from nesylib.generation import vllm_engine
    from nesylib.generation.engines import get_engine
    from nesylib.generation.generate import generate_batch
    from nesylib.generation.vllm_engine import ModelFiles
    from nesylib.models import resolve_model
    from nesylib.training.engine import load_student

    recs, ps, caps, tok = eval_items()
    base = resolve_model(STUDENT)
    students = {"base": None, **({"adapter": adapter} if adapter else {})}
    res = {"items": len(ps), "tasks": sorted({r["task"] for r in recs}), "max_new_tokens": sorted(set(caps))}
    errors = []
    for dtype in ("float32", "bfloat16"):
        hf, t_hf = {}, {}
        for name, ad in students.items():
            model, _ = load_student(base, ad, dtype=dtype, device="cuda")
            t0 = time.perf_counter()
            hf[name] = generate_batch(model, tok, ps, max_new_tokens=caps, batch_size=32, progress=False)
            t_hf[name] = time.perf_counter() - t0
            del model
            torch.cuda.empty_cache()
        try:
            eng = get_engine("vllm", dtype=dtype, gpu_memory_utilization=0.5, enforce_eager=True)
            out = {}
            for name, ad in students.items():
                t0 = time.perf_counter()
                vl = eng(ModelFiles.load(base, ad), tok, ps, max_new_tokens=caps, progress=False)
                out[name] = {**_compare(ps, hf[name], vl), "served": eng.last_served,
                             "seconds_hf": round(t_hf[name], 2), "seconds_vllm": round(time.perf_counter() - t0, 2),
                             "generated_tokens_hf": sum(o.generated_tokens for o in hf[name]),
                             "generated_tokens_vllm": sum(o.generated_tokens for o in vl)}
            out["engines_built"] = len(vllm_engine._VLLM["engines"])  # base + adapter on one engine: 1
            return {**res, "dtype": dtype, **out, **({"float32_error": errors[0]} if errors else {})}
        except Exception as e:  # noqa: BLE001 - recorded; bfloat16 is tried once after a float32 failure
            errors.append(f"{type(e).__name__}: {str(e)[:400]}")
            vllm_engine.release_vllm_engines()
    return {**res, "error": " | ".join(errors)}


def part_generate(adapter: str | None, deadline: float) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "the vllm package is not installed (pip install vllm)"}
    return _worker("generate", adapter or "", min(300.0, deadline - time.time()))


# ------------------------------------------------------------------------------------ part 3
def part_paper(deadline: float) -> dict:
    root = WORK / "paper-slice"
    shutil.rmtree(root, ignore_errors=True)  # end to end: nothing cached from an earlier check
    cmd = [sys.executable, "-m", "nesylib", "run", "--preset", "paper", "--run-root", str(root)]
    for s in PAPER_SLICE:
        cmd += ["--set", s]
    t0 = time.time()
    timeout = max(60.0, deadline - time.time())
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:  # what it printed so far still tells how far it got
        rc, text = None, e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    res = {"command": " ".join(["python -m nesylib run --preset paper"] + [f"--set '{s}'" for s in PAPER_SLICE]),
           "seconds": round(time.time() - t0, 1), "returncode": rc, "run_root": str(root),
           "notebooks_done": sorted(f.parent.name for f in root.glob("*/results.json")),
           "output_tail": text.strip().splitlines()[-25:]}
    if rc != 0:
        res["error"] = f"timed out after {timeout:.0f} s" if rc is None else f"nesylib run exited {rc}"
    return res


# ------------------------------------------------------------------------------------ report
def summary(rep: dict) -> list[str]:
    lines = [f"gpu-check on {rep['device']} ({rep['seconds']:.0f} s): torch {rep['versions']['torch']}, "
             f"unsloth {rep['versions']['unsloth']}, vllm {rep['versions']['vllm']}"]
    t = rep["train"]
    for b in ("unsloth", "hf"):
        r = t[b]
        lines.append(f"  train {b:8s}: " + (r.get("skipped") or r.get("error") or
                     f"{r['tokens_per_s_steady']} tok/s steady, peak {r['peak_gpu_mem_gib']} GiB, {r['seconds']} s"))
    if "unsloth_over_hf_tokens_per_s" in t:
        lines.append(f"  unsloth / peft: {t['unsloth_over_hf_tokens_per_s']}x tokens/s, "
                     f"{t.get('unsloth_over_hf_peak_mem')}x peak memory")
    g = rep["generate"]
    if "skipped" in g or "error" in g:
        lines.append(f"  vLLM vs transformers: {g.get('skipped') or g.get('error')}")
    else:
        for name in ("base", "adapter"):
            if name in g:
                r = g[name]
                lines.append(f"  vLLM vs transformers, {name} ({g['dtype']}, served as {r['served']['mode']}): "
                             + ("identical greedy outputs" if r["identical"] else
                                f"{r['n_differ']} of {r['items']} outputs DIFFER (first: item "
                                f"{r['first_differing']['item']})") + f"; {r['seconds_hf']} s vs {r['seconds_vllm']} s")
    p = rep["paper_slice"]
    lines.append(f"  paper preset, tiny slice: {p.get('error') or 'ok'} in {p['seconds']} s, "
                 f"{len(p['notebooks_done'])} notebooks done")
    lines.append(f"written to {OUT.relative_to(ROOT)}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time budget (default 8 min)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, arg = args.worker
        res = train_worker(arg) if kind == "train" else generate_worker(arg)
        print(RESULT + json.dumps(res, default=str))
        return 0
    if not gpu_present():
        print(NO_GPU, file=sys.stderr)
        return 1
    import torch

    t0 = time.time()
    deadline = t0 + args.budget_s
    rep = {"device": torch.cuda.get_device_name(0), "versions": {**versions(), "cuda": torch.version.cuda},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": args.budget_s}
    rep["train"] = part_train(deadline)
    rep["generate"] = part_generate(rep["train"]["hf"].get("adapter"), deadline)
    rep["paper_slice"] = part_paper(deadline)
    rep["seconds"] = round(time.time() - t0, 1)
    failed = [k for k in ("train", "generate", "paper_slice")
              if "error" in rep[k] or any(isinstance(v, dict) and "error" in v for v in rep[k].values())]
    rep["failed_parts"] = failed
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rep, indent=1, default=str) + "\n")
    print("\n".join(summary(rep)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
