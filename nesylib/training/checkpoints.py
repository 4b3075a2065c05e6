"""A training run's output folder: its finished result, its checkpoints (complete or not), and resuming.

A run folder holds ``run.json`` (the fingerprint of the inputs, written when training starts),
``checkpoint-<step>/`` folders while it trains, and ``train_result.json`` + ``adapter/`` once done. A
checkpoint counts only when complete (trainer state, adapter weights, every process's RNG state): a kill
during a save leaves an incomplete one, which is reported and deleted rather than resumed from.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from nesylib.training.distributed import missing_rng_states
from nesylib.errors import ConfigError
from nesylib.files import write_json
from nesylib.training.config import TrainResult

RESULT_FILE = "train_result.json"
RUN_FILE = "run.json"
_log = logging.getLogger(__name__)


_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def checkpoints(out_dir: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder, complete or not, by step."""
    found = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _checkpoint_problem(ckpt: Path, world_size: int = 1) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None when it can): a kill during a save leaves it without
    its trainer state, which ``Trainer`` writes last, or without the adapter weights, or (several
    processes) without some process's RNG state (``missing_rng_states``)."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable trainer_state.json ({type(e).__name__})"
    if not any((ckpt / w).is_file() for w in _ADAPTER_WEIGHTS):
        return f"no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)})"
    missing = missing_rng_states(ckpt, world_size)
    if missing:
        return f"no RNG state of process(es) {missing}"
    return None


def resumable_checkpoint(out_dir: Path, world_size: int = 1) -> Path | None:
    """The newest complete checkpoint; incomplete ones are reported and deleted (they can never be
    resumed from, and ``Trainer``'s checkpoint rotation would keep them over a good one)."""
    last = None
    for ckpt in checkpoints(out_dir):
        problem = _checkpoint_problem(ckpt, world_size)
        if problem is None:
            last = ckpt
        else:
            _log.warning("ignoring incomplete checkpoint %s (%s); deleting it", ckpt, problem)
            shutil.rmtree(ckpt, ignore_errors=True)
    if last is not None:
        _log.warning("resuming the training in %s from its newest complete checkpoint, %s", out_dir, last.name)
    return last



def finished_run(out_dir: Path, fp: str) -> TrainResult | None:
    """The finished run with fingerprint ``fp`` in ``out_dir``, if there is one."""
    done = out_dir / RESULT_FILE
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("fingerprint") == fp and (out_dir / "adapter").is_dir():
            return TrainResult(out_dir / "adapter", prev, cached=True)
    return None


def prepare_out_dir(out_dir: Path, fp: str, resume: bool, meta: dict,
                     world_size: int = 1) -> tuple[TrainResult | None, Path | None]:
    """(a finished identical run to return, or None; the checkpoint to resume from, or None)."""
    done, run_file = out_dir / RESULT_FILE, out_dir / RUN_FILE
    finished = finished_run(out_dir, fp) if resume else None
    if finished is not None:
        return finished, None
    last = resumable_checkpoint(out_dir, world_size) if resume else None
    if last is not None:
        prev_fp = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
        if prev_fp != fp:
            raise ConfigError(f"{out_dir} holds checkpoints of a run with different inputs (fingerprint {prev_fp} "
                              f"!= {fp}); delete it, pass resume=False, or choose another out_dir")
    else:
        for p in checkpoints(out_dir):
            shutil.rmtree(p)
    done.unlink(missing_ok=True)
    write_json(run_file, {"fingerprint": fp, **meta})
    return None, last
