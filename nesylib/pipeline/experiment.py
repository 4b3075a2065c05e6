"""What every notebook of a preset shares: the item selection and the hand-off between notebooks.

The preset's ``common`` section fixes which items are used (tasks, items per task, GSM8K cap,
evaluation slice sizes), so NesyCD, SKIntern and every baseline train and test on the same items.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from nesylib.data import benchmarks
from nesylib.knowledge import text as knowledge_text
from nesylib.errors import ConfigError


def _check_names(names, parameter: str) -> None:
    known = benchmarks.known_datasets()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(f"parameter {parameter!r} names unknown dataset(s) {unknown}; allowed: {known} "
                          f"(a dataset of your own is defined in the preset's 'datasets:' section)")


def select_train(bbh_tasks=None, train_per_task=None, gsm8k_train=None, seed=42, data_dir=None,
                 datasets=("bbh", "gsm8k")) -> list[dict]:
    """Train records of ``datasets``: BBH train (selected tasks, at most ``train_per_task`` each), GSM8K
    train (capped), and the train split of any other set named (a configured one: at most
    ``train_per_task`` per task), in that order.

    ``gsm8k_train``: None keeps all 7,473, 0 excludes GSM8K (D3 allows excluding or capping it).
    """
    _check_names(datasets, "train_datasets")
    recs = []
    if "bbh" in datasets:
        recs += benchmarks.subsample(benchmarks.load_bbh("train", bbh_tasks, data_dir), train_per_task, seed)
    if "gsm8k" in datasets and gsm8k_train != 0:
        g = benchmarks.load_gsm8k("train", data_dir)
        recs += benchmarks.subsample(g, gsm8k_train, seed) if gsm8k_train else g
    for name in dict.fromkeys(datasets):
        if name not in ("bbh", "gsm8k"):
            recs += benchmarks.subsample(benchmarks.load_dataset_records(name, "train", data_dir), train_per_task, seed)
    return recs


def select_eval(eval_per_task: dict, bbh_tasks=None, seed=42, data_dir=None) -> dict[str, list[dict]]:
    """Evaluation slices: dataset -> records, at most ``eval_per_task[dataset]`` per task (None = all)."""
    _check_names(eval_per_task, "eval_per_task")
    out = {}
    for name, per_task in eval_per_task.items():
        recs = benchmarks.load_dataset_records(name, "test", data_dir, tasks=bbh_tasks if name == "bbh" else None)
        out[name] = benchmarks.subsample(recs, per_task, seed)
    return out


def rationale_file(run_dir: Path) -> Path:
    """Where 01_teacher_distillation leaves the rationale dataset every student trains on."""
    return Path(run_dir) / "rationales.jsonl"


def load_training_set(ctx) -> list[dict]:
    """The rationale dataset written by 01_teacher_distillation for this run."""
    from nesylib.teacher.cot import load_rationales

    return load_rationales(rationale_file(ctx.upstream("01_teacher_distillation")))


def knowledge_file(run_dir: Path) -> Path:
    """Where 04_skintern_curriculum leaves the per-item knowledge (uid -> text) of the train items."""
    return Path(run_dir) / "knowledge.jsonl"


def load_knowledge(path: Path) -> dict[str, str]:
    rows = benchmarks.read_jsonl(Path(path))
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get("uid"), str) or not isinstance(r.get("knowledge"), str):
            raise ConfigError(f"{path}:{n}: expected {{'uid': str, 'knowledge': str}}")
    return {r["uid"]: r["knowledge"] for r in rows}


def passage_text(knowledge: str) -> str:
    """The part of a two-section knowledge text that KARD retrieves: the supplementary knowledge,
    its numbered items joined into one passage (the learning summary is advice, not knowledge, and
    repeats across items). A text without the sections is used whole."""
    _, sk = knowledge_text.parse(knowledge)
    body = sk or knowledge
    lines = [re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", ln).strip() for ln in body.splitlines()]
    return " ".join(ln for ln in lines if ln)


def keeps_own(uid: str, keep_own: float, seed: int) -> bool:
    """Whether a training item's retrieval may return its own text (a seeded draw per item)."""
    return keep_own >= 1 or (keep_own > 0 and random.Random(f"{seed}-own-{uid}").random() < keep_own)


class KardKnowledge:
    """D19: BM25 top-k over the train items' knowledge passages (``passage_text``).

    At test time the whole pool is searched. At training time an item's own passage is left out,
    except for a seeded share ``keep_own`` of the items: 0 is D19 as written (right when a text
    states its item's answer, as on the real benchmarks); where the texts hold knowledge shared by
    several items (the synthetic facts), leaving every own text out leaves training prompts with
    far fewer of the needed facts than test prompts get, and the student learns to ignore them, so
    ``keep_own`` is set to bring training coverage near test coverage (method.md D19 amendment)."""

    def __init__(self, train_records: list[dict], knowledge: dict[str, str], k: int = 3, keep_own: float = 0.0,
                 seed: int = 42):
        from nesylib.knowledge.retrieval import BM25Retriever

        if not 0.0 <= keep_own <= 1.0:
            raise ConfigError(f"parameter 'kard_keep_own' must be in [0, 1], got {keep_own!r}")
        passages = ((uid, passage_text(text)) for uid, text in knowledge.items())
        self.pool = [(uid, p) for uid, p in passages if p]
        if not self.pool:
            raise ConfigError("KARD needs knowledge texts, but the knowledge file is empty")
        self.k = k
        self._index = BM25Retriever([text for _, text in self.pool])
        self._pos = {uid: i for i, (uid, _) in enumerate(self.pool)}
        self.train = {r["uid"]: self._passages(r, exclude=None if keeps_own(r["uid"], keep_own, seed)
                                               else self._pos.get(r["uid"])) for r in train_records}

    def _passages(self, record: dict, exclude=None) -> list[str]:
        query = f"{record['task_description']} {record['question']}"
        hits = self._index.search(query, k=self.k, exclude=exclude)
        # "<title> . <text>": KARD's passage layout; the title is the source item's task
        return [f"{self.pool[h.docid][0].split('/')[1]} . {self.pool[h.docid][1]}" for h in hits]

    def test(self, record: dict) -> list[str]:
        return self._passages(record)


def kard_knowledge(ctx, train_records: list[dict], k: int = 3, keep_own: float = 0.0) -> KardKnowledge:
    return KardKnowledge(train_records, load_knowledge(knowledge_file(ctx.upstream("04_skintern_curriculum"))), k,
                         keep_own)
