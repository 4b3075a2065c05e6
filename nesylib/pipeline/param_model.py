"""Every notebook's parameters, declared once here and composed from shared sections.

A parameter has a name, its types, a default, a help line and, for a choice, its allowed values. The
sections that several notebooks share (the run, the data selection, the training recipe, an LLM endpoint
for the teacher, the tutor or the knowledge writer) are written once, with the same field names for every
role. From this model:

- ``scripts/nbtool.py`` writes each notebook's papermill ``parameters`` cell (``name: type = default  #
  help``, so ``papermill --help-notebook`` shows types and defaults); ``nbtool --check`` fails when a cell
  differs from the model;
- ``start(name, namespace)`` (the notebooks' first code cell) picks the notebook's values, checks each
  one and opens the run (``runs.start``);
- ``check_preset`` checks a whole preset before the runner starts anything: a key no notebook declares, a
  misspelt key in a notebook's section, a value of the wrong type (``train`` dicts against TrainConfig)
  stop the run naming the file, the key and what was expected;
- ``nesylib params`` and ``nesylib run --set`` describe and check parameters through the same rules.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from nesylib.methods.compress import COMPRESSORS
from nesylib.methods.curriculum import KINDS as SCHEDULE_KINDS
from nesylib.errors import ConfigError
from nesylib.methods.nesycd import TUTOR_BACKENDS  # 02's tutor and 04's knowledge writer
from nesylib.teacher.factory import BACKENDS as TEACHER_BACKENDS  # 01's teacher

NONE = type(None)
TRAIN_DICTS = ("train", "train_overrides")          # dicts of nesylib.training.config.TrainConfig fields


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its types (``NONE`` for None), default, help and, for a choice, its values."""
    name: str
    types: tuple
    default: object
    help: str = ""
    choices: tuple | None = None
    above: str = ""  # a comment line written above the parameter in the cell

    def annotation(self) -> str:
        """The type as papermill's parser reads it: ``int``, ``Optional[int]``, ``Union[str, dict]``."""
        names = [t.__name__ for t in self.types if t is not NONE]
        if NONE in self.types and len(names) == 1:
            return f"Optional[{names[0]}]"
        if len(self.types) == 1:
            return names[0]
        return f"Union[{', '.join(names + (['None'] if NONE in self.types else []))}]"

    def type_text(self) -> str:
        if self.types == (object,):
            return "any"
        if self.choices:
            return f"one of {list(self.choices)}"
        return " | ".join("None" if t is NONE else t.__name__ for t in self.types)

    def problem(self, value) -> str | None:
        """Why ``value`` cannot be this parameter's value, or None."""
        if self.choices is not None:
            return None if value in self.choices and type(value) is type(self.choices[0]) else \
                f"expects one of {list(self.choices)}, got {value!r}"
        if not allowed(value, self.types):
            return f"expects {self.type_text()}, got {value!r}"
        if self.name in TRAIN_DICTS:
            return train_fields_problem(value)
        return None

    def line(self) -> str:
        return f"{self.name}: {self.annotation()} = {literal(self.default)}"


def allowed(value, types: tuple) -> bool:
    """Whether ``value`` is of one of ``types``: an int is a float too, a bool only a bool."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def literal(value) -> str:
    """``value`` as Python source, strings in double quotes (as the notebooks write them)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def train_fields_problem(value: dict) -> str | None:
    """Why a ``train`` dict is not a set of TrainConfig fields of their types (and TrainConfig's own checks)."""
    from nesylib.training.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for k, v in value.items():
        if k not in fields:
            return f"has {k!r}, which is not a TrainConfig field; allowed: {sorted(fields)}"
        f = fields[k]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if default is None or (isinstance(default, str) and not isinstance(v, str)):
            continue  # str | list, bool | str fields: TrainConfig.validate decides
        if not allowed(v, (float,) if isinstance(default, float) else (type(default),)):
            return f"has TrainConfig.{k} = {v!r}, which expects {type(default).__name__} (default {default!r})"
    try:
        TrainConfig(**value).validate()
    except ConfigError as e:
        return f"is not a valid TrainConfig: {e}"
    return None


# ---- the shared sections -------------------------------------------------------------------------

def run_section(data_dir: bool = True, data_help: str = "") -> list[Param]:
    out = [Param("preset", (str,), "adhoc"), Param("run_root", (str, NONE), None)]
    if data_dir:
        out.append(Param("data_dir", (str, NONE), None, data_help))
    return out + [Param("seed", (int,), 42)]


STUDENT = Param("student", (str,), "smollm2-135m")
SELECTION = [
    Param("bbh_tasks", (list, NONE), None),
    Param("train_per_task", (int, NONE), None),
    Param("gsm8k_train", (int, NONE), None),
    Param("eval_per_task", (dict,), {"bbh": None}),
]
_MAX_NEW_HELP = "None: per-task caps (calibration.md); 1024 is the authors' protocol"


def training_section(train_help: str, max_new_help: str = _MAX_NEW_HELP) -> list[Param]:
    return [Param("train", (dict,), {}, train_help),
            Param("eval_batch_size", (int,), 16),
            Param("max_new_tokens", (int, NONE), None, max_new_help)]


def endpoint_section(role: str, notebook: str, backends: tuple, backend_default: str, what: str,
                     model: Param | None = None, store_file: str = "") -> list[Param]:
    """An LLM endpoint (the teacher, the tutor, the knowledge writer): the same fields for every role,
    ``<role>_backend``, ``<role>_model``, ``<role>_base_url`` then the shared call settings."""
    return [
        Param(f"{role}_backend", (str,), backend_default, " | ".join(backends), choices=backends),
        model or Param(f"{role}_model", (str, NONE), None, "openai/local: the model name"),
        Param(f"{role}_base_url", (str, NONE), None, "openai: e.g. http://localhost:8000/v1 for a vLLM server"),
        Param("api_key_env", (str,), "OPENAI_API_KEY", "the environment variable that holds the API key"),
        Param("store_path", (str, NONE), None, f"None: <run_root>/stores/{notebook}/{store_file or role + '_store.jsonl'}"),
        Param("concurrency", (int,), 8, "calls in flight at once"),
        Param("budget_usd", (float, NONE), None, f"stop new paid {what} calls beyond this spend (needs price_in_out)"),
        Param("price_in_out", (list, NONE), None,
              f"[USD per 1M input tokens, USD per 1M output tokens] of {role}_model"),
    ]


def _min_share(what: str) -> Param:
    return Param("min_knowledge_share", (float,), 0.5, f"stop when {what}")


RETRIEVERS = ("bm25", "dense")
_RETRIEVER = Param("retriever", (str,), "bm25", "bm25 | dense", choices=RETRIEVERS)
_GATE_THRESHOLD = Param("gate_threshold", (float,), 68.0)
_KARD_K = Param("kard_k", (int,), 3, "KARD: passages per question")

# ---- each notebook's parameters, in cell order -----------------------------------------------------

NOTEBOOKS: dict[str, list[Param]] = {
    "00_data": run_section(data_help="None: $NESYLIB_DATA_DIR, else download the pinned files into the cache") + [
        Param("datasets", (list,), ["bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus"],
              "and any configured dataset's name"),
    ],
    "01_teacher_distillation": run_section() + [
        Param("bbh_tasks", (list, NONE), None, "None: all 27 tasks"),
        Param("train_per_task", (int, NONE), None, "None: every BBH train item"),
        Param("gsm8k_train", (int, NONE), None, "None: all 7473 items; 0 excludes GSM8K"),
        Param("train_datasets", (list,), ["bbh", "gsm8k"],
              "sets taught: bbh and gsm8k as above, others at most train_per_task per task"),
        *endpoint_section("teacher", "01_teacher_distillation", TEACHER_BACKENDS, "replay", "teacher",
                          model=Param("teacher_model", (str,), "auto",
                                      "replay: auto | codex | gsm8k; openai/local: the model name")),
        Param("max_retries", (int,), 6, "extra attempts for any failed call (429/5xx, timeout, malformed or empty reply)"),
        Param("max_rounds", (int,), 4,
              above="CasCoD's sampling schedule: 2 samples at T 0.2, then one more sample and T + 0.1 per round"),
    ],
    "02_kb_construction": run_section() + [STUDENT, *SELECTION] + training_section(
        "nesylib.training.config.TrainConfig fields for S_P (the Std-CoT recipe of the preset)") + [
        *endpoint_section("tutor", "02_kb_construction", TUTOR_BACKENDS, "derived", "tutor"),
        Param("demo_items_per_task", (int, NONE), None,
              "S_P answers at most this many training questions per task; None: all"),
        Param("retriever", (str,), "bm25", "bm25 | dense, for the retrieval example below", choices=RETRIEVERS),
        Param("gate", (bool,), False, "True: S_P's confidence margins on the demonstrations, to judge 03's gate"),
        _GATE_THRESHOLD,
        _min_share("the tutor gives a usable analysis for fewer of S_P's errors"),
    ],
    "03_nesycd_training": run_section() + [STUDENT, *SELECTION] + training_section(
        "nesylib.training.config.TrainConfig fields (the recipe every student shares)") + [
        Param("k_retrieve", (int,), 3, "KB entries retrieved per question"),
        Param("k_insert", (int,), 1, "retrieved entries inserted into the prompt"),
        _RETRIEVER,
        Param("gate", (bool,), False, "the confidence gate of method.md §3 step 4, fixed as D13 says"),
        _GATE_THRESHOLD,
        Param("own_summary", (bool,), True, "False: training summaries by leave-one-out retrieval (D14 option)"),
        Param("compare_sp", (bool,), True, "evaluate S_P on the same slices (stored beside S_P, so 05 can reuse it)"),
        Param("ablation_no_knowledge", (bool,), True, "evaluate S_E once more with P-STD prompts"),
    ],
    "04_skintern_curriculum": run_section() + [STUDENT, *SELECTION] + training_section(
        "nesylib.training.config.TrainConfig fields (the Std-CoT recipe of the preset)") + [
        *endpoint_section("knowledge", "04_skintern_curriculum", TUTOR_BACKENDS, "derived", "knowledge"),
        Param("stages_T", (int,), 6, "stages t in 0..T; T 6 with 6 demos gives the code's rule n_t 6-t (D15)"),
        Param("schedule_kind", (str,), "linear", " | ".join(SCHEDULE_KINDS), choices=SCHEDULE_KINDS),
        Param("max_demos", (int,), 6, "demonstrations at stage 0"),
        Param("demo_mode", (str,), "random", "random (seeded per item and stage, D16) | similar (MiniLM cosine)",
              choices=("random", "similar")),
        Param("compressor", (str,), "auto", " | ".join(COMPRESSORS), choices=COMPRESSORS),
        Param("compressor_model", (str, NONE), None, "self-info scorer; None: the student"),
        Param("epochs_budget", (float, NONE), None, "None: the Std-CoT budget of train (its max_steps, else its epochs)"),
        Param("stage_cutoff_len", (int, NONE), None,
              "None: train's cutoff_len; smaller caps the stage prompts (a cost knob)"),
        _min_share("the writer gives usable knowledge for fewer of the training items"),
    ],
    "05_baselines": run_section() + [STUDENT, *SELECTION] + training_section(
        "nesylib.training.config.TrainConfig fields, e.g. epochs, lr, per_device_batch") + [
        Param("methods", (list,), ["base", "ft", "std", "mt-cot", "mt-re", "kard", "cascod"]),
        _KARD_K,
    ],
    "06_ablations": run_section(data_dir=False) + [
        STUDENT,
        Param("eval_batch_size", (int,), 16),
        Param("k_values", (list,), [0, 1, 2, 3], "NesyCD: KB entries inserted per question; 0 is P-STD"),
        Param("train_fractions", (list,), [0.25, 0.5, 1.0], "Std-CoT: share of the training questions per task"),
        Param("schedules", (list,), [["linear", 6], ["exponential", 6], ["step", 6], ["linear", 3]],
              "SKIntern: [kind, T]"),
        Param("content_variants", (list,), ["knowledge_only", "examples_only"], "SKIntern at 08's schedule"),
    ],
    "07_flops_and_figures": run_section(data_dir=False) + [
        Param("results_dir", (str, NONE), None, "None: this preset's run folder; or a folder such as ../results/cpu"),
        Param("student", (str,), "smollm2-135m", "recorded only: the students come from the results"),
    ],
    "08_synthetic_benchmark": run_section(data_dir=False) + [STUDENT] + training_section(
        "nesylib.training.config.TrainConfig fields, shared by every notebook of a preset",
        "None: per-task caps from the teacher rationales (1.3 x longest)") + [
        Param("train_overrides", (dict,), {}, "fields replaced for this notebook only (e.g. a shorter budget)"),
        Param("synth_config", (str, dict), "default", "default | smoke | a dict of SynthConfig overrides"),
        Param("eval_per_task_synth", (int, dict, NONE), None,
              'items per (split, task), a seeded subset: n, {"test": n, "ood": m}, or None (all 192 + 160)'),
        Param("methods", (list,), ["std", "oracle", "kard", "nesycd", "skintern", "ft"]),
        Param("stages_T", (int,), 6, "SKIntern stages t in 0..T (D15)"),
        Param("max_demos", (int,), 6, "SKIntern demos at stage 0 (n_t decays linearly)"),
        Param("compressor", (str,), "self-info", " | ".join(COMPRESSORS), choices=COMPRESSORS),
        Param("k_retrieve", (int,), 3, "NesyCD: KB hits retrieved per question"),
        Param("k_insert", (int,), 1, "NesyCD: hits inserted into the prompt"),
        Param("kb_index_text", (str,), "question", "NesyCD: entries are found by question (D13) | knowledge | both",
              choices=("question", "knowledge", "both")),
        Param("se_train_knowledge", (str,), "own",
              "NesyCD S_E training knowledge: own analysis (D14) | retrieved (as at test time)",
              choices=("own", "retrieved")),
        Param("se_keep_own", (float,), 0.0, "with retrieved: share of error items whose own entry may be retrieved"),
        Param("se_step_budget", (str,), "own", "NesyCD S_E steps: own (an epoch of its 3-format set) | std (Std-CoT's)",
              choices=("own", "std")),
        _KARD_K,
        Param("kard_keep_own", (float,), 0.0, "KARD: share of training items whose own passage may be retrieved (D19: 0)"),
        Param("demo_items_per_task", (int, NONE), None,
              "NesyCD: S_P answers at most this many train questions per task; None: all"),
        _min_share("the teacher gives usable knowledge (or KB analyses) for fewer items"),
    ],
}


def declared(notebook: str) -> dict[str, Param]:
    """The notebook's parameters by name, in cell order; an unknown notebook is an error listing the known."""
    if notebook not in NOTEBOOKS:
        raise ConfigError(f"no parameter model for notebook {notebook!r}; known: {', '.join(NOTEBOOKS)}")
    return {p.name: p for p in NOTEBOOKS[notebook]}


def parameters_cell(notebook: str) -> str:
    """The papermill parameters cell of ``notebook``, as ``scripts/nbtool.py`` writes it."""
    params = NOTEBOOKS[notebook]
    typing = sorted({"Optional" if "Optional[" in p.annotation() else "Union"
                     for p in params if "[" in p.annotation()})
    lines = ["# parameters"] + ([f"from typing import {', '.join(typing)}"] if typing else [])
    width = max((len(p.line()) for p in params if p.help and len(p.line()) <= 44), default=0)
    for p in params:
        if p.above:
            lines.append(f"# {p.above}")
        text = p.line()
        lines.append(f"{text.ljust(width)}  # {p.help}" if p.help else text)
    return "\n".join(lines)


def check_values(notebook: str, values: dict, where: str) -> None:
    """Every declared parameter present in ``values`` and of its type; ``where`` starts each error."""
    for name, p in declared(notebook).items():
        if name not in values:
            raise ConfigError(f"{where}: parameter {name!r} is missing")
        problem = p.problem(values[name])
        if problem:
            raise ConfigError(f"{where}: parameter {name!r} {problem}")


def start(notebook: str, namespace: dict, run_root: str | Path | None = None):
    """The notebook's run (``runs.start``) with the values of its declared parameters from ``namespace``
    (the notebook's ``globals()``), each checked against the model first."""
    from nesylib.pipeline import runs

    values = {name: namespace[name] for name in declared(notebook) if name in namespace}
    check_values(notebook, values, notebook)
    return runs.start(notebook, values, run_root=run_root)


def check_preset(preset: dict, source: str) -> None:
    """Check a whole preset before anything runs (``source`` names its file in errors): every ``common`` key
    is declared by some notebook and fits each notebook that declares it; every notebook section names a
    known notebook and only its declared parameters, each of its type."""
    common = preset.get("common") or {}
    for key, value in common.items():
        users = [nb for nb in NOTEBOOKS if key in declared(nb)]
        if not users:
            raise ConfigError(f"{source}: common.{key}: no notebook declares a parameter {key!r} "
                              f"(`python -m nesylib params NOTEBOOK` lists each notebook's)")
        for nb in users:
            section = preset.get("notebooks", {}).get(nb) or {}
            if key in section:
                continue  # the notebook's own value replaces the common one
            problem = declared(nb)[key].problem(value)
            if problem:
                raise ConfigError(f"{source}: common.{key} (a parameter of {nb}) {problem}")
    for nb, section in (preset.get("notebooks") or {}).items():
        if nb not in NOTEBOOKS:
            raise ConfigError(f"{source}: notebooks.{nb}: no such notebook; known: {', '.join(NOTEBOOKS)}")
        params = declared(nb)
        for key, value in (section or {}).items():
            if key not in params:
                raise ConfigError(f"{source}: notebooks.{nb}.{key}: {nb} has no parameter {key!r}; "
                                  f"it declares {', '.join(params)}")
            problem = params[key].problem(value)
            if problem:
                raise ConfigError(f"{source}: notebooks.{nb}.{key} {problem}")
