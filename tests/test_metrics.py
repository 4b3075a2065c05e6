"""Accuracy tables, bootstrap intervals, ID/OOD averages and chance/majority baselines."""
import numpy as np
import pytest

from nesylib.data.benchmarks import _bbh_examples, load_bbh, load_codex_rationales
from nesylib.evaluation.extract import ANSWER_MARKER, is_correct
from nesylib.evaluation.metrics import (
    accuracy_table, bootstrap_ci, chance_and_majority, paired_bootstrap_diff, summarize,
)


def _flags(n, p, seed=1):
    return np.random.default_rng(seed).random(n) < p


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (50, 500, 5000):
        f = _flags(n, 0.7)
        lo, hi = bootstrap_ci(f)
        assert lo <= f.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # normal-approximation width 2*1.96*sqrt(p(1-p)/n) ~ 0.025 at n=5000
    assert widths[2] == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 5000), rel=0.2)
    assert bootstrap_ci([True] * 20) == (1.0, 1.0) and bootstrap_ci([0] * 20) == (0.0, 0.0)


def test_bootstrap_ci_is_seeded():
    f = _flags(300, 0.4)
    assert bootstrap_ci(f, seed=3) == bootstrap_ci(f, seed=3)
    assert bootstrap_ci(f, seed=3) != bootstrap_ci(f, seed=4)


def test_bootstrap_matches_explicit_index_resampling():
    f = _flags(400, 0.35)
    rng = np.random.default_rng(0)
    means = f[rng.integers(0, f.size, size=(4000, f.size))].mean(axis=1)
    lo, hi = bootstrap_ci(f, n_boot=4000)
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=0.01)
    assert hi == pytest.approx(np.quantile(means, 0.975), abs=0.01)


def test_paired_bootstrap_diff():
    a = _flags(1000, 0.6)
    same = paired_bootstrap_diff(a, a)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1.0
    b = a.copy()
    b[:150] = False  # b loses up to 150 items a gets right
    better = paired_bootstrap_diff(a, b)
    assert better["diff"] == pytest.approx(a.mean() - b.mean()) and better["ci_low"] > 0
    assert better["p_value"] < 0.01
    flipped = paired_bootstrap_diff(b, a)
    assert flipped["diff"] == -better["diff"] and flipped["ci_high"] < 0
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_diff(a, b[:10])


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="booleans"):
        bootstrap_ci([0.5, 1])
    with pytest.raises(ValueError, match=r"rows\[1\] lacks"):
        accuracy_table([{"task": "a", "correct": True}, {"task": "b"}])


def _rows():
    rows = []
    for ds, task, n_right, n in [("bbh", "navigate", 3, 4), ("bbh", "snarks", 1, 4), ("gsm8k", "gsm8k", 1, 2),
                                 ("arc-e", "arc-e", 2, 2), ("agieval", "lsat-ar", 0, 2)]:
        rows += [{"dataset": ds, "task": task, "correct": i < n_right} for i in range(n)]
    return rows


def test_accuracy_table_micro_by_key_and_keys():
    t = accuracy_table(_rows(), by="dataset").set_index("dataset")
    assert t.loc["bbh", "accuracy"] == 0.5 and t.loc["bbh", "n"] == 8 and t.loc["arc-e", "accuracy"] == 1.0
    assert (t["ci_low"] <= t["accuracy"]).all() and (t["accuracy"] <= t["ci_high"]).all()
    t2 = accuracy_table(_rows(), by=["dataset", "task"])
    assert list(t2.columns[:2]) == ["dataset", "task"] and len(t2) == 5


def test_summarize_id_ood_averages_over_present_sets():
    rows = _rows()
    for r in rows:  # a well-formed right answer and a malformed wrong one
        answer = "4" if r["dataset"] == "gsm8k" else "(A)"
        r["output"] = f"{ANSWER_MARKER} {answer}." if r["correct"] else "I am not sure"
    s = summarize(rows)
    assert s["datasets"]["bbh"]["accuracy"] == 0.5 and s["datasets"]["gsm8k"]["accuracy"] == 0.5
    assert s["id_average"] == pytest.approx(0.5) and s["id_datasets"] == ["bbh", "gsm8k"]
    assert s["ood_average"] == pytest.approx((1.0 + 0.0) / 2) and s["ood_datasets"] == ["agieval", "arc-e"]
    assert set(s["bbh_tasks"]) == {"navigate", "snarks"} and s["bbh_tasks"]["navigate"]["accuracy"] == 0.75
    assert s["well_formed_rate"] == pytest.approx(7 / 14) and s["no_answer_rate"] == pytest.approx(7 / 14)
    only_id = summarize([r for r in rows if r["dataset"] == "bbh"])
    assert only_id["ood_average"] is None and only_id["id_average"] == 0.5
    bare = summarize([{k: r[k] for k in ("dataset", "task", "correct")} for r in rows])
    assert bare["no_answer_rate"] is None and bare["well_formed_rate"] is None


def test_summarize_real_codex_outputs():
    rows = []
    for task in ("navigate", "date_understanding", "word_sorting"):
        for p, ex in zip(load_codex_rationales(task), _bbh_examples(task)):
            out = p.replace("So the answer is", ANSWER_MARKER, 1)
            rows.append({"dataset": "bbh", "task": task, "output": out,
                         "correct": is_correct(out, ex["target"], task, ex["input"])})
    s = summarize(rows)
    assert s["bbh_tasks"]["navigate"]["accuracy"] == pytest.approx(0.964)
    assert s["bbh_tasks"]["date_understanding"]["accuracy"] == pytest.approx(0.872)
    # word_sorting: 146 of 250 Codex outputs stop before "So the answer is"
    assert s["well_formed_rate"] == pytest.approx(1 - 147 / 750, abs=1 / 750)
    assert s["datasets"]["bbh"]["n"] == 750 and s["id_datasets"] == ["bbh"]


def test_chance_and_majority_on_bbh_records():
    recs = load_bbh("all", ["navigate", "date_understanding", "boolean_expressions", "object_counting"])
    t = chance_and_majority(recs).set_index("task")
    assert t.loc["navigate", "chance"] == 0.5  # "- Yes / - No" options
    assert t.loc["boolean_expressions", "chance"] == 0.5  # free form, but only True/False occur
    assert t.loc["object_counting", "chance"] == 0.0
    n_opts = [len(r["options"]) for r in recs if r["task"] == "date_understanding"]
    assert t.loc["date_understanding", "chance"] == pytest.approx(np.mean([1 / k for k in n_opts]))
    golds = [r["answer"].lower() for r in recs if r["task"] == "navigate"]
    top = max(set(golds), key=golds.count)
    assert t.loc["navigate", "majority"] == golds.count(top) / len(golds)
    assert t.loc["navigate", "majority_answer"] == top
    assert (t["majority"] >= t["chance"] - 0.1).all()
