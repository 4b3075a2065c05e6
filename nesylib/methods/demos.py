"""Demonstrations for SKIntern stage prompts, and fitting a stage prompt into the context (D16).

* ``select_demos`` picks n demos for one item from the same task's train items, never the item
  itself. "random" draws with an RNG seeded by (seed, stage, uid), so a run is reproducible and
  every item stays a training target (the authors' unseeded per-batch draw dropped them).
  "similar" takes the n nearest by cosine similarity of question embeddings; the ranking does not
  depend on the stage, so a later stage's demos are a prefix of an earlier stage's.
* ``fit_prompt`` renders P-INTER and, when prompt + target would exceed the cutoff, drops demos
  from the end first and then cuts knowledge words, reporting both counts.
"""
from __future__ import annotations

import logging
import random
import re
from typing import Callable

import numpy as np

from nesylib.methods import prompts
from nesylib.errors import ConfigError, DataError

log = logging.getLogger(__name__)
MODES = ("random", "similar")
Embed = Callable[[list[str]], np.ndarray]


class CachedEmbedder:
    """Wraps ``embed(texts) -> array`` and remembers each text's unit-normalised vector.

    Selecting "similar" demos for every item and stage re-embeds the same pool over and over;
    pass one ``CachedEmbedder`` through a whole run so each text is embedded once.
    """

    def __init__(self, embed: Embed):
        self.embed = embed
        self._cache: dict[str, np.ndarray] = {}
        self.calls = 0  # texts actually sent to ``embed`` (for tests and timing)

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            vecs = np.asarray(self.embed(todo), dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(todo):
                raise ConfigError(f"embedder returned shape {vecs.shape} for {len(todo)} texts; "
                                  f"expected (n_texts, dim)")
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.where(norms == 0, 1.0, norms)
            self._cache.update(zip(todo, vecs))
            self.calls += len(todo)
        return np.stack([self._cache[t] for t in texts])


def _same_task_candidates(record: dict, pool: list[dict]) -> list[dict]:
    out = []
    for p in pool:
        if p.get("split", "train") != "train":
            raise DataError(f"demo pool item {p.get('uid')!r} is from split {p.get('split')!r}; "
                            f"demos must come from train items only")
        if p["task"] == record["task"] and p.get("dataset") == record.get("dataset") and p["uid"] != record["uid"]:
            out.append(p)
    return sorted(out, key=lambda p: p["uid"])  # pool order must not change the draw


def select_demos(record: dict, pool: list[dict], n: int, mode: str = "random", seed: int = 42,
                 stage: int = 0, embedder: Embed | None = None) -> list[dict]:
    """Up to ``n`` demo items for ``record`` from ``pool`` (fewer if the task has fewer candidates).

    Candidates are pool items of the same dataset and task, excluding the record itself; the pool
    must hold train items only. ``mode`` is "random" (seeded by seed, stage, uid) or "similar"
    (cosine over ``embedder(questions)``, ties broken by uid; wrap the embedder in
    ``CachedEmbedder`` when calling this for many items).
    """
    if mode not in MODES:
        raise ConfigError(f"demo mode must be one of {MODES}, got {mode!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n (number of demos) must be an integer >= 0, got {n!r}")
    cands = _same_task_candidates(record, pool)
    k = min(n, len(cands))
    if k == 0:
        return []
    if mode == "random":
        return random.Random(f"{seed}-{stage}-{record['uid']}").sample(cands, k)
    if embedder is None:
        raise ConfigError("demo mode 'similar' needs an embedder: a callable embed(texts) -> np.ndarray")
    vecs = embedder([record["question"]] + [c["question"] for c in cands])
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1)
    sims = (vecs[1:] @ vecs[0]) / np.maximum(norms[1:] * norms[0], 1e-12)
    order = sorted(range(len(cands)), key=lambda i: (-float(sims[i]), cands[i]["uid"]))
    return [cands[i] for i in order[:k]]


def _first_words(text: str, k: int) -> str:
    """The text up to the end of its k-th word, keeping the original spacing and line breaks."""
    if k <= 0:
        return ""
    words = list(re.finditer(r"\S+", text))
    return text if k >= len(words) else text[:words[k - 1].end()]


def fit_prompt(record: dict, knowledge: str, demos: list[dict], tokenizer, cutoff_len: int,
               target_len: int) -> tuple[str, dict]:
    """P-INTER for ``record`` shortened until prompt tokens + ``target_len`` <= ``cutoff_len``.

    Demos are dropped from the end first, then knowledge words are cut from the end. If even the
    bare prompt does not fit, it is returned with ``fits=False`` (the trainer then truncates the
    target tail, D10). ``target_len`` should count the EOS token the trainer appends.
    Returns (prompt, info) with info keys: demos_dropped, knowledge_words_dropped, prompt_tokens, fits.
    """
    if isinstance(cutoff_len, bool) or not isinstance(cutoff_len, int) or cutoff_len < 1:
        raise ConfigError(f"cutoff_len must be a positive integer, got {cutoff_len!r}")
    if isinstance(target_len, bool) or not isinstance(target_len, int) or target_len < 0:
        raise ConfigError(f"target_len must be an integer >= 0, got {target_len!r}")

    def n_tokens(p: str) -> int:
        return len(tokenizer(p, add_special_tokens=False)["input_ids"])

    budget = cutoff_len - target_len
    demos = list(demos)
    n_demos = len(demos)
    prompt = prompts.inter(record, knowledge, demos)
    length = n_tokens(prompt)
    while length > budget and demos:
        demos.pop()
        prompt = prompts.inter(record, knowledge, demos)
        length = n_tokens(prompt)
    words = len(knowledge.split()) if knowledge else 0
    kept = words
    if length > budget and words:
        # binary search the largest number of knowledge words that still fits
        lo, hi = 0, words - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if n_tokens(prompts.inter(record, _first_words(knowledge, mid), demos)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        kept = lo
        prompt = prompts.inter(record, _first_words(knowledge, kept), demos)
        length = n_tokens(prompt)
    info = {"demos_dropped": n_demos - len(demos), "knowledge_words_dropped": words - kept,
            "prompt_tokens": length, "fits": length <= budget}
    if info["demos_dropped"] or info["knowledge_words_dropped"] or not info["fits"]:
        log.info("fit_prompt %s: dropped %d demo(s) and %d knowledge word(s); %d prompt tokens, fits=%s",
                 record["uid"], info["demos_dropped"], info["knowledge_words_dropped"], length, info["fits"])
    return prompt, info
