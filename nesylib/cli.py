"""Command line: ``python -m nesylib {provision,run,teach,data}``."""
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
    from nesylib.retrieval import minilm_dir

    print(f"MiniLM embeddings:     {minilm_dir()}")
    print(f"models ready in {time.time() - t0:.1f} s")
    return 0


def _run(args) -> int:
    from nesylib.runs import run_preset

    t0 = time.time()
    only = [s for s in (args.only or "").split(",") if s]
    summary = run_preset(args.preset, only=only or None, force=args.force, run_root=args.run_root,
                         kernel=args.kernel)
    ran = sum(1 for s in summary if s["status"] == "ran")
    print(f"preset {args.preset}: {ran} notebook(s) ran, {len(summary) - ran} cached, "
          f"{time.time() - t0:.0f} s in all")
    return 0


def _export(args) -> int:
    from nesylib.runs import export_results

    files = export_results(args.preset, args.run_root)
    print(f"exported {len(files)} files to results/{args.preset}/")
    return 0


def _data(args) -> int:
    from nesylib.sources import fetch, registry

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
    e = sub.add_parser("export", help="copy a run's tables and figures into results/<preset>/ (for committing)")
    e.add_argument("--preset", default="cpu")
    e.add_argument("--run-root", help="run folder (default results/runs/<preset>)")
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
    handlers = {"provision": _provision, "run": _run, "data": _data, "export": _export}
    try:
        if args.cmd == "teach":
            from nesylib.teacher.cli import run_teach

            return run_teach(args) or 0
        return handlers[args.cmd](args)
    except NesylibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
