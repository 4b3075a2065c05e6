"""Length grouping in the training engine: one pass over a mixed-length set, grouped beside random batches.

NesyCD's S_E trains on a mix of long P-KB prompts, Std-CoT CoTs and short answer-only targets
(D14); a random batch is padded to its longest member, so most of a batch holding one KB item is
padding. With ``TrainConfig.group_by_length`` each batch holds items of similar length (and the
batches still come in a seeded random order, ``nesylib.training.sft_data.item_order``).

Both runs make exactly one pass over the same examples (steps = items / batch), so they train on
the same tokens; the wall-clock seconds of the two are compared. SmolLM2-135M, bf16 autocast,
batch 8, LoRA r=16, on real BBH Std-CoT examples (replayed Codex CoTs) plus their answer-only
twins. Alternating order (off, on, off, on) over ``--repeats`` so load drift weighs on both.
The last line is ``speedup: <random seconds / grouped seconds>x``.

    .venv/bin/python benchmarks/length_grouping.py --items 64 --repeats 1     # ~3 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))


def examples(n: int):
    from train_throughput import std_examples

    from nesylib.methods import prompts
    from nesylib.methods.prompts import Example

    std = std_examples(n // 2)
    # the answer-only twin of each item (P-FT -> gold answer), as D14's part (c) adds
    ft = [Example(e.prompt, e.target.split(prompts.ANSWER_MARKER)[-1].strip(" ."), "main", e.uid + "/ft")
          for e in std]
    return std + ft


def one_pass(ex, grouped: bool, args) -> dict:
    from nesylib.training.engine import TrainConfig, train_lora

    steps = len(ex) // args.batch
    cfg = TrainConfig(lora_r=16, lora_alpha=32, max_steps=steps, per_device_batch=args.batch, grad_accum=1,
                      cutoff_len=1024, warmup_ratio=0.0, bf16_autocast=True, group_by_length=grouped,
                      logging_steps=1000, save_steps=10_000)
    with tempfile.TemporaryDirectory() as d:
        m = train_lora(args.model, ex[:steps * args.batch], cfg, d, resume=False).metrics
    return {"seconds": m["seconds"], "tokens": m["tokens_processed_this_process"], "steps": m["steps"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--items", type=int, default=64, help="examples (half CoT, half answer-only)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ex = examples(args.items)
    lengths = sorted(len(e.prompt) + len(e.target) for e in ex)
    print(f"model {args.model}, {len(ex)} examples (characters: min {lengths[0]}, median {lengths[len(ex) // 2]}, "
          f"max {lengths[-1]}), batch {args.batch}, one pass each, bf16 autocast, {args.threads} threads")
    totals, tokens = {False: 0.0, True: 0.0}, None
    for rep in range(args.repeats):
        for grouped in (False, True):
            r = one_pass(ex, grouped, args)
            tokens = tokens or r["tokens"]
            assert r["tokens"] == tokens, "both orders must train on the same tokens"
            totals[grouped] += r["seconds"]
            print(f"rep {rep} {'grouped' if grouped else 'random '}: {r['seconds']:7.1f} s for {r['steps']} steps, "
                  f"{r['tokens']} tokens, {r['tokens'] / r['seconds']:.1f} tok/s")
    print(f"random batches {totals[False]:.1f} s | length-grouped {totals[True]:.1f} s")
    print(f"speedup: {totals[False] / totals[True]:.2f}x")


if __name__ == "__main__":
    main()
