"""Command line: ``python -m nesylib {provision,run,params,export,export-model,train-job,teach,data}``."""
from __future__ import annotations

import argparse
import sys
import time

from nesylib.errors import NesylibError


def _provision(args) -> int:
    from nesylib.models import provision_smollm2, provision_tiny_llama

    t0 = time.time()
    print(f"SmolLM2-135M-Instruct: {provision_smollm2()}")
    print(f"tiny test LLaMA:       {provision_tiny_llama()}")
    from nesylib.knowledge.retrieval import minilm_dir

    print(f"MiniLM embeddings:     {minilm_dir()}")
    print(f"models ready in {time.time() - t0:.1f} s")
    return 0


def _run(args) -> int:
    from nesylib.pipeline.params import run_with_overrides

    t0 = time.time()
    only = [s for s in (args.only or "").split(",") if s]
    summary = run_with_overrides(args.preset, args.set, only=only or None, force=args.force, run_root=args.run_root,
                                 kernel=args.kernel)
    ran = sum(1 for s in summary if s["status"] == "ran")
    print(f"preset {args.preset}: {ran} notebook(s) ran, {len(summary) - ran} cached, "
          f"{time.time() - t0:.0f} s in all")
    return 0


def _params(args) -> int:
    from nesylib.pipeline.params import describe_parameters

    print(describe_parameters(args.notebook, args.preset))
    return 0


def _export(args) -> int:
    from nesylib.pipeline.runner import export_results

    files = export_results(args.preset, args.run_root)
    print(f"exported {len(files)} files to results/{args.preset}/")
    return 0


def _export_model(args) -> int:
    from nesylib.training.engine import export_model

    out = export_model(args.adapter, args.out, base=args.base, dtype=args.dtype, force=args.force)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"merged model: {out} ({size / 2**20:.1f} MiB)")
    return 0


def _train_job(args) -> int:
    import os

    from nesylib.training.engine import run_job

    res = run_job(args.job)
    if os.environ.get("RANK", "0") == "0":
        m = res.metrics
        print(f"adapter: {res.adapter_dir} ({'cached, ' if res.cached else ''}{m.get('steps')} steps on "
              f"{m.get('world_size', 1)} process(es), global batch {m.get('global_batch')}, "
              f"final loss {m.get('final_loss')})")
    return 0


def _data(args) -> int:
    from nesylib.data.sources import fetch, registry

    failed = 0
    for rel in sorted(registry()):
        try:
            print(f"ok  {fetch(rel, args.data_dir)}")
        except NesylibError as e:
            failed += 1
            print(f"ERR {e}", file=sys.stderr)
    print(f"{len(registry()) - failed} of {len(registry())} pinned files verified")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nesylib", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("provision", help="convert the offline SmolLM2 student and build the tiny test model")
    r = sub.add_parser("run", help="execute the notebooks of a preset through papermill")
    r.add_argument("--preset", default="cpu", help="smoke | cpu | paper, or a path to a preset YAML")
    r.add_argument("--only", help="comma-separated notebook names, e.g. 00_data,01_teacher_distillation")
    r.add_argument("--force", action="store_true", help="re-run notebooks even if their inputs are unchanged")
    r.add_argument("--run-root", help="output folder (default results/runs/<preset>)")
    r.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's own)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value (repeatable): common.seed=1, 05_baselines.methods='[std,kard]', "
                        "08_synthetic_benchmark.train.lr=5e-4; the value is YAML, checked before anything runs")
    pa = sub.add_parser("params", help="list a notebook's parameters: type, default, help (and a preset's values)")
    pa.add_argument("notebook", help="e.g. 00_data or 08_synthetic_benchmark")
    pa.add_argument("--preset", help="also show the value this preset gives each parameter")
    e = sub.add_parser("export", help="copy a run's tables and figures into results/<preset>/ (for committing)")
    e.add_argument("--preset", default="cpu")
    e.add_argument("--run-root", help="run folder (default results/runs/<preset>)")
    m = sub.add_parser("export-model", help="merge a LoRA adapter into its base model (for from_pretrained, vLLM)")
    m.add_argument("--adapter", required=True, help="adapter folder (a student's <out_dir>/adapter)")
    m.add_argument("--out", required=True, help="output folder; refused if it exists and is not empty")
    m.add_argument("--base", help="a student name or model folder (default: named in adapter_config.json)")
    m.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the saved weights")
    m.add_argument("--force", action="store_true", help="replace a non-empty --out")
    t = sub.add_parser("train-job", help="train one student from a job file (written by train_lora when "
                                        "train.world_size > 1); start it with torchrun or accelerate launch")
    t.add_argument("job", help="the job.json in a student's folder (docs/multi-gpu.md)")
    d = sub.add_parser("data", help="verify (and download if missing) every pinned benchmark file")
    d.add_argument("--data-dir", help="mirror folder (default $NESYLIB_DATA_DIR, else download to the cache)")
    try:
        from nesylib.teacher.cli import add_teach_parser

        add_teach_parser(sub)
    except ImportError:
        pass
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"provision": _provision, "run": _run, "params": _params, "data": _data, "export": _export,
                "export-model": _export_model, "train-job": _train_job}
    try:
        if args.cmd == "teach":
            from nesylib.teacher.cli import run_teach

            return run_teach(args) or 0
        return handlers[args.cmd](args)
    except NesylibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
