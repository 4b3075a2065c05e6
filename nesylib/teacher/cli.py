"""``python -m nesylib teach``: build a teacher-rationale dataset (also runs standalone).

Examples::

    # offline default: replayed Codex CoTs (BBH) + rewritten reference solutions (GSM8K)
    python -m nesylib teach --backend replay --datasets bbh,gsm8k --out runs/rationales.jsonl
    # any OpenAI-compatible server; the key comes from $OPENAI_API_KEY (or --api-key-env NAME)
    python -m nesylib teach --backend openai --model gpt-4o-mini --store runs/teacher_store.jsonl \\
        --budget-usd 5 --price 0.15,0.60 --datasets bbh --limit 20 --out runs/rationales.jsonl
    # a local transformers model
    python -m nesylib teach --backend local --model smollm2-135m --datasets bbh --limit 2 --out r.jsonl
    # a dataset of your own: its entry file (README, "Your own dataset"), with a live teacher
    python -m nesylib teach --backend openai --model gpt-4o-mini --datasets examples/my_qa/my_qa.yaml \\
        --store runs/teacher_store.jsonl --out runs/my_qa_rationales.jsonl

Writes ``--out`` (JSONL records with ``rationale`` and ``provenance``), ``<out>.stats.json``
(per-task acceptance) and, for live backends, ``<out>.summary.json`` (calls, cache hits,
failures, tokens, cost). A rerun with the same ``--store`` pays nothing for stored calls.

Exit status: 0 when every call got a reply; 1 when some calls are still unresolved after their
retries or some items failed (no call for them got a reply): what was accepted is written, and
a rerun with the same ``--store`` asks exactly the missing calls again; 2 on an error that stops
the run (bad key, unreachable endpoint, budget reached, bad arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nesylib.errors import ConfigError, NesylibError


def add_teach_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``teach`` sub-command on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "teach", help="generate (or replay) teacher CoT rationales for the training sets",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("teacher")
    g.add_argument("--backend", choices=("openai", "local", "replay"), default="replay",
                   help="openai = any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server); "
                        "local = a transformers model; replay = recorded outputs, no calls (default)")
    g.add_argument("--model", help="openai: the served model name; local: smollm2-135m (default), tiny-llama, a "
                                   "folder or a hub id; replay: codex | gsm8k | auto (default: by dataset)")
    g.add_argument("--base-url", help="openai: endpoint base URL, e.g. http://127.0.0.1:8000/v1 "
                                      "(default: the OpenAI API)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="name of the environment variable holding the API key (default OPENAI_API_KEY); "
                        "the key itself is never a flag and is never written anywhere")
    g.add_argument("--timeout", type=float, default=120.0, help="openai: seconds per HTTP request (default 120)")
    g.add_argument("--max-retries", type=int, default=6,
                   help="extra attempts for every retryable fault: HTTP 429/5xx, timeouts, failed connections, "
                        "malformed, empty or filtered replies (default 6)")
    g.add_argument("--policy-retries", type=int, default=None,
                   help="older name of --max-retries (overrides it when given)")
    g.add_argument("--retry-backoff", type=float, default=1.0,
                   help="seconds before the first retry, doubling up to 30 (default 1; a server's Retry-After wins)")
    g.add_argument("--breaker-failures", type=int, default=3,
                   help="stop the run after this many calls in a row got no reply at all (connection failed or "
                        "timed out), naming the endpoint (default 3)")
    g.add_argument("--concurrency", type=int, default=8, help="parallel API calls (default 8; local runs 1)")
    g.add_argument("--batch-size", type=int, default=8, help="local: generation batch size (default 8)")
    d = p.add_argument_group("data")
    d.add_argument("--datasets", default="bbh,gsm8k",
                   help="comma-separated dataset names or dataset entry files (YAML, see nesylib/data/custom_data.py), "
                        "e.g. bbh,examples/my_qa/my_qa.yaml (default bbh,gsm8k); the replay backend has recorded "
                        "rationales for bbh and gsm8k only, a live backend (openai, local) teaches any dataset")
    d.add_argument("--split", default="train", choices=("train", "test"), help="split to teach (default train)")
    d.add_argument("--limit", type=int, help="at most N items per task (seeded subsample; default all)")
    d.add_argument("--seed", type=int, default=42, help="subsample and sampling seed (default 42)")
    s = p.add_argument_group("sampling (CasCoD schedule)")
    s.add_argument("--samples", type=int, default=2, help="samples in the first round (default 2); each retry "
                                                          "round adds 1 (max 10) and 0.1 to T (max 1.5)")
    s.add_argument("--temperature", type=float, default=0.2, help="temperature of the first round (default 0.2)")
    s.add_argument("--max-rounds", type=int, default=4, help="sampling rounds per item (default 4)")
    s.add_argument("--until", choices=("correct", "marker"), default="correct",
                   help="correct: retry until a sample is right (default); marker: CasCoD's loop, stop at the "
                        "first sample with the answer marker and keep it only if right")
    s.add_argument("--max-tokens", type=int, default=1024, help="completion tokens per call (default 1024)")
    c = p.add_argument_group("store and cost")
    c.add_argument("--store", help="call-store JSONL; repeated calls are served from it for free (default: none)")
    c.add_argument("--import-store", help="merge an exported store file into --store before running")
    c.add_argument("--export-store", help="after the run, write the store's successes to this one file")
    c.add_argument("--budget-usd", type=float, help="stop new paid calls once this run has spent this much")
    c.add_argument("--price", help="IN,OUT: USD per 1M input and output tokens of --model")
    c.add_argument("--price-table", help='JSON file {"model": [usd_per_1M_in, usd_per_1M_out], ...}')
    p.add_argument("--out", required=True, help="output JSONL of accepted rationale records")
    p.add_argument("--data-dir", help="benchmark mirror (default $NESYLIB_DATA_DIR)")
    return p


def _price_table(args) -> dict | None:
    table = {}
    if args.price_table:
        path = Path(args.price_table)
        try:
            table.update(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--price-table {path}: cannot read a JSON object ({e})") from None
    if args.price:
        try:
            pin, pout = (float(x) for x in args.price.split(","))
        except ValueError:
            raise ConfigError(f"--price must be IN,OUT (USD per 1M tokens), got {args.price!r}") from None
        if not args.model:
            raise ConfigError("--price applies to --model, which is not set")
        table[args.model] = [pin, pout]
    return table or None


def dataset_names(refs: str, backend: str) -> list[str]:
    """``--datasets``: names, or entry files (a YAML path: its dataset is defined for this run) -> names.

    Every name must be loadable; the replay backend takes bbh and gsm8k only (its recorded rationales)."""
    from nesylib.data import custom_data
    from nesylib.data.benchmarks import known_datasets

    names = []
    for ref in (r.strip() for r in refs.split(",")):
        if ref:
            is_file = ref.lower().endswith((".yaml", ".yml")) or Path(ref).suffix.lower() in custom_data.FORMATS
            names.append(custom_data.register_file(ref) if is_file else ref)
    if not names:
        raise ConfigError(f"--datasets: no dataset named in {refs!r}")
    unknown = [n for n in names if n not in known_datasets()]
    if unknown:
        raise ConfigError(f"--datasets: unknown dataset(s) {unknown}; known: {known_datasets()}, or give a dataset "
                          f"entry file (YAML)")
    if backend == "replay":
        other = [n for n in names if n not in ("bbh", "gsm8k")]
        if other:
            raise ConfigError(f"--datasets: the replay teacher has recorded rationales for bbh and gsm8k only, got "
                              f"{other}; teach them with a live teacher (--backend openai or local)")
    return names


def _records(args) -> list[dict]:
    from nesylib.data.benchmarks import load_dataset_records, subsample

    names = dataset_names(args.datasets, args.backend)
    records = []
    for name in names:
        records += subsample(load_dataset_records(name, args.split, data_dir=args.data_dir), args.limit, args.seed)
    return records


def run_teach(args) -> int:
    """Run the ``teach`` command; returns the process exit code."""
    from nesylib.teacher.cot import SampleSchedule, generate_rationales, replay_rationales, stats_path_for
    from nesylib.teacher.factory import teacher_from_params

    for flag in ("concurrency", "samples", "max_rounds", "max_tokens", "breaker_failures"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    records = _records(args)
    out = Path(args.out)
    print(f"teach: {len(records)} {args.split} items from {args.datasets}, backend {args.backend}")
    if args.backend == "replay":
        result = replay_rationales(records, args.model or "auto", data_dir=args.data_dir)
        teacher = None
    else:
        teacher = teacher_from_params(args.backend, args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                                      store_path=args.store, concurrency=args.concurrency,
                                      budget_usd=args.budget_usd, price_table=_price_table(args),
                                      timeout=args.timeout, max_retries=args.max_retries,
                                      policy_retries=args.policy_retries, batch_size=args.batch_size,
                                      data_dir=args.data_dir, retry_backoff_s=args.retry_backoff,
                                      breaker_failures=args.breaker_failures)
        if args.import_store:
            print(f"imported {teacher.store.import_file(args.import_store)} stored calls from {args.import_store}")
        schedule = SampleSchedule(n0=args.samples, t0=args.temperature, n_max=max(10, args.samples),
                                  max_rounds=args.max_rounds)
        try:
            result = generate_rationales(records, teacher, schedule=schedule, until=args.until,
                                         max_tokens=args.max_tokens, seed=args.seed,
                                         progress=lambda m: print(m, flush=True))
        finally:
            summary_path = out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps({**teacher.summary.as_dict(), "store": teacher.store.stats()
                                                if args.store else None}, indent=1), encoding="utf-8")
            print(teacher.summary)
        if args.export_store:
            print(f"exported {teacher.store.export(args.export_store)} calls to {args.export_store}")
    result.save(out)
    print(f"{'task':<42} {'items':>6} {'kept':>6} {'wrong':>6} {'no-ans':>6} {'failed':>6} {'rate':>6}")
    for row in result.table():
        print(f"{row['task']:<42} {row['items']:>6} {row['accepted']:>6} {row['wrong']:>6} {row['no_marker']:>6} "
              f"{row['failed']:>6} {row['rate']:>6.1%}")
    print(f"wrote {len(result.records)} rationales to {out} (stats: {stats_path_for(out)})")
    if teacher is not None:
        from nesylib.teacher.cot import incomplete_message

        msg = incomplete_message(result, teacher.summary)
        if msg:
            hint = ("rerun the same command to ask exactly those calls again (stored ones are free)" if args.store
                    else "pass --store FILE to keep the successful calls, then rerun to ask only the rest")
            print(f"error: {msg}; {hint}", file=sys.stderr)
            return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nesylib.teacher.cli")
    add_teach_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    try:
        return run_teach(args)
    except NesylibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
