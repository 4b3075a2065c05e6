"""Run directories, params/env capture and results files: what a notebook does inside its run folder
(``start``, ``RunContext``); the runner that executes the notebooks is ``nesylib.pipeline.runner``.

Layout of one preset run (``results/runs/<preset>/``)::

    00_data.ipynb                 executed copy of the notebook
    00_data/params.json           the parameters it ran with
    00_data/env.json              package versions, device, git commit, backend
    00_data/results.json          what the notebook reports
    00_data/done.json             cache key of a completed run, its parts, hashes of what it read
    03_nesycd_training/reads.json the earlier folders a notebook read (RunContext.upstream)
    ...                           the notebook's own artifacts
    00_data.failed/               the last failed attempt, when there is one (see below)
    students/                     trained students and their evaluations, shared by all notebooks
    stores/01_teacher_distillation/teacher_store.jsonl   paid-call stores, outside every run folder

Notebooks pass artifacts only through these folders: nothing travels by hidden global state.

``runner.run_preset`` runs each notebook into a fresh staging folder (a unique hidden sibling of its
folder, named by ``nesylib.files.tmp_path``) and swaps it in, with its executed notebook, only when
the notebook succeeded: a folder then always describes one complete run. A failed attempt leaves
the previous folder, its metadata and its executed notebook untouched; what it wrote (params.json,
env.json, partial artifacts), its executed notebook with the traceback and an ``error.txt`` go to
``<notebook>.failed/``, replaced by the next failure and removed by the next success. Call stores
(``RunContext.store``) live under ``<run_root>/stores/<notebook>/``, outside the swap, so the calls
a failed or killed run paid for are found by the next run.
"""
from __future__ import annotations

import json
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from nesylib.files import (atomic_file, file_hash, read_json, remove_stale_tmps, replace_dir,  # noqa: F401
                           stable_hash, tmp_path, write_json, write_jsonl)  # (notebooks call runs.write_json & co.)
from nesylib.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]  # nesylib/pipeline/runs.py -> the repository
PRESETS_DIR = REPO_ROOT / "presets"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def is_project_folder(notebooks_dir: str | Path) -> bool:
    """Whether ``notebooks_dir`` holds the project's notebooks, whose parameters ``param_model`` declares
    (a folder of one's own is read through papermill instead)."""
    return Path(notebooks_dir).resolve() == NOTEBOOKS_DIR.resolve()
RUNS_DIR = REPO_ROOT / "results" / "runs"
TRACKED_PACKAGES = ("torch", "transformers", "peft", "datasets", "accelerate", "bm25s", "faiss-cpu",
                    "papermill", "openai", "unsloth", "numpy", "pandas")
_SECRET_NAME = re.compile(r"(^|_)(api_?key|key|token|secret|password|auth)$", re.IGNORECASE)


# ------------------------------------------------------------------------------------ files
# ---------------------------------------------------------------------------------- presets
def load_preset(name_or_path: str) -> dict:
    """A preset YAML: {name, common: {...}, notebooks: {stem: {...}}, datasets: {name: entry}}.

    ``datasets`` (optional) defines datasets of one's own (nesylib.data.custom_data): each entry, or the YAML
    file it names (relative to the preset file), is checked here and stored with absolute paths."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"preset {name_or_path!r} not found at {path}; known presets: {known}")
    try:
        preset = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    for key in ("name", "common"):
        if key not in preset:
            raise ConfigError(f"{path}: preset lacks top-level key {key!r}")
    preset.setdefault("notebooks", {})
    preset["_file"] = str(path)  # named in the errors of param_model.check_preset
    if preset.get("datasets") is not None:
        from nesylib.data import benchmarks, custom_data

        preset["datasets"] = custom_data.resolve(preset["datasets"], path.parent, str(path))
        with custom_data.exported(preset["datasets"]):
            benchmarks.custom_datasets()  # a built-in set's or task's name is refused now, not in a notebook
    for k in preset["common"]:
        if _SECRET_NAME.search(k):
            raise ConfigError(f"{path}: parameter {k!r} looks like a secret; pass secrets through environment "
                              "variables and name the variable in a '*_env' parameter instead")
    return preset


def notebook_params(preset: dict, stem: str) -> dict:
    params = dict(preset["common"])
    params.update(preset["notebooks"].get(stem) or {})
    params["preset"] = preset["name"]
    return params


# ------------------------------------------------------------------------------ environment
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def capture_env(extra: dict | None = None) -> dict:
    versions = {}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
           "git_commit": git_commit(), "cpu_count": os.cpu_count(),
           "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        env["device"] = "cpu"
    from nesylib.data import custom_data

    defined = custom_data.registered()
    if defined:  # datasets of one's own: each entry and its data file's hash
        env["custom_datasets"] = custom_data.fingerprint(defined)
    env.update(extra or {})
    return env


def set_seed(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


# ------------------------------------------------------------------------- notebook context
STAGE_NAME_ENV, STAGE_DIR_ENV = "NESYLIB_STAGE_NAME", "NESYLIB_STAGE_DIR"
READS_FILE = "reads.json"  # the folders a notebook read (RunContext.record_read); hashed into done.json
STORES_DIR = "stores"


@dataclass
class RunContext:
    """What a notebook gets from ``start``: its folder, its params, and helpers to save results.

    ``dir`` is where the notebook writes; under ``run_preset`` it is a staging folder that becomes
    ``final_dir`` (``<run_root>/<name>``) once the notebook has succeeded. Both sit in the run root,
    so ``dir.parent`` is the run root either way.
    """
    name: str
    dir: Path
    params: dict
    final_dir: Path | None = None

    def __post_init__(self):
        if self.final_dir is None:
            self.final_dir = self.dir

    def path(self, *parts) -> Path:
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def store(self, filename: str) -> Path:
        """Where this notebook keeps a persistent call store: ``<run_root>/stores/<name>/<filename>``.

        It lives outside the run folder, so neither the staging swap nor a failed or killed run
        loses a paid call. A store left in the run folder by an older version (``<run_root>/<name>/
        <filename>``) is copied there the first time (the old folder is not changed).
        """
        p = self.dir.parent / STORES_DIR / self.name / filename
        legacy = self.final_dir / filename
        if not p.exists() and legacy.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_path(p)
            try:
                shutil.copyfile(legacy, tmp)
                os.replace(tmp, p)
            finally:
                tmp.unlink(missing_ok=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def upstream(self, stem: str) -> Path:
        """The folder of an earlier notebook of the same preset run; it must have completed. It is recorded
        as read (``record_read``)."""
        d = self.dir.parent / stem
        if not (d / "results.json").is_file():
            raise ConfigError(f"{self.name} needs the outputs of {stem}, but {d}/results.json does not exist; "
                              f"run that notebook first (python -m nesylib run --preset {self.params.get('preset')} "
                              f"--only {stem})")
        self.record_read(d)
        return d

    def record_read(self, folder: str | Path) -> None:
        """Note in ``reads.json`` that this notebook read ``folder``: the runner keeps the content hashes of
        its files in done.json, so editing one of them (e.g. a kb.jsonl by hand) re-runs this notebook,
        and the run log names the file."""
        root, folder = self.dir.parent.resolve(), Path(folder).resolve()
        name = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(folder)
        reads_file = self.dir / READS_FILE
        reads = read_json(reads_file) if reads_file.is_file() else []
        write_json(reads_file, sorted(set(reads) | {name}))

    def save_results(self, results: dict) -> Path:
        """Write results.json; paths into the staging folder are written as the final folder's."""
        return write_json(self.dir / "results.json", self.final_paths(results))

    def final_paths(self, obj):
        """``obj`` with every string path under ``dir`` rewritten to the same path under ``final_dir``."""
        if self.final_dir == self.dir:
            return obj
        stage, final = str(self.dir), str(self.final_dir)
        if isinstance(obj, dict):
            return {k: self.final_paths(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.final_paths(v) for v in obj]
        if isinstance(obj, Path):
            obj = str(obj)
        if isinstance(obj, str) and (obj == stage or obj.startswith(stage + os.sep)):
            return final + obj[len(stage):]
        return obj


def start(name: str, params: dict, run_root: str | Path | None = None) -> RunContext:
    """Make the run folder, record params and environment, seed everything. The project's notebooks call
    it through ``param_model.start``, which checks their values against the parameter model first.

    A notebook run by hand (papermill, Jupyter) whose ``preset`` names a preset file must have been
    given that preset's values: ``-p preset smoke`` alone would run the defaults under the preset's
    name, so it is refused (``check_preset_values``). Under ``run_preset`` the runner passed them.
    """
    root = Path(run_root or params.get("run_root") or RUNS_DIR / str(params.get("preset", "adhoc")))
    stage = _staging_dir(name, root)
    if stage is None:
        check_preset_values(name, params)
    final_dir = root / name
    run_dir = stage or final_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in params.items() if not k.startswith("_")}
    write_json(run_dir / "params.json", clean)
    write_json(run_dir / "env.json", capture_env())
    set_seed(int(params.get("seed", 42)))
    return RunContext(name=name, dir=run_dir, params=clean, final_dir=final_dir)


def _comparable(value):
    return json.loads(json.dumps(value, default=str))  # tuples as lists, as a preset's YAML gives them


def check_preset_values(name: str, params: dict) -> None:
    """Refuse a hand-run notebook that names a preset in ``preset`` but got other values than it gives.

    Only names of files in ``presets/`` are checked; any other ``preset`` (the default ``"adhoc"``,
    a label of one's own) is just the run folder's name. Values the preset does not set are free.
    """
    pname = params.get("preset")
    if not (isinstance(pname, str) and re.fullmatch(r"[\w.-]+", pname) and (PRESETS_DIR / f"{pname}.yaml").is_file()):
        return
    wanted = notebook_params(load_preset(pname), name)
    differ = {k: wanted[k] for k in params if k not in ("preset", "run_root") and k in wanted
              and _comparable(params[k]) != _comparable(wanted[k])}
    if not differ:
        return
    shown = "; ".join(f"{k} = {params[k]!r} here, the preset gives {v!r}" for k, v in list(differ.items())[:3])
    more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
    values = shlex.quote(yaml.safe_dump(differ, default_flow_style=True, sort_keys=False, width=float("inf")).strip())
    raise ConfigError(
        f"{name}: preset {pname!r} is named, but the notebook did not get its values: {shown}{more}. "
        f"papermill and Jupyter pass only the values given with -p/-y, and 'preset' alone is just a name. "
        f"Run it with `python -m nesylib run --preset {pname} --only {name}`, or pass the preset's values, e.g. "
        f"`papermill notebooks/{name}.ipynb out.ipynb -p preset {pname} -y {values}` "
        f"(`python -m nesylib params {name} --preset {pname}` lists them all).")


def _staging_dir(name: str, root: Path) -> Path | None:
    """The staging folder ``run_preset`` made for notebook ``name`` (passed to the kernel through
    the environment), or None when the notebook runs on its own (papermill, Jupyter)."""
    stage = os.environ.get(STAGE_DIR_ENV)
    if not stage or os.environ.get(STAGE_NAME_ENV) != name:
        return None
    stage = Path(stage)
    if stage.parent.resolve() != root.resolve():
        raise ConfigError(f"{name}: the runner staged this notebook in {stage}, but its run_root is {root}; "
                          f"run_root must be the folder the runner passed ({stage.parent})")
    return stage
