"""Benchmark loaders: pinned files -> one record schema.

A record is a plain dict (so it drops straight into ``datasets.Dataset``):

    uid               "{dataset}/{task}/{index}", stable across runs
    dataset           bbh | gsm8k | agieval | arc-e | arc-c | gsm8k_plus, or one defined by configuration
    task              task name; drives answer extraction and per-task accuracy
    split             train | test
    question          question text including an "Options:" block where there is one
    options           list of option lines ("(A) ...", "Yes") or []
    answer            gold answer string: "(C)", "No", "180"
    task_description  one sentence describing the task
    meta              dataset-specific extras (GSM8K solution, GSM-Plus perturbation type, ...)

Conversion rules follow docs/method.md §1.5 (D1, D3, D5, D6, D8). Datasets of one's own are defined by
configuration (nesylib.data.custom_data) and selected by name like these (``known_datasets``).
"""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from nesylib.data import custom_data, custom_records
from nesylib.errors import ConfigError, DataError
from nesylib.files import read_jsonl  # noqa: F401 (read here by many modules)
from nesylib.data.sources import fetch

BBH_TASKS = [
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
]
AGIEVAL_TASKS = ["aqua-rat", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en", "sat-en-without-passage",
                 "sat-math"]  # D5: the 8 non-Gaokao English MCQ tasks
DATASETS = ["bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus"]
IN_DOMAIN = ["bbh", "gsm8k"]
OUT_OF_DOMAIN = ["agieval", "arc-e", "arc-c", "gsm8k_plus"]  # BB-sub is unavailable (D4)

GSM8K_DESCRIPTION = ("Solve multi-step basic math word problems by applying mathematical and logical "
                     "reasoning step by step.")
AGIEVAL_DESCRIPTIONS = {
    "aqua-rat": "Solve an algebraic word problem and pick the matching option.",
    "logiqa-en": "Answer a logical reasoning question about a short passage.",
    "lsat-ar": "Solve an analytical reasoning puzzle from the LSAT by checking the stated constraints.",
    "lsat-lr": "Answer a logical reasoning question from the LSAT about a short argument.",
    "lsat-rc": "Answer a reading comprehension question from the LSAT about a passage.",
    "sat-en": "Answer an SAT reading and writing question about a passage.",
    "sat-en-without-passage": "Answer an SAT reading and writing question without its passage.",
    "sat-math": "Solve an SAT math question and pick the matching option.",
}
ARC_DESCRIPTIONS = {
    "arc-e": "Answer a grade-school science question by choosing the correct option.",
    "arc-c": "Answer a challenging grade-school science question by choosing the correct option.",
}
_CONCLUDE = re.compile(r'\s*Your response should conclude with the format "Therefore, the answer is"\.?\s*$')
SPLIT_FILE = Path(__file__).with_name("splits") / "bbh_split_v1.json"
SPLIT_SEED = 42
TRAIN_FRACTION = 0.8


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: record lacks field(s) {missing}")


def parse_options(question: str) -> list[str]:
    """Option lines after an 'Options:' header: '(A) foo' lines or '- Yes' bullets."""
    if "Options:" not in question:
        return []
    block = question.rsplit("Options:", 1)[1]
    opts = []
    for line in block.strip().splitlines():
        line = line.strip()
        if re.match(r"^\([A-Za-z0-9]+\)", line):
            opts.append(line)
        elif line.startswith("- "):
            opts.append(line[2:].strip())
    return opts


def _record(dataset, task, index, split, question, answer, description, meta=None, options=None) -> dict:
    return {
        "uid": f"{dataset}/{task}/{index}", "dataset": dataset, "task": task, "split": split,
        "question": question, "options": parse_options(question) if options is None else options,
        "answer": answer, "task_description": description, "meta": meta or {},
    }


# ----------------------------------------------------------------------------------------- BBH
def bbh_description(task: str, data_dir=None) -> str:
    """Line 1 of CasCoD's prompt file, without its conclude-format sentence (D8)."""
    path = fetch(f"cascod-prompts/cot-prompts/{task}.txt", data_dir)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return _CONCLUDE.sub("", first).strip()


def compute_bbh_split(sizes: dict[str, int]) -> dict[str, list[int]]:
    """D1: per task, shuffle indices with Random(f"42-{task}"); the first round(0.8 n) train."""
    out = {}
    for task, n in sizes.items():
        idx = list(range(n))
        random.Random(f"{SPLIT_SEED}-{task}").shuffle(idx)
        out[task] = sorted(idx[round(TRAIN_FRACTION * n):])
    return out


@lru_cache(maxsize=1)
def bbh_split() -> dict[str, set[int]]:
    """Test indices per task from the versioned manifest (never regenerated silently)."""
    manifest = json.loads(SPLIT_FILE.read_text())
    return {task: set(ix) for task, ix in manifest["test_indices"].items()}


@lru_cache(maxsize=None)
def _bbh_examples(task: str, data_dir=None) -> list[dict]:
    path = fetch(f"bbh/bbh/{task}.json", data_dir)
    doc = _read_json(path)
    if not isinstance(doc, dict) or "examples" not in doc:
        raise DataError(f"{path}: expected an object with 'examples'")
    for i, ex in enumerate(doc["examples"]):
        _require(ex, ("input", "target"), f"{path}: examples[{i}]")
    return doc["examples"]


def load_bbh(split: str = "all", tasks=None, data_dir=None) -> list[dict]:
    tasks = tasks or BBH_TASKS
    unknown = sorted(set(tasks) - set(BBH_TASKS))
    if unknown:
        raise DataError(f"unknown BBH task(s) {unknown}; known: {BBH_TASKS}")
    test_ix = bbh_split()
    out = []
    for task in tasks:
        desc = bbh_description(task, data_dir)
        for i, ex in enumerate(_bbh_examples(task, data_dir)):
            s = "test" if i in test_ix[task] else "train"
            if split in ("all", s):
                out.append(_record("bbh", task, i, s, ex["input"], ex["target"], desc))
    return out


def load_codex_rationales(task: str, data_dir=None) -> list[str]:
    """Raw Codex CoT predictions for a BBH task, aligned with the task's examples by index."""
    path = fetch(f"rationales/bbh-code-davinci-002-cot/{task}_few_shot_template_0-255000.json", data_dir)
    doc = _read_json(path)
    outs = doc.get("outputs") if isinstance(doc, dict) else None
    examples = _bbh_examples(task, data_dir)
    if not isinstance(outs, list) or len(outs) != len(examples):
        raise DataError(f"{path}: expected {len(examples)} outputs aligned with bbh/bbh/{task}.json")
    for i, (o, ex) in enumerate(zip(outs, examples)):
        _require(o, ("prediction", "target"), f"{path}: outputs[{i}]")
        if o["target"] != ex["target"]:
            raise DataError(f"{path}: outputs[{i}] target {o['target']!r} != bbh target {ex['target']!r}")
    return [o["prediction"] for o in outs]


# --------------------------------------------------------------------------------------- GSM8K
def _gsm8k_gold(solution: str, where: str) -> str:
    m = re.search(r"####\s*(.+?)\s*$", solution.strip())
    if not m:
        raise DataError(f"{where}: GSM8K answer lacks its '#### <number>' line")
    return m.group(1).replace(",", "").strip()


def load_gsm8k(split: str = "test", data_dir=None) -> list[dict]:
    if split not in ("train", "test"):
        raise DataError(f"GSM8K split must be 'train' or 'test', got {split!r}")
    path = fetch(f"gsm8k/{split}.jsonl", data_dir)
    out = []
    for i, row in enumerate(read_jsonl(path)):
        _require(row, ("question", "answer"), f"{path}:{i + 1}")
        gold = _gsm8k_gold(row["answer"], f"{path}:{i + 1}")
        out.append(_record("gsm8k", "gsm8k", i, split, row["question"], gold, GSM8K_DESCRIPTION,
                           meta={"solution": row["answer"]}, options=[]))
    return out


def load_gsm_plus(data_dir=None, include_critical_thinking: bool = False) -> list[dict]:
    """GSM-Plus testmini; D6 drops the 300 'critical thinking' items (gold 'None')."""
    path = fetch("gsm-plus/gsmplus_testmini.jsonl", data_dir)
    out = []
    for i, row in enumerate(read_jsonl(path)):
        _require(row, ("question", "answer", "perturbation_type"), f"{path}:{i + 1}")
        if row["perturbation_type"] == "critical thinking" and not include_critical_thinking:
            continue
        out.append(_record("gsm8k_plus", "gsm8k_plus", i, "test", row["question"], str(row["answer"]),
                           GSM8K_DESCRIPTION, meta={"perturbation_type": row["perturbation_type"]}, options=[]))
    return out


# ------------------------------------------------------------------------------------- AGIEval
def load_agieval(tasks=None, data_dir=None) -> list[dict]:
    tasks = tasks or AGIEVAL_TASKS
    out = []
    for task in tasks:
        if task not in AGIEVAL_DESCRIPTIONS:
            raise DataError(f"unknown AGIEval task {task!r}; known: {AGIEVAL_TASKS}")
        path = fetch(f"agieval/v1/{task}.jsonl", data_dir)
        for i, row in enumerate(read_jsonl(path)):
            where = f"{path}:{i + 1}"
            _require(row, ("question", "options", "label"), where)
            if not row["options"] or not row["label"]:
                raise DataError(f"{where}: multiple-choice record without options or label")
            opts = [o.strip() for o in row["options"]]
            passage = (row.get("passage") or "").strip()
            q = (passage + "\n" if passage else "") + row["question"].strip() + "\nOptions:\n" + "\n".join(opts)
            out.append(_record("agieval", task, i, "test", q, f"({row['label']})", AGIEVAL_DESCRIPTIONS[task],
                               options=opts))
    return out


# ----------------------------------------------------------------------------------------- ARC
def load_arc(which: str = "arc-e", data_dir=None) -> list[dict]:
    files = {"arc-e": "arc/ARC-Easy-Test.json", "arc-c": "arc/ARC-Challenge-Test.json"}
    if which not in files:
        raise DataError(f"ARC set must be one of {sorted(files)}, got {which!r}")
    path = fetch(files[which], data_dir)
    rows = _read_json(path)
    out = []
    for i, row in enumerate(rows):
        _require(row, ("input", "target"), f"{path}: item {i}")
        q = row["input"]
        q = q[len("Question: "):] if q.startswith("Question: ") else q  # D8: avoid "Question:" twice
        out.append(_record(which, which, i, "test", q, row["target"], ARC_DESCRIPTIONS[which]))
    return out


# -------------------------------------------------------------------------------------- facade
def custom_datasets() -> dict[str, dict]:
    """Datasets defined by configuration (nesylib.data.custom_data): name -> entry. A name that is a built-in
    set's or task's is refused: records, scoring and averages key on these names."""
    entries = custom_data.registered()
    taken = sorted(set(entries) & (set(DATASETS) | {"bb", "synth"} | set(BBH_TASKS) | set(AGIEVAL_TASKS)))
    if taken:
        raise ConfigError(f"dataset name(s) {taken} of a configured dataset are built-in set or task names; "
                          f"rename them")
    return entries


def known_datasets() -> list[str]:
    """Every name ``load_dataset_records`` accepts: the built-in sets, then the configured ones."""
    return DATASETS + [n for n in custom_datasets() if n not in DATASETS]


def domain_sets() -> tuple[list[str], list[str]]:
    """(in-domain, out-of-domain) set names: the papers' (IN_DOMAIN, OUT_OF_DOMAIN) plus configured sets by role."""
    custom = custom_datasets()
    return (IN_DOMAIN + [n for n, e in custom.items() if e["role"] == "in_domain"],
            OUT_OF_DOMAIN + [n for n, e in custom.items() if e["role"] == "out_of_domain"])


def dataset_splits(name: str) -> list[str]:
    """The splits a set has: train and test for BBH and GSM8K, test for the other built-in sets; for a
    configured set, those its rows fall in."""
    entry = custom_datasets().get(name)
    if entry is not None:
        return custom_records.splits(entry)
    return ["train", "test"] if name in IN_DOMAIN else ["test"]


def load_dataset_records(name: str, split: str = "test", data_dir=None, tasks=None) -> list[dict]:
    """Records of one benchmark by its project name (see ``known_datasets``)."""
    entry = custom_datasets().get(name)
    if entry is not None:
        return custom_records.load_records(entry, split)
    if name == "bbh":
        return load_bbh(split, tasks, data_dir)
    if name == "gsm8k":
        return load_gsm8k(split, data_dir)
    if split == "train":
        raise DataError(f"{name} is an evaluation-only set; it has no train split")
    if name == "agieval":
        return load_agieval(tasks, data_dir)
    if name in ("arc-e", "arc-c"):
        return load_arc(name, data_dir)
    if name == "gsm8k_plus":
        return load_gsm_plus(data_dir)
    if name == "bb":
        raise DataError("BB-sub is not available (method.md D4): its pinned files are not public")
    raise DataError(f"unknown dataset {name!r}; choose from {known_datasets()} (or define one: "
                    f"nesylib/data/custom_data.py)")


def subsample(records: list[dict], per_task: int | None, seed: int = 42) -> list[dict]:
    """At most ``per_task`` records per task, chosen by a seeded shuffle; order kept stable."""
    if per_task is None:
        return list(records)
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r)
    keep = set()
    for task, rows in by_task.items():
        ix = list(range(len(rows)))
        random.Random(f"{seed}-{task}").shuffle(ix)
        keep.update(rows[i]["uid"] for i in ix[:per_task])
    return [r for r in records if r["uid"] in keep]


def to_hf_dataset(records: list[dict]):
    """The records as a ``datasets.Dataset`` (meta is serialised to JSON to keep the schema flat)."""
    import datasets

    rows = [{**r, "meta": json.dumps(r["meta"])} for r in records]
    return datasets.Dataset.from_list(rows)
