"""Your own dataset by configuration: a YAML entry turns a local file into records (nesylib.data.benchmarks's schema).

An entry lives in a preset's top-level ``datasets:`` mapping, inline or as the path of a YAML file::

    datasets:
      my_qa: ../examples/my_qa/my_qa.yaml     # a file holding the entry (relative to the preset file)
      quiz:                                  # or the entry itself
        path: quiz.csv
        answer_type: choice
        fields: {question: stem, options: [A, B, C, D], answer: key}

Keys of an entry (only ``path`` or ``hf``, and ``answer_type``, are required):

    name              the dataset's name (in a file of its own; in a preset the mapping key is the name)
    path              a local .jsonl, .csv or .parquet file, relative to the YAML file that names it
    format            jsonl | csv | parquet, when the suffix does not tell
    hf                instead of path: {id, revision, config, split} of a Hugging Face dataset; the
                      revision must be pinned, and the ``datasets`` package (and a network or a filled
                      cache) is needed
    answer_type       choice (an option letter), number, text (exact text) or yesno; it picks the answer
                      extraction rule (nesylib.evaluation.extract) for the teacher's filter and for evaluation
    fields            project field -> your column: question, answer (defaults: the same names),
                      options (choice: a column holding a list, a JSON list or "a | b | c", or a list of
                      columns, one per option), split (a column holding train or test), id (a column with
                      a unique id, used in the uid; default: the row's position)
    task_description  one sentence for the prompts (default: a generic one for the answer type)
    train_fraction    share of rows in the train split when there is no split column (default 0.8;
                      0 = evaluation only), drawn as BBH's split is (method.md D1)
    role              in_domain | out_of_domain: which average the set counts in (default: in_domain
                      when it has train rows, else out_of_domain)
    few_shot          teacher demonstrations: a list of {question, rationale, answer} (options too, for
                      choice), in the project's field names
    max_new_tokens    the evaluation's generation cap (default 320, the floor of nesylib.evaluation.evaluate)

An entry with an unknown key, field or answer type raises ``ConfigError`` naming where the entry is. Reading
an entry's rows into records (gold answers normalised, bad rows named by file and line) is
``nesylib.data.custom_records``.

Defined datasets are seen by every process of a run: ``nesylib run`` puts the preset's entries into
``$NESYLIB_DATASETS`` (JSON) for the notebook kernels it starts; by hand, set it to a JSON mapping or to
entry files separated by ``os.pathsep``. ``register``/``register_file`` add one to this process only.
The task of a custom dataset is its name (uid ``<name>/<name>/<id>``); nesylib.data.benchmarks refuses names of
built-in sets and tasks.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import yaml

from nesylib.data.custom_records import _convert
from nesylib.errors import ConfigError, DataError
from nesylib.files import file_hash

ENV = "NESYLIB_DATASETS"
ANSWER_TYPES = {  # answer type -> how the answer must be written (teacher prompt, default description)
    "choice": "the letter of one option in parentheses, e.g. (B)",
    "number": "a number alone, without units",
    "text": "the exact answer text alone",
    "yesno": "Yes or No",
}
ROLES = ("in_domain", "out_of_domain")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
ENTRY_KEYS = ("name", "path", "format", "hf", "answer_type", "fields", "task_description", "train_fraction",
              "role", "few_shot", "max_new_tokens")
FIELD_KEYS = ("question", "answer", "options", "split", "id")
HF_KEYS = ("id", "revision", "config", "split")
DEFAULT_TRAIN_FRACTION = 0.8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ------------------------------------------------------------------------------ entries
def parse_entry(name: str, raw, base_dir: Path | str, where: str) -> dict:
    """A checked entry with defaults filled in and ``path`` made absolute (``base_dir``: what a relative
    path is relative to; ``where``: names the entry in errors). Idempotent on its own output."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: dataset {name!r} must be a mapping of entry keys or the path of a YAML "
                          f"file holding one, got {type(raw).__name__}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: dataset name {name!r} must be letters, digits, '_', '.' or '-' (no '/')")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: dataset {name!r} has unknown key(s) {unknown}; allowed: {list(ENTRY_KEYS)}")
    if raw.get("name", name) != name:
        raise ConfigError(f"{where}: the entry is named {raw['name']!r} but is listed as {name!r}")
    kind = raw.get("answer_type")
    if kind not in ANSWER_TYPES:
        raise ConfigError(f"{where}: dataset {name!r}: answer_type must be one of {list(ANSWER_TYPES)}, got {kind!r}")
    entry = {"name": name, "answer_type": kind}
    if ("path" in raw) == ("hf" in raw):
        raise ConfigError(f"{where}: dataset {name!r} needs exactly one of 'path' (a local file) or 'hf'")
    if "path" in raw:
        if not isinstance(raw["path"], str) or not raw["path"]:
            raise ConfigError(f"{where}: dataset {name!r}: 'path' must be a file path, got {raw['path']!r}")
        path = Path(raw["path"]).expanduser()
        entry["path"] = str(path if path.is_absolute() else (Path(base_dir) / path).resolve())
        fmt = raw.get("format") or FORMATS.get(path.suffix.lower())
        if fmt not in set(FORMATS.values()):
            raise ConfigError(f"{where}: dataset {name!r}: cannot tell the format of {raw['path']!r}; set "
                              f"format: to one of {sorted(set(FORMATS.values()))}")
        entry["format"] = fmt
    else:
        entry["hf"] = _hf(raw["hf"], name, where)
    entry["fields"] = _fields(raw.get("fields") or {}, kind, name, where)
    frac = raw.get("train_fraction")
    if frac is not None and "split" in entry["fields"]:
        raise ConfigError(f"{where}: dataset {name!r}: give either fields.split (a split column) or "
                          f"train_fraction, not both")
    if frac is None and "split" not in entry["fields"]:
        frac = DEFAULT_TRAIN_FRACTION
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1):
        raise ConfigError(f"{where}: dataset {name!r}: train_fraction must be a number in [0, 1], got {frac!r}")
    entry["train_fraction"] = None if frac is None else float(frac)
    role = raw.get("role") or ("out_of_domain" if frac == 0 else "in_domain")
    if role not in ROLES:
        raise ConfigError(f"{where}: dataset {name!r}: role must be one of {list(ROLES)}, got {role!r}")
    entry["role"] = role
    desc = raw.get("task_description") or f"Answer the question with {ANSWER_TYPES[kind]}."
    if not isinstance(desc, str):
        raise ConfigError(f"{where}: dataset {name!r}: task_description must be text, got {desc!r}")
    entry["task_description"] = " ".join(desc.split())
    cap = raw.get("max_new_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{where}: dataset {name!r}: max_new_tokens must be an integer >= 1, got {cap!r}")
    entry["max_new_tokens"] = cap
    shots = raw.get("few_shot") or []
    if not isinstance(shots, list):
        raise ConfigError(f"{where}: dataset {name!r}: few_shot must be a list of {{question, rationale, answer}}")
    entry["few_shot"] = [_shot(s, kind, f"{where}: dataset {name!r} few_shot[{i}]") for i, s in enumerate(shots)]
    return entry


def _hf(hf, name: str, where: str) -> dict:
    if not isinstance(hf, dict):
        raise ConfigError(f"{where}: dataset {name!r}: hf must be a mapping {{id, revision, config, split}}")
    unknown = sorted(set(hf) - set(HF_KEYS))
    if unknown:
        raise ConfigError(f"{where}: dataset {name!r}: hf has unknown key(s) {unknown}; allowed: {list(HF_KEYS)}")
    if not isinstance(hf.get("id"), str) or not hf["id"]:
        raise ConfigError(f"{where}: dataset {name!r}: hf.id (owner/name on the hub) is required")
    if not isinstance(hf.get("revision"), str) or not hf["revision"]:
        raise ConfigError(f"{where}: dataset {name!r}: hf.revision is required: pin a commit, so that the data "
                          f"cannot change under a run")
    return {"id": hf["id"], "revision": hf["revision"], "config": hf.get("config"), "split": hf.get("split") or "train"}


def _fields(fields, kind: str, name: str, where: str) -> dict:
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: dataset {name!r}: fields must map project fields to your columns")
    unknown = sorted(set(fields) - set(FIELD_KEYS))
    if unknown:
        raise ConfigError(f"{where}: dataset {name!r}: fields has unknown key(s) {unknown}; the project's fields "
                          f"are {list(FIELD_KEYS)}")
    out = {"question": "question", "answer": "answer", **fields}
    for key, col in out.items():
        ok = isinstance(col, str) and col or (key == "options" and isinstance(col, list) and col
                                              and all(isinstance(c, str) and c for c in col))
        if not ok:
            raise ConfigError(f"{where}: dataset {name!r}: fields.{key} must name a column, got {col!r}")
    if "options" in out and kind != "choice":
        raise ConfigError(f"{where}: dataset {name!r}: fields.options applies to answer_type choice only")
    return out


def _shot(shot, kind: str, where: str) -> dict:
    if not isinstance(shot, dict):
        raise ConfigError(f"{where}: expected a mapping {{question, rationale, answer}}")
    unknown = sorted(set(shot) - {"question", "rationale", "answer", "options"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: question, rationale, answer, options")
    if not isinstance(shot.get("rationale"), str) or not shot["rationale"].strip():
        raise ConfigError(f"{where}: 'rationale' (the worked reasoning, without the final answer) is required")
    fields = {"question": "question", "answer": "answer", **({"options": "options"} if "options" in shot else {})}
    try:
        question, _, answer = _convert(shot, fields, kind, where)
    except DataError as e:
        raise ConfigError(str(e)) from None
    return {"question": question, "rationale": shot["rationale"].strip(), "answer": answer}  # options: in question


def _read_entry_file(path: Path) -> dict:
    if path.suffix.lower() in FORMATS:
        raise ConfigError(f"{path} is a data file; name the YAML entry that describes it (its path, answer_type "
                          f"and fields), see nesylib/data/custom_data.py")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"dataset entry file {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of entry keys (path, answer_type, fields, ...)")
    return raw


def load_entry_file(path: str | Path) -> tuple[str, dict]:
    """(name, entry) of a YAML file holding one entry; its ``name`` defaults to the file's stem."""
    path = Path(path).expanduser().resolve()
    raw = _read_entry_file(path)
    name = raw.get("name", path.stem)
    return name, parse_entry(name, raw, path.parent, str(path))


def resolve(mapping, base_dir: Path | str, where: str) -> dict[str, dict]:
    """A preset's ``datasets:`` mapping -> {name: entry}; a string value is the path of an entry file
    (relative to ``base_dir``), whose own ``name``, if it has one, must be the mapping's key."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: 'datasets' must map dataset names to entries or entry files")
    out = {}
    for name, value in mapping.items():
        if isinstance(value, str):
            path = Path(value).expanduser()
            path = (path if path.is_absolute() else Path(base_dir) / path).resolve()
            out[name] = parse_entry(name, _read_entry_file(path), path.parent, f"{path} (dataset {name!r} of {where})")
        else:
            out[name] = parse_entry(name, value, base_dir, where)
    return out


# ----------------------------------------------------------------------------- registry
_LOCAL: dict[str, dict] = {}  # defined in this process (register, register_file)
_ENV_CACHE: list = [None, {}]  # [the $NESYLIB_DATASETS text last parsed, its entries]


def _from_env() -> dict[str, dict]:
    raw = os.environ.get(ENV, "").strip()
    if raw != _ENV_CACHE[0]:
        if not raw:
            entries = {}
        elif raw.startswith("{"):
            try:
                mapping = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"${ENV}: not a JSON mapping ({e.msg})") from None
            entries = resolve(mapping, Path.cwd(), f"${ENV}")
        else:
            entries = dict(load_entry_file(p) for p in raw.split(os.pathsep) if p)
        _ENV_CACHE[:] = [raw, entries]
    return _ENV_CACHE[1]


def registered() -> dict[str, dict]:
    """Every dataset defined for this process: ``$NESYLIB_DATASETS`` and ``register``'s."""
    out = dict(_from_env())
    for name, entry in _LOCAL.items():
        if name in out and out[name] != entry:
            raise ConfigError(f"dataset {name!r} is defined twice, differently: in ${ENV} and in this process")
        out[name] = entry
    return out


def lookup(name: str) -> dict | None:
    return registered().get(name)


def register(name: str, raw: dict, base_dir: Path | str = ".") -> dict:
    """Define a dataset for this process (not for notebook kernels: use a preset's ``datasets:``)."""
    entry = parse_entry(name, raw, base_dir, "register()")
    if name in registered() and registered()[name] != entry:
        raise ConfigError(f"dataset {name!r} is already defined, differently")
    _LOCAL[name] = entry
    return entry


def register_file(path: str | Path) -> str:
    """Define the dataset of an entry file for this process; returns its name."""
    name, entry = load_entry_file(path)
    if name in registered() and registered()[name] != entry:
        raise ConfigError(f"dataset {name!r} ({path}) is already defined, differently")
    _LOCAL[name] = entry
    return name


@contextlib.contextmanager
def exported(entries: dict[str, dict] | None):
    """``$NESYLIB_DATASETS`` set to ``entries`` (JSON) for the block, so child processes (notebook
    kernels) see them; restored afterwards. No entries: the environment is left as it is."""
    if not entries:
        yield
        return
    saved = os.environ.get(ENV)
    os.environ[ENV] = json.dumps(entries, sort_keys=True)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def answer_type_of_task(task: str) -> str | None:
    """The answer type of a custom dataset's task (= its name); None for any other task."""
    entry = registered().get(task) if (_LOCAL or os.environ.get(ENV)) else None
    return entry["answer_type"] if entry else None


_HASHES: dict[tuple, str] = {}


def fingerprint(entries: dict[str, dict]) -> dict:
    """What a run's outputs depend on: each entry and its data file's content (hashed once per mtime)."""
    out = {}
    for name, entry in sorted(entries.items()):
        data = entry.get("hf", {}).get("revision")
        if "path" in entry:
            p = Path(entry["path"])
            try:
                st = p.stat()
            except OSError:
                raise DataError(f"dataset {name!r}: data file {p} does not exist") from None
            key = (str(p), st.st_mtime_ns, st.st_size)
            if key not in _HASHES:
                _HASHES[key] = file_hash(p)
            data = _HASHES[key]
        out[name] = {"entry": entry, "data": data}
    return out
