"""Notebook 06's glue: sweep validation, inheriting 08's configuration, nested data shares, result rows."""
import json

import pytest

from nesylib.pipeline import runs
from nesylib.errors import ConfigError, DataError
from nesylib.synth import ablations as ab


def test_check_sweeps_accepts_the_defaults_and_names_bad_entries():
    s = ab.check_sweeps([0, 1, 3], [0.25, 1], [["linear", 6], ["step", 2]], ["knowledge_only"])
    assert s == {"k": [0, 1, 3], "train_size": [0.25, 1.0], "schedule": [("linear", 6), ("step", 2)],
                 "content": ["knowledge_only"]}
    assert ab.check_sweeps([], [], [], []) == {"k": [], "train_size": [], "schedule": [], "content": []}
    with pytest.raises(ConfigError, match="'k_values': -1"):
        ab.check_sweeps([-1], [], [], [])
    with pytest.raises(ConfigError, match="'train_fractions': 1.5"):
        ab.check_sweeps([], [1.5], [], [])
    with pytest.raises(ConfigError, match="'schedules'.*cosine"):
        ab.check_sweeps([], [], [["cosine", 3]], [])
    with pytest.raises(ConfigError, match="'schedules'"):
        ab.check_sweeps([], [], [["linear", 0]], [])
    with pytest.raises(ConfigError, match="'content_variants': 'both'"):
        ab.check_sweeps([], [], [], ["both"])
    with pytest.raises(ConfigError, match="twice"):
        ab.check_sweeps([1, 1], [], [], [])
    with pytest.raises(ConfigError, match="must be a list"):
        ab.check_sweeps(3, [], [], [])


def _params08(tmp_path, **over):
    p = {k: None for k in ab.INHERITED} | {"student": "smollm2-135m", "seed": 42, "train": {}, "preset": "x"}
    p.update(over)
    d = tmp_path / "08_synthetic_benchmark"
    runs.write_json(d / "params.json", p)
    return d


def test_base_config_inherits_08_and_refuses_another_student(tmp_path):
    d = _params08(tmp_path, stages_T=3, max_demos=1)
    base = ab.base_config(d, "smollm2-135m")
    assert set(base) == set(ab.INHERITED) and base["stages_T"] == 3 and "preset" not in base
    with pytest.raises(ConfigError, match="differs from notebook 08"):
        ab.base_config(d, "tiny-llama")
    with pytest.raises(DataError, match="run notebook 08"):
        ab.base_config(tmp_path / "nowhere", "smollm2-135m")
    (d / "params.json").write_text("{broken")
    with pytest.raises(DataError, match="params.json: not valid JSON"):
        ab.base_config(d, "smollm2-135m")
    runs.write_json(d / "params.json", {"student": "smollm2-135m"})
    with pytest.raises(DataError, match="lacks parameter"):
        ab.base_config(d, "smollm2-135m")


def test_read_knowledge_names_file_and_line(tmp_path):
    p = tmp_path / "knowledge.jsonl"
    p.write_text(json.dumps({"uid": "a", "knowledge": "x y"}) + "\n" + json.dumps({"uid": "b"}) + "\n")
    with pytest.raises(DataError, match=r"knowledge.jsonl:2"):
        ab.read_knowledge(p)
    p.write_text(json.dumps({"uid": "a", "knowledge": "x y"}) + "\n")
    assert ab.read_knowledge(p) == {"a": "x y"}
    with pytest.raises(DataError, match="not found"):
        ab.read_knowledge(tmp_path / "none.jsonl")


def test_fraction_per_task_is_seeded_nested_and_per_task():
    recs = [{"uid": f"{t}/{i}", "task": t} for t in ("a", "b") for i in range(10)] + [{"uid": "c/0", "task": "c"}]
    quarter = ab.fraction_per_task(recs, 0.25, 7)
    half = ab.fraction_per_task(recs, 0.5, 7)
    assert [r["task"] for r in quarter].count("a") == 3 and [r["task"] for r in half].count("b") == 5
    assert [r for r in quarter if r["task"] == "c"] == [recs[-1]]  # at least one per task
    assert {r["uid"] for r in quarter} <= {r["uid"] for r in half}  # a larger share adds data
    assert quarter == ab.fraction_per_task(recs, 0.25, 7)
    assert quarter != ab.fraction_per_task(recs, 0.25, 8)
    assert ab.fraction_per_task(recs, 1.0, 7) == recs
    with pytest.raises(ConfigError):
        ab.fraction_per_task(recs, 0, 7)


def test_sweep_rows_give_all_and_per_split_accuracy():
    items = [{"split": "test", "correct": True, "has_answer": True}] * 3 + \
            [{"split": "ood", "correct": False, "has_answer": False}] * 1
    summary = {"flops": {"synth": {"inference_tflops": 0.5}}}
    rows = {r["split"]: r for r in ab.sweep_rows("k", "k=1", 1, items, summary)}
    assert rows["all"]["accuracy"] == 0.75 and rows["all"]["n"] == 4 and rows["all"]["inference_tflops"] == 0.5
    assert rows["test"]["accuracy"] == 1.0 and rows["ood"]["accuracy"] == 0.0
    assert rows["ood"]["no_answer_rate"] == 1.0 and rows["test"]["inference_tflops"] is None
    assert rows["all"]["ci_low"] <= 0.75 <= rows["all"]["ci_high"]
    with pytest.raises(ConfigError, match="no evaluated items"):
        ab.sweep_rows("k", "k=1", 1, [])
