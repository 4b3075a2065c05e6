"""Glue for notebook 08: every method on the synthetic benchmark, and the analysis of where each wins.

The methods themselves are nesylib.methods.catalog (shared with the real benchmarks); this module holds
the benchmark's selection and the analysis:

    config = resolve_config("default")                 # or "smoke", or a dict of overrides
    evals = eval_records(bench, per_task=None)          # test + ood (uids are distinct), seeded subset
    spec = synth_task_spec(rationale_rows, tokenizer)   # per-task generation caps from the targets
    items = item_rows("kard", run.result.rows, evals, world, run.inserted)   # one analysis row per item
    accuracy_by(items, ["split"]); paired_vs(items, "std"); cooccurrence_baseline(...)

An item row carries what the analysis groups by: split, task, variant, hops, ``min_exposure`` (the
fewest training questions any needed fact appears in), whether the item is multiple choice, and
how many of the needed fact sentences the output states (and, for retrieval methods, how many the
inserted knowledge contains).
"""
from __future__ import annotations

import math
import random
import re

from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import ANSWER_MARKER
from nesylib.synth.world import SynthConfig, World

# the floors in the tables (the methods' labels are nesylib.methods.catalog.label)
LABELS = {"chance": "Chance", "cooccurrence": "Co-occurrence heuristic"}
_WORD = re.compile(r"[A-Za-z]+")


# ------------------------------------------------------------------------------------ benchmark
def resolve_config(spec) -> SynthConfig:
    """``"default"`` (the fixed defaults), ``"smoke"`` (the tiny test world) or a dict of SynthConfig
    overrides applied to the defaults (``{"base": "smoke", ...}`` applies them to the smoke world)."""
    if spec == "default":
        return SynthConfig().validate()
    if spec == "smoke":
        return SynthConfig.smoke().validate()
    if isinstance(spec, dict):
        d = dict(spec)
        base = d.pop("base", "default")
        if base not in ("default", "smoke"):
            raise ConfigError(f"parameter 'synth_config': base={base!r} must be 'default' or 'smoke'")
        merged = {**resolve_config(base).to_dict(), **d}
        return SynthConfig.from_dict(merged).validate()
    raise ConfigError(f"parameter 'synth_config' = {spec!r}: expected 'default', 'smoke' or a dict of "
                      f"SynthConfig overrides")


def eval_records(bench: dict[str, list[dict]], per_task=None, seed: int = 42) -> list[dict]:
    """The test then ood records, at most ``per_task`` per (split, task) by a seeded draw (None: all).

    ``per_task`` is one integer for both splits or a mapping {"test": n, "ood": m} (a split it does
    not name, or names with None, is taken whole)."""
    from nesylib.data.benchmarks import subsample

    def check(n, where):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"parameter 'eval_per_task_synth'{where} must be None or an integer >= 1, got {n!r}")
        return n

    if isinstance(per_task, dict):
        unknown = sorted(set(per_task) - {"test", "ood"})
        if unknown:
            raise ConfigError(f"parameter 'eval_per_task_synth' names unknown split(s) {unknown}; use 'test' and 'ood'")
        sizes = {s: check(per_task.get(s), f"[{s!r}]") for s in ("test", "ood")}
    else:
        sizes = dict.fromkeys(("test", "ood"), check(per_task, ""))
    out = []
    for split in ("test", "ood"):
        if split not in bench:
            raise DataError(f"benchmark has no {split!r} split (has {sorted(bench)})")
        out += subsample(bench[split], sizes[split], seed)
    return out


def synth_task_spec(rationale_rows: list[dict], tokenizer, margin: float = 1.3, floor: int = 32):
    """A TaskSpec for "synth" whose per-task cap is max(floor, ceil(margin x longest target)),
    the target being a teacher rationale plus EOS in ``tokenizer``'s tokens (calibration.md's rule
    with a floor that fits these short rationales instead of BBH's 320)."""
    from nesylib.evaluation.evaluate import TASK_SPECS, TaskSpec

    longest: dict[str, int] = {}
    for r in rationale_rows:
        n = len(tokenizer(r["rationale"], add_special_tokens=False)["input_ids"]) + 1
        longest[r["task"]] = max(longest.get(r["task"], 0), n)
    if not longest:
        raise ConfigError("synth_task_spec needs at least one rationale row")
    caps = {t: max(int(floor), math.ceil(margin * n)) for t, n in sorted(longest.items())}
    base = TASK_SPECS["synth"]
    return TaskSpec("synth", None, max(caps.values()), caps, stop_strings=base.stop_strings, version="synth-1",
                    note=f"caps = max({floor}, ceil({margin} x longest teacher rationale + EOS)) per task")


# ------------------------------------------------------------------------------------ analysis
def fact_sentences(record: dict, world: World) -> list[str]:
    """The needed facts as they are stated (lower case, no final period), in reasoning order."""
    return [t[:-1].lower() for t in fact_texts(record, world)]


def fact_texts(record: dict, world: World) -> list[str]:
    """The needed facts as the world states them (the oracle's knowledge), in reasoning order."""
    try:
        return [world.facts[f] for f in record["meta"]["facts"]]
    except KeyError as e:
        raise DataError(f"record {record.get('uid')!r}: fact {e} is not in this world") from e


def facts_stated(text: str | None, record: dict, world: World) -> int:
    """How many of the record's needed fact sentences occur verbatim in ``text``."""
    low = (text or "").lower()
    return sum(s in low for s in fact_sentences(record, world))


def mean_coverage(texts: dict[str, str], records: list[dict], world: World) -> float | None:
    """Mean share of the needed fact sentences that ``texts[uid]`` contains, over the records that
    have a text (e.g. the training prompts of a knowledge method)."""
    by_uid = {r["uid"]: r for r in records}
    shares = [facts_stated(t, by_uid[u], world) / len(by_uid[u]["meta"]["facts"]) for u, t in texts.items()
              if u in by_uid]
    return sum(shares) / len(shares) if shares else None


def derives_answer(output: str | None, record: dict, correct: bool) -> bool:
    """Whether the reasoning reaches the gold answer, whatever letter is written after it: on a
    multiple-choice item, the option text mentioned last before the answer marker is the gold
    option's text; on a free-answer item, the item is correct."""
    options = record.get("options") or []
    if not options:
        return bool(correct)
    head = (output or "").split(ANSWER_MARKER)[0].lower()
    ends = {}  # option letter -> where its text's last mention ends (-1: never mentioned)
    for o in options:
        letter, _, text = o.partition(" ")
        pos = head.rfind(text.lower()) if text else -1
        ends[letter] = pos + len(text) if pos >= 0 else -1
    best = max(ends.values())
    return best >= 0 and ends.get(record["answer"]) == best


def item_features(record: dict) -> dict:
    """What the analysis groups an item by; ``min_exposure`` = fewest training questions stating
    one of its facts (1 = some needed fact was seen once)."""
    m = record.get("meta") or {}
    if "fact_exposures" not in m or "hops" not in m:
        raise DataError(f"record {record.get('uid')!r} lacks meta.fact_exposures / meta.hops (not a synth record)")
    return {"uid": record["uid"], "dataset": record["dataset"], "split": record["split"], "task": record["task"],
            "variant": m["variant"], "hops": m["hops"], "min_exposure": min(m["fact_exposures"]),
            "mc": bool(record.get("options"))}


def item_rows(method: str, eval_rows: list[dict], records: list[dict], world: World,
              inserted: dict[str, str] | None = None) -> list[dict]:
    """One analysis row per evaluated item: features, correctness, answer presence, and the share
    of needed facts the output states (``facts_in_output``) and, with ``inserted`` (uid -> the
    knowledge text in the prompt), the share the inserted knowledge contains."""
    by_uid = {r["uid"]: r for r in records}
    out = []
    for row in eval_rows:
        rec = by_uid.get(row["uid"])
        if rec is None:
            raise DataError(f"evaluated uid {row['uid']!r} is not among the records")
        n = len(rec["meta"]["facts"])
        item = {"method": method, **item_features(rec), "correct": bool(row["correct"]),
                "derives": derives_answer(row.get("output"), rec, bool(row["correct"])),
                "has_answer": bool(row.get("has_answer", True)), "facts_needed": n,
                "facts_in_output": facts_stated(row.get("output"), rec, world) / n}
        if inserted is not None:
            item["facts_in_knowledge"] = facts_stated(inserted.get(row["uid"], ""), rec, world) / n
        out.append(item)
    return out


def accuracy_by(items: list[dict], by: list[str], n_boot: int = 1000, seed: int = 0):
    """Accuracy with a 95% bootstrap CI per method and group (``by``: item keys, e.g. ["split"])."""
    from nesylib.evaluation.metrics import accuracy_table

    if not items:
        raise ConfigError("accuracy_by needs at least one item row")
    return accuracy_table(items, by=["method"] + list(by), n_boot=n_boot, seed=seed)


def paired_vs(items: list[dict], reference: str = "std", by: str = "split", n_boot: int = 1000, seed: int = 0):
    """Paired bootstrap difference (method - reference) on the shared items of each ``by`` group."""
    import pandas as pd

    from nesylib.evaluation.metrics import paired_bootstrap_diff

    flags: dict[str, dict[str, bool]] = {}
    group: dict[str, object] = {}
    for it in items:
        flags.setdefault(it["method"], {})[it["uid"]] = it["correct"]
        group[it["uid"]] = it[by]
    if reference not in flags:
        raise ConfigError(f"reference method {reference!r} has no items (methods: {sorted(flags)})")
    rows = []
    for method, f in flags.items():
        if method == reference:
            continue
        for g in dict.fromkeys(group[u] for u in f):
            uids = [u for u in f if group[u] == g and u in flags[reference]]
            if not uids:
                continue
            d = paired_bootstrap_diff([f[u] for u in uids], [flags[reference][u] for u in uids], n_boot=n_boot,
                                      seed=seed)
            rows.append({"method": method, by: g, **d})
    return pd.DataFrame(rows, columns=["method", by, "diff", "ci_low", "ci_high", "p_value", "n"])


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` (missing or None cells left empty; "|" escaped)."""
    def cell(v):
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def chance_rows(records: list[dict]) -> list[dict]:
    """The chance floor per item: 1/options on multiple choice, 0 on free-form amounts."""
    return [{"method": "chance", **item_features(r), "expected": 1 / len(r["options"]) if r.get("options") else 0.0}
            for r in records]


def cooccurrence_baseline(train_rows: list[dict], records: list[dict], world: World, seed: int = 42) -> list[dict]:
    """A surface heuristic that uses no reasoning: for each multiple-choice item, pick the option
    that occurs in the most training rationales together with one of the names in the question
    (ties and all-zero scores broken by a draw seeded by ``seed`` and the uid). Free-form items
    (unit conversions) have no options to pick from and are left out. Returns item rows."""
    units = {u for chain in world.unit_chains for u in chain}
    names = set(world.persons) | set(world.towns) | set(world.provinces) | set(world.goods) | units
    docs = []
    for r in train_rows:
        if "rationale" not in r:
            raise DataError(f"train row {r.get('uid')!r} has no 'rationale'")
        docs.append(set(_WORD.findall(r["rationale"])))
    out = []
    for rec in records:
        if not rec.get("options"):
            continue
        stem = rec["question"].split("\nOptions:")[0]
        asked = set(_WORD.findall(stem)) & names
        scores = []
        for opt in rec["options"]:
            text = opt.split(") ", 1)[1]
            words = set(_WORD.findall(text))
            scores.append(sum(1 for d in docs if words <= d and d & asked))
        best = max(scores)
        tied = [i for i, s in enumerate(scores) if s == best]
        pick = random.Random(f"{seed}-{rec['uid']}").choice(tied)
        letter = rec["options"][pick].split(")", 1)[0] + ")"
        out.append({"method": "cooccurrence", **item_features(rec), "correct": letter == rec["answer"],
                    "prediction": letter, "score": best, "tied": len(tied)})
    return out
