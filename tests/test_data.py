import json

import pytest

from nesylib.data import benchmarks
from nesylib.errors import DataError


def test_counts_match_method_reference(data_dir):
    assert len(benchmarks.load_bbh("train")) == 5209
    assert len(benchmarks.load_bbh("test")) == 1302
    assert len(benchmarks.load_gsm8k("train")) == 7473 and len(benchmarks.load_gsm8k("test")) == 1319
    assert len(benchmarks.load_agieval()) == 2546
    assert len(benchmarks.load_arc("arc-e")) == 2376 and len(benchmarks.load_arc("arc-c")) == 1172
    assert len(benchmarks.load_gsm_plus()) == 2100


def test_split_is_deterministic_and_matches_manifest(data_dir):
    sizes = {t: len(benchmarks._bbh_examples(t)) for t in benchmarks.BBH_TASKS}
    again = benchmarks.compute_bbh_split(sizes)
    assert again == benchmarks.compute_bbh_split(sizes)
    assert again == {t: sorted(v) for t, v in benchmarks.bbh_split().items()}
    per_task = {t: len(v) for t, v in again.items()}
    assert per_task["navigate"] == 50 and per_task["penguins_in_a_table"] == 29
    train = {r["uid"] for r in benchmarks.load_bbh("train")}
    test = {r["uid"] for r in benchmarks.load_bbh("test")}
    assert not train & test and len(train | test) == 6511


def test_record_conversion_rules(data_dir):
    arc = benchmarks.load_arc("arc-c")[0]
    assert not arc["question"].startswith("Question:") and arc["answer"].startswith("(")
    assert len(arc["options"]) == 4
    ag = next(r for r in benchmarks.load_agieval(["lsat-ar"]))
    assert "\nOptions:\n(A)" in ag["question"] and ag["answer"] in {"(A)", "(B)", "(C)", "(D)", "(E)"}
    g = benchmarks.load_gsm8k("train")[0]
    assert g["answer"] == "72" and g["task"] == "gsm8k" and "####" in g["meta"]["solution"]
    nav = benchmarks.load_bbh("train", ["navigate"])[0]
    assert nav["options"] == ["Yes", "No"]
    assert nav["task_description"].startswith("Given a series of navigation instructions")
    assert "Therefore" not in nav["task_description"]
    plus = benchmarks.load_gsm_plus()
    assert all(r["answer"] != "None" for r in plus)
    assert all("gsm8k" in r["task"] for r in plus)


def test_malformed_record_names_file_and_line(tmp_path, data_dir):
    rel = "gsm8k/test.jsonl"
    (tmp_path / "gsm8k").mkdir()
    bad = tmp_path / rel
    lines = (data_dir / rel).read_text().splitlines(keepends=True)
    lines[4] = lines[4][:-20] + "\n"  # truncate line 5
    bad.write_text("".join(lines))
    with pytest.raises(DataError, match=r"test\.jsonl:5: malformed JSON record"):
        benchmarks.read_jsonl(bad)


def test_missing_field_names_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "#### 3"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    rows = benchmarks.read_jsonl(p)
    with pytest.raises(DataError, match=r"x\.jsonl:2: record lacks field"):
        for i, row in enumerate(rows):
            benchmarks._require(row, ("question", "answer"), f"{p}:{i + 1}")


def test_codex_rationales_align(data_dir):
    preds = benchmarks.load_codex_rationales("web_of_lies")
    assert len(preds) == 250 and "So the answer is" in preds[0]


def test_unknown_names_are_clear_errors(data_dir):
    with pytest.raises(DataError, match="unknown dataset 'mmlu'"):
        benchmarks.load_dataset_records("mmlu")
    with pytest.raises(DataError, match="BB-sub is not available"):
        benchmarks.load_dataset_records("bb")
    with pytest.raises(DataError, match="unknown BBH task"):
        benchmarks.load_bbh("train", ["nope"])


def test_subsample_is_seeded(data_dir):
    recs = benchmarks.load_bbh("test")
    a = benchmarks.subsample(recs, 5, seed=1)
    assert a == benchmarks.subsample(recs, 5, seed=1) and len(a) == 27 * 5
    assert a != benchmarks.subsample(recs, 5, seed=2)


def test_hf_dataset_roundtrip(data_dir):
    ds = benchmarks.to_hf_dataset(benchmarks.load_gsm8k("test")[:10])
    assert len(ds) == 10 and json.loads(ds[0]["meta"])["solution"]
