"""Evaluation decoding throughput: the batched engine (nesylib.generation.generate) beside naive decoding.

SmolLM2-135M on N real BBH test items (seeded, spread over the 27 tasks) with the Std-CoT
prompt. In one process, after a warm-up of each path:

  (a) naive: one prompt at a time, ``model.generate(do_sample=False)`` with the KV cache, the
      same ``max_new_tokens`` and EOS; the stop rule (stop strings, repetition) is applied post
      hoc with ``apply_stop_rules``, as a run without the engine would have to;
  (b) engine: ``generate_batch`` (continuous batching, finished rows dropped, stop rules online).

The engine runs before and after the naive path (its time is the mean of the two), so load that
drifts on a shared machine weighs on both alike. It asserts that both paths give the same
tokens, text and stop reason for every item, prints each path's tokens/s, and as its last line
``speedup: <naive seconds / engine seconds>x``.
"Useful tokens" are the tokens up to the stop rule (equal in both paths); the naive path also
decodes the tokens after it, which are reported as "decoded".

    .venv/bin/python benchmarks/eval_throughput.py --n 24 --max-new-tokens 160   # 8-13 min on the shared 2 cores

``--naive-stop-strings`` also lets the naive path stop on the stop strings inside
``model.generate`` (transformers' ``stop_strings``), to show how much of the gain is batching.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

# OpenMP threads that spin while waiting made every path 10-100x slower whenever other jobs
# shared the 2 cores; passive waiting costs nothing measurable on an idle machine. Both paths
# run under the same setting. (Read when torch loads, so it is set before any import of it.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def bbh_prompts(n: int, seed: int) -> tuple[list[dict], list[str]]:
    from nesylib.methods import prompts
    from nesylib.data.benchmarks import BBH_TASKS, load_bbh, subsample

    pool = subsample(load_bbh("test"), per_task=max(1, math.ceil(n / len(BBH_TASKS))), seed=seed)
    recs = sorted(random.Random(seed).sample(pool, min(n, len(pool))), key=lambda r: r["uid"])
    return recs, [prompts.std(r) for r in recs]


def naive(model, tok, prompts, max_new_tokens, stop_strings, hf_stop_strings: bool):
    """One prompt at a time through ``model.generate``; the stop rule replayed afterwards."""
    import torch

    from nesylib.generation.stopping import apply_stop_rules, eos_token_ids

    eos = eos_token_ids(model, tok)
    outs, decoded = [], 0
    extra = {"stop_strings": list(stop_strings), "tokenizer": tok} if hf_stop_strings else {}
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, add_special_tokens=False, return_tensors="pt")
            g = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                               eos_token_id=eos, pad_token_id=tok.pad_token_id, **extra)
            new = g[0, enc["input_ids"].shape[1]:].tolist()
            decoded += len(new)
            outs.append(apply_stop_rules(new, tok, eos_ids=eos, prompt_tokens=enc["input_ids"].shape[1],
                                         max_new_tokens=max_new_tokens, stop_strings=stop_strings))
    return outs, decoded


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="BBH test items (default 32)")
    ap.add_argument("--max-new-tokens", type=int, default=320, help="cap per item (default 320, calibration.md)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--naive-stop-strings", action="store_true",
                    help="also time naive decoding that stops on the stop strings inside model.generate")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from nesylib.generation.generate import generate_batch
    from nesylib.generation.stopping import DEFAULT_STOP_STRINGS
    from nesylib.models import load_model

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    recs, prompts = bbh_prompts(args.n, args.seed)
    stops = DEFAULT_STOP_STRINGS
    print(f"model {args.model}, {len(prompts)} BBH test items ({len({r['task'] for r in recs})} tasks), Std-CoT "
          f"prompt, greedy, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, {args.threads} threads",
          flush=True)

    # warm-up of both paths (allocator, oneDNN kernels)
    naive(model, tok, prompts[:1], 4, stops, False)
    generate_batch(model, tok, prompts[:2], max_new_tokens=4, progress=False)

    def engine():
        t, c = time.perf_counter(), time.process_time()
        out = generate_batch(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             stop_strings=stops, progress=False)
        return out, time.perf_counter() - t, time.process_time() - c

    # engine, naive, engine: the two engine runs bracket the naive one, so load that drifts on a
    # shared machine weighs on both paths alike; the engine time is their mean
    fast, t_fast1, c_fast1 = engine()
    t, c = time.perf_counter(), time.process_time()
    slow, decoded = naive(model, tok, prompts, args.max_new_tokens, stops, False)
    t_slow, c_slow = time.perf_counter() - t, time.process_time() - c
    fast2, t_fast2, c_fast2 = engine()
    t_fast, c_fast = (t_fast1 + t_fast2) / 2, (c_fast1 + c_fast2) / 2
    if [o.token_ids for o in fast] != [o.token_ids for o in fast2]:
        print("MISMATCH between the two engine runs", flush=True)
        return 1

    diff = [r["uid"] for r, a, b in zip(recs, fast, slow)
            if (a.token_ids, a.text, a.stopped_by) != (b.token_ids, b.text, b.stopped_by)]
    if diff:
        print(f"MISMATCH between engine and naive decoding on {len(diff)} items: {diff}", flush=True)
        return 1
    useful = sum(o.generated_tokens for o in fast)
    reasons = {k: sum(o.stopped_by == k for o in fast) for k in ("eos", "stop_string", "repetition", "length")}
    prompt_tokens = sum(o.prompt_tokens for o in fast)
    print(f"outputs identical on all {len(fast)} items; stopped by {reasons}; "
          f"{prompt_tokens} prompt tokens, {useful} useful generated tokens")
    print(f"naive  (bs1 model.generate, stop rule post hoc): {t_slow:8.1f} s  {useful / t_slow:6.1f} useful tok/s  "
          f"({decoded} decoded, {decoded / t_slow:.1f} tok/s)")
    if args.naive_stop_strings:
        t = time.perf_counter()
        _, decoded_s = naive(model, tok, prompts, args.max_new_tokens, stops, True)
        t_s = time.perf_counter() - t
        print(f"naive with stop_strings in generate:           {t_s:8.1f} s  {useful / t_s:6.1f} useful tok/s  "
              f"({decoded_s} decoded); engine speedup over it {t_s / t_fast:.2f}x")
    print(f"engine (generate_batch):                         {t_fast:8.1f} s  {useful / t_fast:6.1f} useful tok/s  "
          f"(mean of {t_fast1:.1f} s before and {t_fast2:.1f} s after the naive run)")
    # CPU seconds of this process: less sensitive than wall time to other jobs on a shared machine
    print(f"cpu time: naive {c_slow:.1f} s, engine {c_fast:.1f} s -> cpu-time ratio {c_slow / c_fast:.2f}x")
    print(f"speedup: {t_slow / t_fast:.2f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
