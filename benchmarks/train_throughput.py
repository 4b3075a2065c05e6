"""Training throughput of the LoRA engine (nesylib.training.engine), fast path beside the reference path.

CPU (default): SmolLM2-135M, Std-CoT examples of real BBH train items (Codex CoTs rewritten to
"Therefore, the answer is", correct ones only), batch 8 items x up to 256 tokens, LoRA r=16
all-linear. fp32 and bf16 autocast run alternately in this one process; the last line is the
bf16 / fp32 ratio of steady-state training tokens/s (non-pad prompt + target tokens per second,
first step excluded).

    .venv/bin/python benchmarks/train_throughput.py --steps 4            # ~2-3 min on 2 cores

GPU (--gpu): the same configuration with the unsloth and the transformers+peft backend, each in
its own process (unsloth patches transformers at import), after one warm-up step; prints tokens/s
and peak GPU memory, and the unsloth / peft tokens/s ratio last.

    python benchmarks/train_throughput.py --gpu --model smollm2-135m --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

TASKS = ("date_understanding", "navigate", "boolean_expressions", "sports_understanding", "web_of_lies",
         "logical_deduction_three_objects", "causal_judgement", "formal_fallacies")


def std_examples(n: int):
    """Std-CoT Examples from BBH train items with their replayed Codex rationales (D2)."""
    from nesylib.data.benchmarks import load_bbh
    from nesylib.methods.formats import examples_for
    from nesylib.teacher.cot import replay_rationales

    recs = sorted(replay_rationales(load_bbh("train", tasks=list(TASKS))).records, key=lambda r: r["uid"])
    step = max(1, len(recs) // n)  # spread over the tasks
    return examples_for("std", recs[::step][:n])


def run_one(backend: str, bf16: bool, args) -> dict:
    from nesylib.training.engine import TrainConfig, train_lora

    cfg = TrainConfig(lora_r=16, lora_alpha=32, max_steps=args.steps + 1, per_device_batch=args.batch, grad_accum=1,
                      cutoff_len=args.cutoff, warmup_ratio=0.0, bf16_autocast=bf16, backend=backend,
                      logging_steps=1000, save_steps=10_000)
    ex = std_examples(args.batch * (args.steps + 1))
    with tempfile.TemporaryDirectory() as d:
        m = train_lora(args.model, ex, cfg, d, resume=False).metrics
    return {"backend": m["backend"], "bf16": m["bf16_autocast"], "device": m["device"], "steps": args.steps,
            "tokens_per_s": m["tokens_per_s_steady"], "s_per_step": m["seconds_per_step_steady"],
            "tokens_per_step": round(m["tokens_seen"] / m["steps"]), "peak_gpu_mem_gib": m["peak_gpu_mem_gib"],
            "target_truncated": m["truncation"]["target_truncated"]}


def cpu_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for rep in range(args.repeats):
        for bf16 in (False, True):  # alternate, so drift on a shared machine hits both alike
            rows.append(run_one("hf", bf16, args))
            r = rows[-1]
            print(f"rep {rep} {'bf16 autocast' if bf16 else 'fp32         '}: {r['tokens_per_s']:7.1f} tok/s "
                  f"{r['s_per_step']:6.2f} s/step  ({r['tokens_per_step']} tokens/step)", flush=True)
    best = {b: max(r["tokens_per_s"] for r in rows if r["bf16"] == b) for b in (False, True)}
    print(f"model {args.model}, batch {args.batch} x up to {args.cutoff} tokens, LoRA r=16 all-linear, "
          f"{args.threads} threads, {args.steps} timed steps after 1 warm-up, best of {args.repeats}")
    print(f"fp32 {best[False]:.1f} tok/s | bf16 autocast {best[True]:.1f} tok/s")
    print(f"bf16/fp32 training tokens/s ratio: {best[True] / best[False]:.2f}")


def gpu_main(args) -> None:
    res = {}
    for backend in ("unsloth", "hf"):  # separate processes: unsloth patches transformers at import
        cmd = [sys.executable, __file__, "--worker", backend, "--model", args.model, "--steps", str(args.steps),
               "--batch", str(args.batch), "--cutoff", str(args.cutoff)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if out.returncode or not line:
            print(f"{backend}: failed (rc {out.returncode})\n{out.stderr[-3000:]}")
            continue
        res[backend] = json.loads(line[-1])
        r = res[backend]
        print(f"{backend:8s}: {r['tokens_per_s']:9.1f} tok/s {r['s_per_step']:6.3f} s/step "
              f"peak {r['peak_gpu_mem_gib']} GiB")
    print(f"model {args.model}, batch {args.batch} x up to {args.cutoff} tokens, LoRA r=16 all-linear, bf16")
    if len(res) == 2:
        print(f"unsloth/peft training tokens/s ratio: {res['unsloth']['tokens_per_s'] / res['hf']['tokens_per_s']:.2f}")
    else:
        print("unsloth/peft training tokens/s ratio: n/a (a backend failed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps (one warm-up step is added)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--worker", choices=("unsloth", "hf"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        from nesylib.training.backends import pick_backend

        pick_backend(args.worker)  # first: unsloth must be imported before transformers
        print(json.dumps(run_one(args.worker, True, args)))
    elif args.gpu:
        gpu_main(args)
    else:
        cpu_main(args)


if __name__ == "__main__":
    main()
