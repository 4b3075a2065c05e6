"""SKIntern stage data (D15-D17) on real BBH items with Codex rationales."""
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from helpers import bow_embed, codex_records
from nesylib.methods import prompts
from nesylib.methods.compress import WordTruncationCompressor, compress_stages
from nesylib.methods.curriculum import Schedule
from nesylib.errors import ConfigError, DataError
from nesylib.methods.skintern import plan_table, progressive_plan, stage_examples

TASKS = ["date_understanding", "navigate", "web_of_lies"]


@pytest.fixture(scope="module")
def train(data_dir):
    recs = codex_records(TASKS, per_task=12)
    for r in recs:
        r["rationale"] += f" Therefore, the answer is {r['answer']}."
    return recs


@pytest.fixture(scope="module")
def stages(train):
    knowledge = {r["uid"]: (f"Learning Summary:\n1. {r['task_description']}\n2. Reason one step at a time and "
                            f"check each step.\n\nSupplementary Knowledge:\n1. The answer here is {r['answer']}.\n"
                            f"2. Every option must be checked against the question.") for r in train}
    return compress_stages(knowledge, Schedule(), WordTruncationCompressor())


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_final_stage_is_exactly_p_std(train, stages):
    examples, rep = stage_examples(train, stages[0], Schedule(), 6)
    assert [e.prompt for e in examples] == [prompts.std(r) for r in train]
    assert [e.target for e in examples] == [r["rationale"] for r in train]
    assert [e.uid for e in examples] == [r["uid"] for r in train]
    assert rep["n_demos"] == 0 and rep["demos_mean"] == 0 and rep["knowledge_words_mean"] == 0


@pytest.mark.parametrize("t", [0, 2, 5])
def test_stage_prompt_holds_stage_knowledge_and_demos(train, stages, t):
    by_uid = {r["uid"]: r for r in train}
    examples, rep = stage_examples(train, stages[0], Schedule(), t)
    assert rep["n_demos"] == 6 - t and rep["demos_mean"] == 6 - t and rep["demo_shortfall"] == 0
    for r, e in zip(train, examples):
        k = stages[0][r["uid"]][f"summarydec{t}"]
        assert f"{prompts.KB_INTRO}\n{k}\n\n" in e.prompt
        assert e.prompt.startswith(prompts.std(r).split("\n\n")[0] + "\n\n")
        assert e.prompt.endswith(f"Question: {r['question']}\n{prompts.STEP_CUE}")
        assert e.prompt.count("\nAnswer: ") == 6 - t + 1
        shots = re.findall(r"Question: (.*?)\nAnswer: (.*?)\n\n", e.prompt, re.S)
        assert len(shots) == 6 - t
        for q, a in shots:  # each demo is a same-task train item with its own teacher rationale
            d = next(x for x in train if x["question"] == q)
            assert d["task"] == r["task"] and d["uid"] != r["uid"] and a == d["rationale"]
        assert by_uid[e.uid]["rationale"] == e.target


def test_deterministic_and_seeded(train, stages):
    a, _ = stage_examples(train, stages[0], Schedule(), 1, seed=42)
    b, _ = stage_examples(train, stages[0], Schedule(), 1, seed=42)
    c, _ = stage_examples(train, stages[0], Schedule(), 1, seed=43)
    assert a == b and a != c


def test_missing_inputs(train, stages):
    some = {u: v for u, v in list(stages[0].items())[1:]}
    examples, rep = stage_examples(train, some, Schedule(), 3)
    assert rep["no_knowledge"] == 1 and prompts.KB_INTRO not in examples[0].prompt
    broken = dict(stages[0], **{train[0]["uid"]: {"summarydec0": "x"}})
    with pytest.raises(DataError, match="summarydec3"):
        stage_examples(train, broken, Schedule(), 3)
    no_cot = [dict(train[0], rationale="")] + train[1:]
    with pytest.raises(DataError, match="rationale"):
        stage_examples(no_cot, stages[0], Schedule(), 6)
    with pytest.raises(ConfigError, match="stage t"):
        stage_examples(train, stages[0], Schedule(), 7)
    with pytest.raises(ConfigError, match="tokenizer"):
        stage_examples(train, stages[0], Schedule(), 0, cutoff_len=512)


def test_cutoff_fits_every_item(train, stages, tok):
    n_tok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    full, rep_full = stage_examples(train, stages[0], Schedule(), 0, tokenizer=tok)
    cutoff = 700
    fitted, rep = stage_examples(train, stages[0], Schedule(), 0, tokenizer=tok, cutoff_len=cutoff)
    assert rep_full["prompt_tokens_mean"] > cutoff  # six demos do not fit: the test is not vacuous
    assert rep["items_shortened"] > 0 and rep["demos_dropped"] > 0 and rep["over_cutoff"] == 0
    assert all(n_tok(e.prompt) + n_tok(e.target) + 1 <= cutoff for e in fitted)
    assert rep["prompt_tokens_mean"] == pytest.approx(sum(n_tok(e.prompt) for e in fitted) / len(fitted), abs=0.1)
    assert rep["demos_mean"] < 6


def test_similar_demos_shrink_as_prefixes(train, stages):
    demo_qs = []
    for t in (0, 3, 5):
        ex, _ = stage_examples(train, stages[0], Schedule(), t, demo_mode="similar", embedder=bow_embed)
        demo_qs.append(re.findall(r"Question: (.*?)\nAnswer: ", ex[0].prompt, re.S)[:-1])
    assert [len(q) for q in demo_qs] == [6, 3, 1]
    assert demo_qs[1] == demo_qs[0][:3] and demo_qs[2] == demo_qs[0][:1]


def test_plan_table(train, stages, tok):
    plan = progressive_plan(train, stages[0], Schedule(), total_steps=70, tokenizer=tok)
    rows = plan_table(plan, compression_report=stages[1], n_linear_params=1000)
    assert [r["stage"] for r in rows] == list(range(7))
    assert [r["n_demos"] for r in rows] == [6, 5, 4, 3, 2, 1, 0]
    tokens = [r["prompt_tokens_mean"] for r in rows]
    assert all(a > b for a, b in zip(tokens, tokens[1:]))
    assert rows[-1]["prompt_tokens_mean"] == pytest.approx(
        np.mean([len(tok(prompts.std(r), add_special_tokens=False)["input_ids"]) for r in train]), abs=0.1)
    assert rows[0]["achieved_ratio"] == 1 and rows[-1]["achieved_ratio"] == 0
    assert rows[2]["prefill_macs_mean"] == round(1000 * rows[2]["prompt_tokens_mean"])


def test_progressive_plan(train, stages):
    plan = progressive_plan(train, stages[0], Schedule(), total_steps=75)
    assert len(plan) == 7
    seen = []
    for p in plan:
        assert len(p.examples) == len(train) and p.report["steps"] == p.steps
        seen.append((p.stage, p.steps, p.report["n_demos"]))
        last = p
    assert seen == [(0, 10, 6), (1, 10, 5), (2, 10, 4), (3, 10, 3), (4, 10, 2), (5, 10, 1), (6, 15, 0)]
    assert [e.prompt for e in last.examples] == [prompts.std(r) for r in train]
    with pytest.raises(ConfigError, match="total_steps"):
        progressive_plan(train, stages[0], Schedule(), total_steps=3)
