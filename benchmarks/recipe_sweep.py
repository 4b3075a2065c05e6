"""Choose the students' training recipe on a dev split of the synthetic training questions.

The test and ood splits are never touched: a seeded share of each task's training questions is held
out as the dev split, the students train on the rest, and each recipe (learning rate x epochs) is
judged by dev accuracy, not by training loss. The oracle student (the needed facts in its prompt)
is the one that shows whether a recipe teaches the student to use knowledge at all; Std-CoT is the
no-knowledge bound at the same recipe.

    .venv/bin/python benchmarks/recipe_sweep.py                       # the grid below, ~25 min on 2 cores
    .venv/bin/python benchmarks/recipe_sweep.py --lrs 1e-3 --epochs 1 --methods oracle std

Prints one row per (method, lr, epochs): dev accuracy with its 95% interval, final training loss,
steps and seconds; then the oracle - Std-CoT paired difference for each recipe both ran, and writes
the rows as JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def dev_split(train: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train_rest, dev): a seeded ``share`` of each task's questions held out."""
    import random

    by_task: dict[str, list[dict]] = {}
    for r in train:
        by_task.setdefault(r["task"], []).append(r)
    dev_uids = set()
    for task, recs in by_task.items():
        uids = [r["uid"] for r in recs]
        random.Random(f"{seed}-dev-{task}").shuffle(uids)
        dev_uids.update(uids[: round(share * len(uids))])
    return [r for r in train if r["uid"] not in dev_uids], [r for r in train if r["uid"] in dev_uids]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="smollm2-135m")
    ap.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 1e-3, 2e-3])
    ap.add_argument("--epochs", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--methods", nargs="+", default=["oracle", "std"], choices=["oracle", "std"])
    ap.add_argument("--std-only-at", type=float, nargs="*", default=None,
                    help="lrs at which Std-CoT runs, at 1 epoch (default: every lr)")
    ap.add_argument("--dev-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", default=None, help="folder for the students (default: a temporary one)")
    ap.add_argument("--out", default="recipe_sweep.json")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from nesylib.methods import catalog as mth
    from nesylib.evaluation.metrics import paired_bootstrap_diff
    from nesylib.models import resolve_model
    from nesylib.methods.students import train_config
    from nesylib.synth import SynthConfig, SynthTeacher, generate_benchmark, generate_world, rationale_records
    from nesylib.synth import experiment as sx

    world = generate_world(SynthConfig())
    bench = generate_benchmark(SynthConfig(), world)
    teacher = SynthTeacher(world)
    rows_all = rationale_records(bench["train"], teacher)
    train_rows, dev = dev_split(rows_all, args.dev_share, args.seed)
    tok = AutoTokenizer.from_pretrained(resolve_model(args.student))
    spec = sx.synth_task_spec(train_rows, tok)
    work = Path(args.work or tempfile.mkdtemp(prefix="recipe-"))
    print(f"train {len(train_rows)}, dev {len(dev)} (held out of the training split); students under {work}",
          flush=True)

    base = dict(per_device_batch=8, grad_accum=1, lora_r=16, lora_alpha=32, cutoff_len=1024, bf16_autocast="auto",
                group_by_length=True, save_steps=1000, logging_steps=5)
    results, flags = [], {}
    for lr in args.lrs:
        for ep in args.epochs:
            for method in args.methods:
                if method == "std" and (ep != 1.0 or (args.std_only_at is not None and lr not in args.std_only_at)):
                    continue
                cfg = train_config({**base, "lr": lr, "epochs": ep})
                lab = mth.Lab(args.student, cfg, work, work / f"{method}-{lr:g}-{ep:g}", specs={"synth": spec},
                              seed=args.seed, log=False)
                t0 = time.time()
                run = (mth.oracle_method(lab, train_rows, {"synth": dev}, lambda r: sx.fact_texts(r, world))
                       if method == "oracle" else mth.plain_method(lab, "std", train_rows, {"synth": dev}))
                res = run.result
                ci = res.summary["datasets"]["synth"]
                tm = lab.train_metrics[method]
                flags[(method, lr, ep)] = [bool(r["correct"]) for r in res.rows]
                row = {"method": method, "lr": lr, "epochs": ep, "dev_accuracy": res.accuracy,
                       "ci": [ci["ci_low"], ci["ci_high"]], "n": len(res.rows), "steps": tm["steps"],
                       "final_loss": tm["final_loss"], "seconds": round(time.time() - t0, 1)}
                results.append(row)
                print(f"{method:6s} lr {lr:<7g} epochs {ep:<4g} dev {100 * res.accuracy:5.1f} "
                      f"[{100 * ci['ci_low']:.1f}, {100 * ci['ci_high']:.1f}]  steps {tm['steps']:4d}  "
                      f"loss {tm['final_loss']:.3f}  {row['seconds']:.0f} s", flush=True)
    print("\noracle - Std-CoT on the same dev items (paired bootstrap, percentage points):")
    for (m, lr, ep), f in flags.items():
        if m == "oracle" and ("std", lr, ep) in flags:
            d = paired_bootstrap_diff(f, flags[("std", lr, ep)], n_boot=2000, seed=0)
            print(f"  lr {lr:g}, epochs {ep:g}: {100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, "
                  f"{100 * d['ci_high']:+.1f}]")
            results.append({"method": "oracle-std", "lr": lr, "epochs": ep, **d})
    best = max((r for r in results if r["method"] == "oracle"), key=lambda r: (r["dev_accuracy"], -r["epochs"]))
    print(f"\nbest oracle dev accuracy: lr {best['lr']:g}, epochs {best['epochs']:g} "
          f"({100 * best['dev_accuracy']:.1f}%)")
    Path(args.out).write_text(json.dumps({"dev_items": len(dev), "train_items": len(train_rows), "rows": results},
                                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
