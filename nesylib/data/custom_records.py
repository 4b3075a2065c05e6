"""A configured dataset's rows as records (nesylib.data.benchmarks's schema): reading its local JSONL, CSV or
Parquet file or its pinned Hugging Face dataset, converting each row (question, options, normalised gold answer),
and the train/test split. The entries themselves (their keys, checks and registry) are ``nesylib.data.custom_data``.

Gold answers are normalised as the built-in sets store them: choice "(B)" (from "B", "(b)", the option's
text, or an integer = 0-based index), number "1234.5" (commas removed), yesno "Yes"/"No" (also from
true/false), text as written. A row that cannot be read raises ``DataError`` naming the file, the line
(CSV/JSONL; Parquet: the row) and the field.
"""
from __future__ import annotations

import csv
import decimal
import json
import os
import random
import re
from pathlib import Path

from nesylib.errors import DataError
from nesylib.files import iter_jsonl

SPLIT_SEED = 42  # the seed of BBH's split rule (nesylib.data.benchmarks.compute_bbh_split)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_YES_NO = {"yes": "Yes", "no": "No", "true": "Yes", "false": "No"}


def _rows(entry: dict):
    """(where, row dict) for each data row; ``where`` is "file:line" (JSONL, CSV) or "file: row i"."""
    if "hf" in entry:
        yield from _hf_rows(entry)
        return
    path = Path(entry["path"])
    if not path.is_file():
        raise DataError(f"dataset {entry['name']!r}: data file {path} does not exist")
    if entry["format"] == "jsonl":
        for n, row in iter_jsonl(path):
            if row is not None:
                yield f"{path}:{n}", row
    elif entry["format"] == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or None in row.values():  # DictReader's marks of extra / missing cells
                    raise DataError(f"{where}: the row's number of cells differs from the header's "
                                    f"{len(reader.fieldnames)} columns")
                yield where, row
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs the 'pyarrow' package (pip install pyarrow)") from None
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row


def _hf_rows(entry: dict):
    hf = entry["hf"]
    label = f"{hf['id']}@{hf['revision']}"
    try:
        import datasets
    except ImportError:
        raise DataError(f"dataset {entry['name']!r} ({label}): loading from the Hugging Face hub needs the "
                        f"'datasets' package; or export the data to a local JSONL/CSV/Parquet file and use path:"
                        ) from None
    try:
        ds = datasets.load_dataset(hf["id"], hf.get("config"), split=hf["split"], revision=hf["revision"])
    except Exception as e:  # noqa: BLE001 - offline, unknown id or revision, ...: one clear message
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v) not in (None, "", "0")]
        hint = (f" (offline mode: {', '.join(offline)} set, and the dataset is not in the local cache)" if offline
                else " (is the hub reachable, and do the id and revision exist?)")
        raise DataError(f"dataset {entry['name']!r}: cannot load {label} split {hf['split']!r}{hint}: "
                        f"{type(e).__name__}: {e}") from None
    for i, row in enumerate(ds):
        yield f"{label}[{hf['split']}]: row {i}", row


def _cell(row: dict, fields: dict, key: str, where: str):
    col = fields[key]
    if col not in row or row[col] is None or (isinstance(row[col], str) and not row[col].strip()):
        state = "missing" if col not in row else "empty"
        raise DataError(f"{where}: field {col!r} (the {key}) is {state}; the row has {sorted(map(str, row))}")
    return row[col]


def _options(row: dict, fields: dict, where: str) -> list[str]:
    col = fields["options"]
    if isinstance(col, list):
        values = [_cell(row, {"options": c}, "options", where) for c in col]
    else:
        values = _cell(row, fields, "options", where)
        if isinstance(values, str):
            text = values.strip()
            if text.startswith("["):
                try:
                    values = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: field {col!r} (the options) is not a JSON list ({e.msg})") from None
            else:
                values = [v for v in re.split(r"\s*\|\s*|\n", text) if v.strip()]
    if not isinstance(values, list) or len(values) < 2 or not all(isinstance(v, (str, int, float)) for v in values):
        raise DataError(f"{where}: field {col!r} (the options) must hold at least two options, got {values!r}")
    return [str(v).strip() for v in values]


def _label(i: int) -> str:
    return f"({chr(ord('A') + i)})"


def _convert(row: dict, fields: dict, kind: str, where: str) -> tuple[str, list[str], str]:
    """(question, options, normalised gold) of one row."""
    question = _cell(row, fields, "question", where)
    if not isinstance(question, str):
        raise DataError(f"{where}: field {fields['question']!r} (the question) must be text, got {question!r}")
    question = question.strip()
    gold = _cell(row, fields, "answer", where)
    bad = f"{where}: field {fields['answer']!r} (the answer) "
    options: list[str] = []
    if kind == "choice":
        if "options" in fields:
            texts = [re.sub(r"^\([A-Za-z]\)\s*", "", o) for o in _options(row, fields, where)]
            if len(texts) > 26:
                raise DataError(f"{where}: at most 26 options (A-Z), got {len(texts)}")
            options = [f"{_label(i)} {t}" for i, t in enumerate(texts)]
            question = f"{question}\nOptions:\n" + "\n".join(options)
        elif "Options:" in question:
            block = question.rsplit("Options:", 1)[1]
            options = [ln.strip() for ln in block.splitlines() if re.match(r"^\([A-Z]\)", ln.strip())]
            texts = [re.sub(r"^\([A-Z]\)\s*", "", o) for o in options]
        if len(options) < 2:
            raise DataError(f"{where}: answer_type choice needs options: map fields.options to a column, or end the "
                            f"question with an 'Options:' block of '(A) ...' lines")
        letters = [_label(i) for i in range(len(options))]
        if isinstance(gold, bool):
            raise DataError(bad + f"must be an option letter, an option's text or a 0-based index, got {gold!r}")
        if isinstance(gold, int):
            if not 0 <= gold < len(options):
                raise DataError(bad + f"index {gold} is outside the {len(options)} options (0-based)")
            gold = letters[gold]
        else:
            text = str(gold).strip()
            letter = re.fullmatch(r"\(?([A-Za-z])\)?", text)
            if letter and f"({letter.group(1).upper()})" in letters:
                gold = f"({letter.group(1).upper()})"
            elif text in texts:
                gold = letters[texts.index(text)]
            else:
                raise DataError(bad + f"{text!r} is neither an option letter {letters[0]}-{letters[-1]} nor the "
                                f"text of an option")
    elif kind == "number":
        if isinstance(gold, float):  # positional, as the extractor reads numbers: 1e-05 -> 0.00001
            gold = str(int(gold)) if gold.is_integer() else format(decimal.Decimal(repr(gold)), "f")
        text = str(gold).strip()
        text = text.replace(",", "")
        if isinstance(gold, bool) or not _NUMBER.fullmatch(text):
            raise DataError(bad + f"must be a number for answer_type number, got {gold!r}")
        gold = text
    elif kind == "yesno":
        key = ("true" if gold else "false") if isinstance(gold, bool) else str(gold).strip().lower()
        if key not in _YES_NO:
            raise DataError(bad + f"must be yes/no (or true/false) for answer_type yesno, got {gold!r}")
        gold = _YES_NO[key]
    else:
        gold = str(gold).strip()
    return question, options, gold


def load_records(entry: dict, split: str = "all") -> list[dict]:
    """The dataset's records of ``split`` (train | test | all), in file order."""
    if split not in ("train", "test", "all"):
        raise DataError(f"dataset {entry['name']!r}: split must be train, test or all, got {split!r}")
    name, fields, kind = entry["name"], entry["fields"], entry["answer_type"]
    rows, seen = [], {}
    for i, (where, row) in enumerate(_rows(entry)):
        question, options, gold = _convert(row, fields, kind, where)
        index = str(i)
        if "id" in fields:
            index = str(_cell(row, fields, "id", where)).strip()
            if "/" in index:
                raise DataError(f"{where}: field {fields['id']!r} (the id) must not contain '/', got {index!r}")
            if index in seen:
                raise DataError(f"{where}: field {fields['id']!r} (the id) {index!r} repeats the one at {seen[index]}")
            seen[index] = where
        part = None
        if "split" in fields:
            part = str(_cell(row, fields, "split", where)).strip().lower()
            if part not in ("train", "test"):
                raise DataError(f"{where}: field {fields['split']!r} (the split) must be train or test, got {part!r}"
                                f" (or drop fields.split and set train_fraction)")
        rows.append((index, part, question, options, gold, where))
    if not rows:
        raise DataError(f"dataset {name!r}: its data holds no rows")
    if entry["train_fraction"] is not None:  # BBH's rule (D1): a seeded shuffle, the first round(f n) train
        order = list(range(len(rows)))
        random.Random(f"{SPLIT_SEED}-{name}").shuffle(order)
        train = set(order[:round(entry["train_fraction"] * len(rows))])
        rows = [(r[0], "train" if i in train else "test", *r[2:]) for i, r in enumerate(rows)]
    folder = str(Path(entry["path"]).parent) + os.sep if "path" in entry else ""
    out = [{"uid": f"{name}/{name}/{index}", "dataset": name, "task": name, "split": part, "question": q,
            "options": opts, "answer": gold, "task_description": entry["task_description"],
            "meta": {"source": where.removeprefix(folder)}}  # "my_qa.jsonl:4": file and line, not the machine's path
           for index, part, q, opts, gold, where in rows if split in ("all", part)]
    if not out:
        raise DataError(f"dataset {name!r} has no {split} rows (train_fraction {entry['train_fraction']}, "
                        f"split column {fields.get('split')!r})")
    return out


def splits(entry: dict) -> list[str]:
    """The splits the dataset has rows in (train before test)."""
    present = {r["split"] for r in load_records(entry, "all")}
    return [s for s in ("train", "test") if s in present]
