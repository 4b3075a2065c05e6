"""The notebook runner behind ``nesylib run`` and ``make reproduce``: which notebooks run in which order,
each one's cache key, the run-root locks, executing a notebook into a staging folder and swapping it in
on success (or keeping its failure beside the last good run), the heartbeat, and exporting a run.

The folders it writes and what a notebook does inside them are described in ``nesylib.pipeline.runs``.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path


from nesylib.files import (file_hash, read_json, remove_stale_tmps, replace_dir,
                           stable_hash, tmp_path, write_json)
from nesylib.pipeline import param_model
from nesylib.errors import ConfigError, NesylibError

from nesylib.pipeline.runs import (NOTEBOOKS_DIR, READS_FILE, REPO_ROOT, RUNS_DIR, STAGE_DIR_ENV, STAGE_NAME_ENV,
                                   is_project_folder, load_preset, notebook_params)

FAILED_SUFFIX = ".failed"
HEARTBEAT_S = 60.0  # how often `nesylib run` says which notebook is running, in seconds


# The numbers follow the papers' sections, not the data flow. A notebook listed here runs after the
# ones it names ("*": after all others), so its cache key follows theirs and it can read their outputs:
# the ablations vary notebook 08's configuration one factor at a time and reuse its students and KB;
# the figures notebook redraws every other notebook's results.
RUN_AFTER = {"06_ablations": ("08_synthetic_benchmark",), "07_flops_and_figures": ("*",)}


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks in run order: by name, then each ``RUN_AFTER`` entry moved behind what it needs."""
    nbs = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    order = [p for p in nbs if p.stem not in RUN_AFTER]
    last = []
    for p in (p for p in nbs if p.stem in RUN_AFTER):
        needs = RUN_AFTER[p.stem]
        if "*" in needs:
            last.append(p)
            continue
        at = [i for i, q in enumerate(order) if q.stem in needs]
        order.insert(max(at) + 1 if at else len(order), p)
    return order + last


def _key_parts(nb: Path, params: dict, upstream_keys: list[str]) -> dict:
    """What a notebook's cache key is made of: its source, its parameters, the package's code and the keys
    of the notebooks before it. done.json keeps them, so a rerun can say which one changed."""
    pkg = sorted(p for p in (REPO_ROOT / "nesylib").rglob("*.py"))
    return {"notebook": file_hash(nb), "parameters": stable_hash(params),
            "code": stable_hash([file_hash(p) for p in pkg]), "upstream": stable_hash(upstream_keys)}


_PART_NAMES = {"notebook": "the notebook", "parameters": "its parameters", "code": "nesylib's code",
               "upstream": "an earlier notebook's run"}


def input_hashes(root: Path, folders: list[str]) -> dict[str, str]:
    """The content hash of every file in the folders a notebook read (``reads.json``: names relative to the
    run root, or absolute), done.json files aside: a hand-edited kb.jsonl changes them."""
    out = {}
    for name in folders:
        folder = root / name
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file() and p.name != "done.json":
                rel = p.relative_to(root) if p.is_relative_to(root) else p
                out[rel.as_posix()] = file_hash(p)
    return out


def _stale_because(done: dict, parts: dict, root: Path) -> str | None:
    """Why a completed run no longer answers for this one (None: it does)."""
    old = done.get("parts")
    if not old:
        return "its last run was made by an older nesylib"
    changed = [_PART_NAMES[k] for k in _PART_NAMES if old.get(k) != parts[k]]
    if changed:
        return ", ".join(changed) + " changed"
    stored = done.get("inputs") or {}
    now = input_hashes(root, done.get("reads") or [])
    edited = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    if edited:
        more = f" and {len(edited) - 3} more" if len(edited) > 3 else ""
        return f"what it read changed since it ran: {', '.join(edited[:3])}{more}"
    return None


def _declared_params(nb: Path, preset: dict, stem: str) -> dict:
    """The preset's values for the parameters the notebook declares; a typo in its own section is an error."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(nb)))
    own = preset["notebooks"].get(stem) or {}
    unknown = sorted(set(own) - declared)
    if unknown:
        raise ConfigError(f"preset {preset['name']!r}, notebook {stem}: unknown parameter(s) {unknown}; "
                          f"the notebook declares {sorted(declared)}")
    return {k: v for k, v in notebook_params(preset, stem).items() if k in declared}


LOCK_FILE = ".nesylib-run.lock"


class RunRootLocked(NesylibError):
    """Another process is running notebooks into the same run root (or the same notebook)."""


def _lock_holder(path: Path) -> str | None:
    """'pid N on HOST' from a lock file's content, or None when it names nobody."""
    try:
        words = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return (f"pid {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")) if words else None


def _held_notebook_locks(root: Path) -> list[str]:
    """'pid N on HOST (notebook)' for every notebook lock in ``root`` that some process holds now."""
    out = []
    for path in sorted(root.glob(".*.lock")):
        if path.name == LOCK_FILE:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            out.append(f"{_lock_holder(path) or 'pid unknown'} ({path.name[1:-5]})")
        finally:
            os.close(fd)
    return out


@contextmanager
def _flock(path: Path, shared: bool, root: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _lock_holder(path)
            if who is None and path.name == LOCK_FILE:  # held shared, by --only runs
                who = ", ".join(_held_notebook_locks(root)) or "an --only run"
            raise RunRootLocked(f"run root {root} is in use by another nesylib run ({who or 'pid unknown'}), "
                                f"which holds the lock file {path}. Wait for it to finish, or give this run "
                                f"another --run-root.") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        try:
            yield path
        finally:
            if not shared:
                os.ftruncate(fd, 0)  # the holder's pid goes with the lock
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def lock_run_root(root: str | Path, only: list[str] | None = None):
    """Lock a run root for one ``run_preset`` call (``fcntl.flock`` on ``<root>/.nesylib-run.lock``).

    A full run (``only`` empty) holds it exclusively. An ``--only`` run holds it shared plus an
    exclusive lock per notebook it names (``<root>/.<notebook>.lock``), so ``--only`` runs of different
    notebooks can share a root (one per GPU, docs/paper-scale.md) while two runs of the same notebook,
    or a full run next to any other run, cannot. A refused run fails at once with ``RunRootLocked``
    naming the lock file and the holder's pid. The kernel drops the locks when the holder exits, even
    when it is killed, so a stale file never blocks a later run. Yields the run root's lock file.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(_flock(root / LOCK_FILE, bool(only), root))
        for stem in sorted(set(only or ())):
            safe = re.sub(r"[^\w.-]", "_", stem)
            stack.enter_context(_flock(root / f".{safe}.lock", False, root))
        yield root / LOCK_FILE


def run_preset(preset_name: str | dict, only: list[str] | None = None, force: bool = False,
               run_root: str | Path | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
               kernel: str | None = None, log=print, heartbeat_s: float | None = HEARTBEAT_S) -> list[dict]:
    """Execute the preset's notebooks in order through papermill; skip those whose inputs are unchanged.

    While a notebook runs, ``log`` gets a line every ``heartbeat_s`` seconds (None: none) with its
    elapsed time and, when an earlier run of it finished, that run's duration.

    ``preset_name``: a preset's name or file, or a preset already loaded (``params.apply_overrides``
    gives one with ``--set`` values, which are then ordinary parameter values: in params.json and
    in the cache key). The run root is locked for the whole run (``lock_run_root``): a second full
    run on it, or a second run of the same notebook, fails at once with ``RunRootLocked``.
    """
    from nesylib.data import custom_data

    preset = preset_name if isinstance(preset_name, dict) else load_preset(preset_name)
    # absolute: the notebooks run with notebooks_dir as their working directory, where a relative
    # run_root would point somewhere else than the done.json files written here
    root = Path(run_root).resolve() if run_root else RUNS_DIR / preset["name"]
    # datasets of one's own reach the notebook kernels through the environment (those of
    # $NESYLIB_DATASETS too), and their entries and data files are part of every cache key
    datasets = {**custom_data.registered(),
                **custom_data.resolve(preset.get("datasets"), Path.cwd(), f"preset {preset['name']!r}")}
    with lock_run_root(root, only), custom_data.exported(datasets):
        return _run_notebooks(preset, root, only, force, notebooks_dir, kernel, log,
                              custom_data.fingerprint(datasets) if datasets else None, heartbeat_s)


def _run_notebooks(preset: dict, root: Path, only, force: bool, notebooks_dir: Path, kernel, log,
                   datasets: dict | None = None, heartbeat_s: float | None = None) -> list[dict]:
    nbs = list_notebooks(notebooks_dir)
    if is_project_folder(notebooks_dir):  # the project's notebooks: the whole preset against the model
        param_model.check_preset(preset, preset.get("_file") or f"preset {preset['name']!r}")
    skip = set(preset.get("skip", []) or [])
    if only:
        unknown = sorted(set(only) - {p.stem for p in nbs})
        if unknown:
            raise ConfigError(f"--only {unknown}: no such notebook; known: {[p.stem for p in nbs]}")
    summary, keys = [], []
    for i, nb in enumerate(nbs, 1):
        stem = nb.stem
        if stem in skip:
            continue
        params = _declared_params(nb, preset, stem)
        params["run_root"] = str(root)
        # Every notebook's key counts, run or not, so that `--only` runs (e.g. independent notebooks
        # on separate GPUs) and a later full run agree on what is already done.
        parts = _key_parts(nb, {**params, "_datasets": datasets} if datasets else params, keys)
        key = stable_hash(parts)
        keys.append(key)
        if only and stem not in only:
            continue
        done = read_json(root / stem / "done.json") if (root / stem / "done.json").is_file() else None
        why = _stale_because(done, parts, root) if done else None
        if not force and done and not why:
            log(f"[{i}/{len(nbs)}] {stem}: unchanged, cached ({done.get('seconds', 0):.0f} s originally)")
            summary.append({"notebook": stem, "status": "cached"})
            continue
        last = _last_seconds(root / stem)
        log(f"[{i}/{len(nbs)}] {stem}: running ..." + (f" (last time {_duration(last)})" if last else "")
            + (f" because {why}" if why and not force else ""))
        secs = run_notebook(nb, root, params, key, notebooks_dir, kernel, log=log, heartbeat_s=heartbeat_s,
                            parts=parts)
        log(f"[{i}/{len(nbs)}] {stem}: done in {secs:.0f} s")
        summary.append({"notebook": stem, "status": "ran", "seconds": secs})
    return summary


def _duration(secs: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if round(secs) < 60:
        return f"{round(secs)} s"
    h, m = divmod(round(secs / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def _last_seconds(final: Path) -> float | None:
    """How long the run that left ``final`` (its done.json) took, or None when there is none."""
    try:
        secs = read_json(final / "done.json").get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(secs) if isinstance(secs, (int, float)) and secs > 0 else None


@contextmanager
def _heartbeat(stem: str, log, every: float | None, last: float | None):
    """While the body runs, ``log`` "STEM: running, 12 min (last time 41 min)" every ``every`` seconds,
    from a daemon thread (papermill blocks this one until the notebook ends)."""
    if not every or every <= 0:
        yield
        return
    t0, stop = time.time(), threading.Event()
    since = f" (last time {_duration(last)})" if last else ""

    def beat():
        while not stop.wait(every):
            log(f"{stem}: running, {_duration(time.time() - t0)}{since}")

    thread = threading.Thread(target=beat, name=f"nesylib-heartbeat-{stem}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def _stage_env(stem: str, stage: Path):
    """Tell the notebook's kernel (started by papermill with this process's environment) where
    ``start`` must put its folder."""
    saved = {k: os.environ.get(k) for k in (STAGE_NAME_ENV, STAGE_DIR_ENV)}
    os.environ[STAGE_NAME_ENV], os.environ[STAGE_DIR_ENV] = stem, str(stage)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(nb: Path, root: Path, params: dict, key: str, notebooks_dir: Path = NOTEBOOKS_DIR,
                 kernel: str | None = None, log=print, heartbeat_s: float | None = None,
                 parts: dict | None = None) -> float:
    """Execute one notebook into a staging folder and swap it in on success; returns its seconds.

    The notebook writes into a fresh staging folder ``tmp_path(<root>/<stem>)``, and papermill
    writes the executed notebook into it too. On success done.json is written there (the key, its
    ``parts``, and the content hashes of the folders the notebook read, ``input_hashes``), the executed
    notebook is moved to ``<root>/<stem>.ipynb`` and the staging folder replaces ``<root>/<stem>``
    (``replace_dir``). On any failure the staging folder, executed notebook included, becomes
    ``<root>/<stem>.failed/`` with an ``error.txt``; the previous complete folder and executed
    notebook stay as they were, and the error is raised again.

    papermill runs it on ``nesylib.pipeline.nbexec``'s engine (no kernel start-up and shutdown noise in the
    log); ``heartbeat_s``: see ``run_preset``.
    """
    import papermill as pm

    from nesylib.pipeline import nbexec

    stem = nb.stem
    final, out_nb, failed = root / stem, root / f"{stem}.ipynb", root / f"{stem}{FAILED_SUFFIX}"
    for target in (final, out_nb, failed):
        remove_stale_tmps(target)  # staging left by a killed runner on this host
    stage = tmp_path(final)
    stage.mkdir()
    nb_tmp = stage / out_nb.name
    last = _last_seconds(final)
    t0 = time.time()
    try:
        with _stage_env(stem, stage), _heartbeat(stem, log, heartbeat_s, last):
            pm.execute_notebook(str(nb), str(nb_tmp), parameters=params, kernel_name=kernel,
                                progress_bar=False, cwd=str(notebooks_dir), engine_name=nbexec.ENGINE)
        secs = time.time() - t0
        reads = read_json(stage / READS_FILE) if (stage / READS_FILE).is_file() else []
        write_json(stage / "done.json", {"key": key, "seconds": secs, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "parts": parts, "reads": reads, "inputs": input_hashes(root, reads)})
        _set_output_path(nb_tmp, out_nb)
        # the notebook first: should the process die between the two renames, the old done.json
        # still describes the old folder, so the next run repeats this one instead of trusting it
        os.replace(nb_tmp, out_nb)
        replace_dir(stage, final)
    except BaseException as e:
        _record_failure(e, stem, stage, failed, params, key, time.time() - t0)
        log(f"{stem}: failed; the previous run (if any) is kept in {final}, this attempt is in {failed}")
        raise
    if failed.exists():
        shutil.rmtree(failed, ignore_errors=True)  # that failure is superseded by this run
    return secs


def _set_output_path(nb_file: Path, final: Path) -> None:
    """Record where the executed notebook ends up (papermill recorded the staging path)."""
    import nbformat

    if not nb_file.is_file():
        return
    nb = nbformat.read(str(nb_file), as_version=4)
    if "papermill" in nb.metadata:
        nb.metadata["papermill"]["output_path"] = str(final)
        nbformat.write(nb, str(nb_file))


def _error_text(e: BaseException) -> str:
    ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    lines = [f"{type(e).__name__}: {e}"]
    if hasattr(e, "ename"):  # papermill.PapermillExecutionError: the notebook's own error and traceback
        lines = [f"{e.ename}: {e.evalue}", f"in cell {getattr(e, 'exec_count', '?')} of the notebook", "",
                 *[ansi.sub("", t) for t in (getattr(e, "traceback", None) or [])]]
    return "\n".join(lines) + "\n"


def _record_failure(e: BaseException, stem: str, stage: Path, failed: Path, params: dict,
                    key: str, secs: float) -> None:
    """Move a failed attempt's staging folder to ``failed`` with its executed notebook and error.txt.

    Never raises: the notebook's own error is the one the caller reports.
    """
    try:
        stage.mkdir(exist_ok=True)
        if not (stage / "params.json").is_file():  # it failed before start(): the runner's parameters
            write_json(stage / "params.json", params)
        text = (f"{stem} failed after {secs:.0f} s at {time.strftime('%Y-%m-%dT%H:%M:%S')} "
                f"(cache key {key}); the previous complete run, if any, is untouched in ../{stem}/\n\n"
                + _error_text(e))
        (stage / "error.txt").write_text(text, encoding="utf-8")
        try:
            _set_output_path(stage / f"{stem}.ipynb", failed / f"{stem}.ipynb")
        except Exception:  # noqa: BLE001 - an unreadable notebook is kept as papermill left it
            pass
        replace_dir(stage, failed)
    except Exception:  # noqa: BLE001 - best effort; clean up what is left
        shutil.rmtree(stage, ignore_errors=True)


EXPORT_SUFFIXES = (".csv", ".png", ".md")


def export_results(preset_name: str, run_root: str | Path | None = None, dest: str | Path | None = None) -> list[Path]:
    """Copy a run's tables, figures and results.json files into ``results/<preset>/`` (committed).

    Executed notebooks, adapters and sample logs stay under ``results/runs/`` (git-ignored).
    """
    import shutil

    root = Path(run_root or RUNS_DIR / preset_name)
    dest = Path(dest or REPO_ROOT / "results" / preset_name)
    if not root.is_dir():
        raise ConfigError(f"no run folder {root}: run `python -m nesylib run --preset {preset_name}` first")
    copied = []
    for nb_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "results.json").is_file()
                         and not p.name.startswith(".") and not p.name.endswith(FAILED_SUFFIX)):
        out = dest / nb_dir.name
        out.mkdir(parents=True, exist_ok=True)
        keep = [nb_dir / n for n in ("results.json", "env.json", "params.json") if (nb_dir / n).is_file()]
        for f in keep + sorted(p for p in nb_dir.iterdir() if p.suffix in EXPORT_SUFFIXES):
            shutil.copy2(f, out / f.name)
            copied.append(out / f.name)
    return copied
