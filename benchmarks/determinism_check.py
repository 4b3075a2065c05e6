"""Does the same preset give the same numbers twice? One student of notebook 08, retrained and
re-evaluated from scratch in this fresh process, side by side with the run's stored one.

    .venv/bin/python benchmarks/determinism_check.py --run-root results/runs/cpu [--method std]

It rebuilds 08's inputs from the run's params.json (world, benchmark, teacher rationales, recipe,
evaluation items) and compares the outputs the run logged with (a) the run's own adapter evaluated
again here (generation alone) and (b) a student trained from scratch into a temporary run root
(training and generation), evaluated with the same prompts and settings. It prints whether the
adapter weights are byte-identical, how many greedy outputs and correct/incorrect verdicts differ,
and the accuracies; with ``--json PATH`` it also writes them. Only plain methods (std, ft) are supported: they need no
knowledge source, so the comparison isolates training and generation.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-root", default=str(REPO / "results" / "runs" / "cpu"))
    ap.add_argument("--nb-dir", default=None, help="08's folder (default: <run-root>/08_synthetic_benchmark)")
    ap.add_argument("--method", default="std", choices=["std", "ft"])
    ap.add_argument("--json", default=None, help="also write the comparison here")
    ap.add_argument("--no-retrain", action="store_true", help="only evaluate the run's own adapter again")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from nesylib.methods import catalog as mth
    from nesylib import synth
    from nesylib.methods import students
    from nesylib.models import resolve_model
    from nesylib.synth import experiment as sx

    run_root = Path(args.run_root)
    nb_dir = Path(args.nb_dir) if args.nb_dir else run_root / "08_synthetic_benchmark"
    p = json.loads((nb_dir / "params.json").read_text())
    cfg = students.train_config({**p["train"], **p["train_overrides"]})
    config = sx.resolve_config(p["synth_config"])
    world = synth.generate_world(config)
    bench = synth.generate_benchmark(config, world)
    evals = sx.eval_records(bench, p["eval_per_task_synth"], p["seed"])
    train_rows = synth.rationale_records(bench["train"], synth.SynthTeacher(world))
    spec = sx.synth_task_spec(train_rows, AutoTokenizer.from_pretrained(resolve_model(p["student"])))
    eval_sets = {"synth": evals}

    def lab(root: Path, out: Path) -> mth.Lab:
        return mth.Lab(p["student"], cfg, root, out, specs={"synth": spec}, batch_size=p["eval_batch_size"],
                       max_new_tokens=p["max_new_tokens"], seed=p["seed"])

    def by_uid(rows) -> dict:
        return {r["uid"]: (r["output"], bool(r["correct"])) for r in rows}

    def compare(a: dict, b: dict) -> dict:
        differ = [u for u in a if a[u][0] != b[u][0]]
        return {"outputs_differ": len(differ), "correctness_flips": sum(a[u][1] != b[u][1] for u in a),
                "first_differing_uid": differ[0] if differ else None}

    from nesylib.files import read_jsonl, sha256_file

    t0 = time.time()
    logged = nb_dir / "eval" / args.method / "samples.jsonl"
    run_rows = by_uid(read_jsonl(logged))  # what the run itself generated
    with tempfile.TemporaryDirectory(prefix="nesylib-determinism-") as tmp:
        tmp = Path(tmp)
        # the run's own adapter (found by its key), evaluated again here without the evaluation
        # store (a stored evaluation would be read back, not generated): generation alone
        from nesylib.methods.formats import examples_for

        examples = examples_for(args.method, train_rows)
        where = students.student_dir(run_root, args.method, examples, cfg, p["student"])
        if not (where / "train_result.json").is_file():
            raise SystemExit(f"{where}: no trained {args.method} student of 08's inputs in this run root")
        adapter = lab(run_root, tmp / "again").fit(args.method, examples)
        again = argparse.Namespace(adapter=adapter, result=students.evaluate_student(
            mth.METHODS[args.method][1], p["student"], adapter, eval_sets, tmp / "again" / "eval",
            batch_size=p["eval_batch_size"], max_new_tokens=p["max_new_tokens"], seed=p["seed"],
            specs={"synth": spec}))
        # a new adapter trained from scratch in a separate run root: training and generation
        fresh = None if args.no_retrain else mth.plain_method(lab(tmp / "root", tmp / "fresh"), args.method,
                                                              train_rows, eval_sets)
        n_ok = sum(c for _, c in run_rows.values())
        out = {"method": args.method, "run_root": str(run_root), "items": len(run_rows),
               "run_accuracy": round(n_ok / len(run_rows), 4),
               "same_adapter_evaluated_again": {"accuracy": again.result.accuracy,
                                                **compare(run_rows, by_uid(again.result.rows))},
               "retrained_adapter": None if fresh is None else {
                   "byte_identical": sha256_file(again.adapter / "adapter_model.safetensors")
                   == sha256_file(fresh.adapter / "adapter_model.safetensors"),
                   "accuracy": fresh.result.accuracy, **compare(run_rows, by_uid(fresh.result.rows))},
               "seconds": round(time.time() - t0, 1)}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
