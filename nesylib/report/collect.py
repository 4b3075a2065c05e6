"""Reading a finished run: each notebook's results.json, params.json and env.json, checked; model sizes."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path


from nesylib.errors import ConfigError, DataError

MAIN_SOURCES = ("03_nesycd_training", "04_skintern_curriculum", "05_baselines")
ABLATIONS = "06_ablations"
SYNTHETIC = "08_synthetic_benchmark"
# what each notebook contributes here, so a missing one is reported with its consequence
ROLES = {"01_teacher_distillation": "the teacher and training-item counts in captions",
         "02_kb_construction": "the NesyCD tutor in captions", "03_nesycd_training": "the NesyCD row",
         "04_skintern_curriculum": "the SKIntern row", "05_baselines": "the baseline rows",
         ABLATIONS: "the ablation panels", SYNTHETIC: "the synthetic-benchmark table and figure"}
FIGURES = ("accuracy_vs_flops", "main_accuracy", "synthetic_accuracy", "ablations")
SWEEP_KEYS = ("sweep", "variant", "value", "accuracy", "ci_low", "ci_high", "n")
_STEM = re.compile(r"^\d\d_\w+$")
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", re.IGNORECASE)
_Z95 = 1.959964


# ------------------------------------------------------------------------------------ reading
@dataclass
class NotebookResult:
    """One notebook's folder: its results.json and (when present) params.json and env.json."""
    stem: str
    path: Path
    results: dict
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)


@dataclass
class Collected:
    """Every finished notebook under a results folder, in notebook order, and what was not there."""
    dir: Path
    notebooks: dict[str, NotebookResult]
    missing: list[str]
    notes: list[str]


def _read_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def collect(results_dir) -> Collected:
    """Read ``<results_dir>/<NN_name>/results.json`` of every notebook except figure notebooks."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"results_dir {str(root)!r} is not a folder; expected a run folder "
                          "(results/runs/<preset>) or an exported one (results/<preset>)")
    found, notes = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and _STEM.match(p.name) and "figures" not in p.name):
        res = d / "results.json"
        if not res.is_file():
            if (d / "params.json").is_file():
                notes.append(f"{d.name} started but has no results.json (unfinished): left out")
            continue
        extra = {n: _read_object(d / f"{n}.json") if (d / f"{n}.json").is_file() else {} for n in ("params", "env")}
        found[d.name] = NotebookResult(d.name, res, _read_object(res), extra["params"], extra["env"])
    if not found:
        raise ConfigError(f"results_dir {str(root)!r} has no <notebook>/results.json; run the notebooks first "
                          "(python -m nesylib run --preset <name>) or point at results/<preset>")
    missing = [s for s in ROLES if s not in found]
    if missing:
        notes.insert(0, f"not found in {root} (skipped, nothing filled in): "
                        + "; ".join(f"{s} ({ROLES[s]})" for s in missing))
    return Collected(root, found, missing, notes)


def _number(value, where: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise DataError(f"{where} must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(f"{where} = {value!r} is outside [{lo}, {hi}]")
    return float(value)


def _optional(value, where: str) -> float:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return math.nan if missing else _number(value, where)


def _count(value, where: str) -> int:
    v = _number(value, where, lo=0)
    if v != int(v):
        raise DataError(f"{where} must be a whole item count, got {value!r}")
    return int(v)


def _interval(value, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(f"{where} must be [low, high], got {value!r}")
    lo, hi = (_number(v, where, 0, 1) for v in value)
    if lo > hi:
        raise DataError(f"{where} = {value!r}: low above high")
    return lo, hi


# ------------------------------------------------------------------------------- model sizes
def model_size(name: str | None) -> float | None:
    """Parameters of a student from its name ("smollm2-135m" -> 1.35e8; aliases of models.PAPER_STUDENTS
    resolve to their hub ids first); None when the name states no size."""
    if not name:
        return None
    from nesylib.models import PAPER_STUDENTS

    m = _SIZE.search(PAPER_STUDENTS.get(name, str(name)))
    if not m:
        return None
    return float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6)


def format_size(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "size unknown"
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _student_of(row: dict, nb: NotebookResult) -> str:
    return str(row.get("student") or nb.results.get("student") or nb.params.get("student") or "unknown")


def _size_of(row: dict, nb: NotebookResult, student: str) -> float:
    stored = row.get("student_params") or nb.results.get("student_params")
    if isinstance(stored, (int, float)) and not isinstance(stored, bool):
        return float(stored)
    size = model_size(student)
    return math.nan if size is None else size
