"""Demo selection and fit-to-cutoff for SKIntern stage prompts (D16), on real BBH items."""
import logging

import numpy as np
import pytest
from transformers import AutoTokenizer

from helpers import bow_embed, codex_records
from nesylib.methods import prompts
from nesylib.data.benchmarks import load_bbh
from nesylib.methods.demos import CachedEmbedder, _first_words, fit_prompt, select_demos
from nesylib.errors import ConfigError, DataError
from nesylib.knowledge.writer import DEMOS

TASKS = ["date_understanding", "navigate"]


@pytest.fixture(scope="module")
def train(data_dir):
    return codex_records(TASKS)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_random_demos_same_task_self_excluded_and_seeded(train):
    rec = train[0]
    demos = select_demos(rec, train, 6, seed=42, stage=0)
    assert len(demos) == 6 and len({d["uid"] for d in demos}) == 6
    assert all(d["task"] == rec["task"] and d["uid"] != rec["uid"] and d["split"] == "train" for d in demos)
    # deterministic, and independent of the pool's order
    assert [d["uid"] for d in select_demos(rec, list(reversed(train)), 6, seed=42, stage=0)] == [d["uid"] for d in demos]
    # the seed, the stage and the item all change the draw
    other = [d["uid"] for d in demos]
    assert [d["uid"] for d in select_demos(rec, train, 6, seed=7, stage=0)] != other
    assert [d["uid"] for d in select_demos(rec, train, 6, seed=42, stage=1)] != other
    assert [d["uid"] for d in select_demos(train[1], train, 6, seed=42, stage=0)] != other
    # the item never draws itself, over many draws
    for t in range(7):
        for r in train[:50]:
            assert all(d["uid"] != r["uid"] for d in select_demos(r, train, 6, stage=t))


def test_fewer_candidates_than_n_and_zero(train):
    small = [r for r in train if r["task"] == "navigate"][:4]
    got = select_demos(small[0], small + [r for r in train if r["task"] != "navigate"], 6)
    assert sorted(d["uid"] for d in got) == sorted(r["uid"] for r in small[1:])
    assert select_demos(small[0], train, 0) == []


def test_pool_with_test_items_is_refused(train, data_dir):
    test_item = load_bbh("test", tasks=["navigate"])[0]
    with pytest.raises(DataError, match="train items only"):
        select_demos(train[0], train + [test_item], 3)


def test_similar_mode_matches_brute_force_cosine(train):
    emb = CachedEmbedder(bow_embed)
    rec = next(r for r in train if r["task"] == "navigate")
    got = select_demos(rec, train, 5, mode="similar", embedder=emb)
    cands = sorted((r for r in train if r["task"] == "navigate" and r["uid"] != rec["uid"]), key=lambda r: r["uid"])
    v = bow_embed([rec["question"]] + [c["question"] for c in cands])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v[1:] @ v[0]
    expect = [cands[i]["uid"] for i in sorted(range(len(cands)), key=lambda i: (-sims[i], cands[i]["uid"]))[:5]]
    assert [d["uid"] for d in got] == expect
    # a paraphrase planted in the pool is the nearest demo; later stages take a prefix of the ranking
    twin = dict(rec, uid="bbh/navigate/99999", question=rec["question"] + " ")
    assert select_demos(rec, train + [twin], 3, mode="similar", embedder=emb)[0]["uid"] == twin["uid"]
    assert [d["uid"] for d in select_demos(rec, train, 2, mode="similar", embedder=emb, stage=4)] == expect[:2]
    # each question is embedded once across calls
    calls = emb.calls
    select_demos(rec, train, 5, mode="similar", embedder=emb)
    assert emb.calls == calls


def test_bad_arguments(train):
    with pytest.raises(ConfigError, match="mode"):
        select_demos(train[0], train, 2, mode="bm25")
    with pytest.raises(ConfigError, match="embedder"):
        select_demos(train[0], train, 2, mode="similar")
    with pytest.raises(ConfigError, match="n"):
        select_demos(train[0], train, -1)
    with pytest.raises(ConfigError, match="shape"):
        CachedEmbedder(lambda texts: np.zeros(3))(["a", "b"])


def test_first_words_keeps_spacing():
    text = "Learning Summary:\n1. Find  the date.\n2. Count."
    assert _first_words(text, 3) == "Learning Summary:\n1."
    assert _first_words(text, 5) == "Learning Summary:\n1. Find  the"
    assert _first_words(text, 99) == text and _first_words(text, 0) == ""


def test_fit_prompt_drops_demos_then_knowledge_words(train, tok, caplog):
    n_tok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    rec, demos = train[0], train[1:5]
    knowledge = DEMOS[0].rational
    full = prompts.inter(rec, knowledge, demos)
    # room for everything: unchanged
    p, info = fit_prompt(rec, knowledge, demos, tok, n_tok(full) + 50, 50)
    assert p == full and info == {"demos_dropped": 0, "knowledge_words_dropped": 0,
                                  "prompt_tokens": n_tok(full), "fits": True}
    # room for two demos: the last two go, knowledge intact
    two = prompts.inter(rec, knowledge, demos[:2])
    p, info = fit_prompt(rec, knowledge, demos, tok, n_tok(two) + 50, 50)
    assert p == two and info["demos_dropped"] == 2 and info["knowledge_words_dropped"] == 0
    # room for half the knowledge: all demos go, then the knowledge is cut to the longest fitting prefix
    bare = prompts.inter(rec, "", [])
    budget = (n_tok(bare) + n_tok(prompts.inter(rec, knowledge, []))) // 2
    with caplog.at_level(logging.INFO, logger="nesylib.methods.demos"):
        p, info = fit_prompt(rec, knowledge, demos, tok, budget + 30, 30)
    kept = len(knowledge.split()) - info["knowledge_words_dropped"]
    assert info["demos_dropped"] == 4 and 0 < kept < len(knowledge.split()) and info["fits"]
    assert p == prompts.inter(rec, _first_words(knowledge, kept), []) and n_tok(p) <= budget
    assert n_tok(prompts.inter(rec, _first_words(knowledge, kept + 1), [])) > budget  # maximal
    assert any("dropped 4 demo(s)" in m for m in caplog.messages)
    # not even the bare prompt fits: the bare prompt (= P-STD) comes back, flagged
    p, info = fit_prompt(rec, knowledge, demos, tok, n_tok(bare), 10)
    assert p == prompts.std(rec) and info["fits"] is False
    with pytest.raises(ConfigError, match="cutoff_len"):
        fit_prompt(rec, knowledge, demos, tok, 0, 10)
