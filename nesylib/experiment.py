"""What every notebook of a preset shares: the item selection and the hand-off between notebooks.

The preset's ``common`` section fixes which items are used (tasks, items per task, GSM8K cap,
evaluation slice sizes), so NesyCD, SKIntern and every baseline train and test on the same items.
"""
from __future__ import annotations

from pathlib import Path

from nesylib import data
from nesylib.errors import ConfigError

SELECTION_SCHEMA = {"seed": int, "bbh_tasks": (list, type(None)), "train_per_task": (int, type(None)),
                    "gsm8k_train": (int, type(None)), "eval_per_task": dict}


def select_train(bbh_tasks=None, train_per_task=None, gsm8k_train=None, seed=42, data_dir=None) -> list[dict]:
    """Train records: BBH train (selected tasks, at most ``train_per_task`` each) + GSM8K train (capped).

    ``gsm8k_train``: None keeps all 7,473, 0 excludes GSM8K (D3 allows excluding or capping it).
    """
    recs = data.subsample(data.load_bbh("train", bbh_tasks, data_dir), train_per_task, seed)
    if gsm8k_train != 0:
        g = data.load_gsm8k("train", data_dir)
        recs += data.subsample(g, gsm8k_train, seed) if gsm8k_train else g
    return recs


def select_eval(eval_per_task: dict, bbh_tasks=None, seed=42, data_dir=None) -> dict[str, list[dict]]:
    """Evaluation slices: dataset -> records, at most ``eval_per_task[dataset]`` per task (None = all)."""
    unknown = sorted(set(eval_per_task) - set(data.DATASETS))
    if unknown:
        raise ConfigError(f"parameter 'eval_per_task' names unknown dataset(s) {unknown}; allowed: {data.DATASETS}")
    out = {}
    for name, per_task in eval_per_task.items():
        recs = data.load_dataset_records(name, "test", data_dir, tasks=bbh_tasks if name == "bbh" else None)
        out[name] = data.subsample(recs, per_task, seed)
    return out


def rationale_file(run_dir: Path) -> Path:
    """Where 01_teacher_distillation leaves the rationale dataset every student trains on."""
    return Path(run_dir) / "rationales.jsonl"
