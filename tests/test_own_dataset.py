"""A dataset of one's own, defined by configuration (nesylib/data/custom_data.py; its rows read by
nesylib/data/custom_records.py): loading and field mapping from JSONL, CSV and Parquet, each answer type's scoring,
errors that name file, line and field, selection by name where the built-in sets are selected,
`nesylib teach --datasets`, and notebook 00_data on the smoke preset."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from nesylib.data import benchmarks, custom_data, custom_records
from nesylib.evaluation import extract
from nesylib.pipeline import experiment, runner, runs
from nesylib.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_qa"

ROWS = [  # our own column names: key, prompt_text, gold (a string, an int, "1,013", a float)
    {"key": f"k{i}", "prompt_text": f"What is {i} plus {i + 3}?", "gold": {5: "1,013", 6: 15.0}.get(i, 2 * i + 3)}
    for i in range(10)
]


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test starts with no configured dataset, and leaves none behind."""
    monkeypatch.setattr(custom_data, "_LOCAL", {})
    monkeypatch.delenv(custom_data.ENV, raising=False)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _entry(path: Path, **kw) -> dict:
    return {"path": str(path), "answer_type": "number", "fields": {"question": "prompt_text", "answer": "gold",
                                                                   "id": "key"}, **kw}


# --------------------------------------------------------------------------------- loading
def test_jsonl_fields_are_mapped_and_split_like_bbh(tmp_path):
    custom_data.register("sums", _entry(_jsonl(tmp_path / "sums.jsonl", ROWS), train_fraction=0.7,
                                        task_description="Add two numbers."))
    train = benchmarks.load_dataset_records("sums", "train")
    test = benchmarks.load_dataset_records("sums", "test")
    assert (len(train), len(test)) == (7, 3)
    assert {r["uid"] for r in train}.isdisjoint(r["uid"] for r in test)
    rec = next(r for r in train + test if r["uid"] == "sums/sums/k5")
    assert rec == {"uid": "sums/sums/k5", "dataset": "sums", "task": "sums", "split": rec["split"],
                   "question": "What is 5 plus 8?", "options": [], "answer": "1013",
                   "task_description": "Add two numbers.", "meta": {"source": "sums.jsonl:6"}}
    assert next(r for r in train + test if r["uid"] == "sums/sums/k6")["answer"] == "15"  # 15.0 -> "15"
    # the split is BBH's rule: a shuffle seeded by the name, the first round(0.7 n) train
    import random
    order = list(range(10))
    random.Random("42-sums").shuffle(order)
    assert sorted(int(r["uid"][-1]) for r in train) == sorted(order[:7])
    assert benchmarks.dataset_splits("sums") == ["train", "test"]
    assert benchmarks.domain_sets()[0][-1] == "sums"  # it has train rows: in-domain by default


def test_split_column_and_evaluation_only(tmp_path):
    rows = [{**r, "part": "test" if i < 3 else "train"} for i, r in enumerate(ROWS)]
    entry = _entry(_jsonl(tmp_path / "s.jsonl", rows))
    entry["fields"]["split"] = "part"
    custom_data.register("s", entry)
    assert [r["uid"] for r in benchmarks.load_dataset_records("s", "test")] == ["s/s/k0", "s/s/k1", "s/s/k2"]
    custom_data.register("ev", _entry(tmp_path / "s.jsonl", train_fraction=0))
    assert benchmarks.dataset_splits("ev") == ["test"]
    assert "ev" in benchmarks.domain_sets()[1]  # evaluation only: out-of-domain by default
    with pytest.raises(DataError, match="'ev' has no train rows"):
        benchmarks.load_dataset_records("ev", "train")


def test_csv_and_parquet_give_the_jsonl_records(tmp_path):
    """Multiple choice with one column per option; the gold as a letter, an option's text or an index."""
    rows = [{"q": "Which colour is the sky?", "A": "green", "B": "blue", "C": "red", "ans": "B"},
            {"q": "Which one is a fruit?", "A": "apple", "B": "stone", "C": "chair", "ans": "apple"},
            {"q": "Which number is even?", "A": "3", "B": "5", "C": "8", "ans": "(c)"}]
    fields = {"question": "q", "options": ["A", "B", "C"], "answer": "ans"}
    _jsonl(tmp_path / "mc.jsonl", rows)
    with open(tmp_path / "mc.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for ext in ("jsonl", "csv"):
        custom_data.register(f"mc_{ext}", {"path": str(tmp_path / f"mc.{ext}"), "answer_type": "choice",
                                           "fields": fields, "train_fraction": 0})
    recs = {ext: benchmarks.load_dataset_records(f"mc_{ext}", "test") for ext in ("jsonl", "csv")}
    strip = [{k: v for k, v in r.items() if k not in ("uid", "dataset", "task", "meta")} for r in recs["jsonl"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("uid", "dataset", "task", "meta")}
                     for r in recs["csv"]]
    assert [r["answer"] for r in recs["jsonl"]] == ["(B)", "(A)", "(C)"]
    assert recs["jsonl"][0]["question"] == "Which colour is the sky?\nOptions:\n(A) green\n(B) blue\n(C) red"
    assert recs["jsonl"][0]["options"] == ["(A) green", "(B) blue", "(C) red"]
    assert recs["csv"][2]["meta"] == {"source": "mc.csv:4"}  # the header is line 1
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{**r, "ans": i} for i, r in enumerate(rows)]), tmp_path / "mc.parquet")
    custom_data.register("mc_pq", {"path": str(tmp_path / "mc.parquet"), "answer_type": "choice",
                                   "fields": fields, "train_fraction": 0})
    got = benchmarks.load_dataset_records("mc_pq", "test")
    assert [r["answer"] for r in got] == ["(A)", "(B)", "(C)"]  # an integer gold is a 0-based index
    assert [r["question"] for r in got] == [r["question"] for r in recs["jsonl"]]
    assert got[1]["meta"] == {"source": "mc.parquet: row 1"}


# ---------------------------------------------------------------------------- answer types
CASES = [  # answer_type, gold as written in the file, model output, lenient, strict
    ("number", "7.5", "3 x 2.5 = 7.5. Therefore, the answer is 7.5 dollars.", True, True),
    ("number", "7.5", "Therefore, the answer is 7.", False, False),
    ("number", "1,234", "Therefore, the answer is 1234.", True, True),
    ("yesno", "true", "Therefore, the answer is Yes.", True, True),
    ("yesno", "Yes", "It holds. Therefore, the answer is true.", True, False),  # strict wants the gold's word
    ("yesno", "No", "Therefore, the answer is yes, clearly.", False, False),
    ("text", "St. Louis", "Therefore, the answer is St. Louis.", True, True),
    ("text", "St. Louis", "Therefore, the answer is Chicago.", False, False),
    ("choice", "B", "Therefore, the answer is (B) blue.", True, True),
    ("choice", "B", "Therefore, the answer is (A).", False, False),
]


@pytest.mark.parametrize("kind,gold,output,lenient,strict", CASES)
def test_each_answer_type_has_its_extraction_rule(tmp_path, kind, gold, output, lenient, strict):
    row = {"question": "Q?", "answer": gold}
    if kind == "choice":
        row["options"] = ["red", "blue"]
    entry = {"path": str(_jsonl(tmp_path / "t.jsonl", [row])), "answer_type": kind, "train_fraction": 0}
    if kind == "choice":
        entry["fields"] = {"options": "options"}
    custom_data.register("mine", entry)
    rec = benchmarks.load_dataset_records("mine", "test")[0]
    assert extract.is_correct(output, rec["answer"], "mine", rec["question"]) is lenient
    assert extract.is_correct_strict(output, rec["answer"], "mine", rec["question"]) is strict
    assert extract.has_answer(output, "mine")


def test_number_and_yes_no_extraction():
    assert extract.extract_number("Therefore, the answer is 3.5. Then 9 more.") == "3.5"
    assert extract.extract_number("We get 12 and then 4.") == "4"  # no cue: the last number
    assert extract.extract_number("No idea.") is None
    assert extract.extract_yes_no("Therefore, the answer is False.") == "no"
    assert extract.extract_yes_no("Therefore, the answer is maybe.") is None
    # a built-in task name keeps the authors' rule, which reads "3" from "3.5."
    assert extract.extract_answer("Therefore, the answer is 3.5.", "MATH") == "3"


# ---------------------------------------------------------------------------------- errors
def test_malformed_rows_name_file_line_and_field(tmp_path):
    bad = [ROWS[0], '{"key": "k1", "prompt_text": "Q", "gold": ', ROWS[2]]
    custom_data.register("broken", _entry(_jsonl(tmp_path / "broken.jsonl", bad)))
    with pytest.raises(DataError, match=r"broken\.jsonl:2: malformed JSON record"):
        benchmarks.load_dataset_records("broken", "train")
    cases = {  # rows -> what the error must say
        "missing": ([ROWS[0], {"key": "k1", "gold": 3}], r"missing\.jsonl:2: field 'prompt_text' \(the question\) "
                                                         r"is missing"),
        "notnum": ([ROWS[0], ROWS[1], {**ROWS[2], "gold": "seven"}], r"notnum\.jsonl:3: field 'gold' \(the answer\) "
                                                                      r"must be a number"),
        "dupid": ([ROWS[0], {**ROWS[1], "key": "k0"}], r"dupid\.jsonl:2: field 'key' \(the id\) 'k0' repeats the "
                                                       r"one at .*dupid\.jsonl:1"),
        "empty": ([ROWS[0], {**ROWS[1], "prompt_text": "  "}], r"empty\.jsonl:2: field 'prompt_text' .* is empty"),
    }
    for name, (rows, message) in cases.items():
        custom_data.register(name, _entry(_jsonl(tmp_path / f"{name}.jsonl", rows)))
        with pytest.raises(DataError, match=message):
            benchmarks.load_dataset_records(name, "test")
    (tmp_path / "cells.csv").write_text("prompt_text,gold,key\nWhat is 1?,1,a\nWhat is 2?,2\n")
    custom_data.register("cells", _entry(tmp_path / "cells.csv"))
    with pytest.raises(DataError, match=r"cells\.csv:3: the row's number of cells differs from the header's 3"):
        benchmarks.load_dataset_records("cells", "test")
    choice = {"path": str(_jsonl(tmp_path / "c.jsonl", [{"question": "Q?", "options": "x | y", "answer": "z"}])),
              "answer_type": "choice", "fields": {"options": "options"}}
    custom_data.register("c", choice)
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'answer' \(the answer\) 'z' is neither an option letter"):
        benchmarks.load_dataset_records("c", "all")


def test_bad_entries_are_named(tmp_path):
    path = str(tmp_path / "x.jsonl")
    bad = [({"path": path, "answer_type": "numeric"}, r"answer_type must be one of \['choice', 'number', 'text', "
                                                       r"'yesno'\], got 'numeric'"),
           ({"path": path, "answer_type": "text", "colums": {}}, r"unknown key\(s\) \['colums'\]"),
           ({"path": path, "answer_type": "text", "fields": {"query": "q"}},
            r"fields has unknown key\(s\) \['query'\]"),
           ({"path": path, "answer_type": "text", "fields": {"options": "o"}}, "applies to answer_type choice only"),
           ({"path": str(tmp_path / "x.xlsx"), "answer_type": "text"}, "cannot tell the format"),
           ({"path": path, "answer_type": "text", "train_fraction": 1.5},
            r"train_fraction must be a number in \[0, 1\]"),
           ({"answer_type": "text"}, "exactly one of 'path'"),
           ({"hf": {"id": "someone/qa"}, "answer_type": "text"}, "hf.revision is required")]
    for entry, message in bad:
        with pytest.raises(ConfigError, match=message):
            custom_data.parse_entry("mine", entry, tmp_path, "preset.yaml")
    with pytest.raises(ConfigError, match="preset.yaml: dataset name 'a/b'"):
        custom_data.parse_entry("a/b", {"path": path, "answer_type": "text"}, tmp_path, "preset.yaml")
    custom_data.register("navigate", {"path": path, "answer_type": "yesno"})  # a BBH task's name
    with pytest.raises(ConfigError, match=r"\['navigate'\] .* built-in set or task names"):
        benchmarks.known_datasets()


def test_hugging_face_source_fails_clearly_offline_or_without_datasets(monkeypatch):
    entry = custom_data.register("hub", {"hf": {"id": "nobody/no-such-set", "revision": "0" * 40},
                                         "answer_type": "text"})
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'hub': cannot load nobody/no-such-set@0{40} split 'train' \(offline mode: "
                                        r"HF_DATASETS_OFFLINE"):
        custom_records.load_records(entry)
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match="needs the 'datasets' package"):
        custom_records.load_records(entry)


# ------------------------------------------------------------------------------- selection
def test_selectable_where_the_built_in_sets_are(tmp_path):
    custom_data.register("sums", _entry(_jsonl(tmp_path / "sums.jsonl", ROWS)))
    ev = experiment.select_eval({"sums": 1})
    assert list(ev) == ["sums"] and len(ev["sums"]) == 1 and ev["sums"][0]["split"] == "test"
    train = experiment.select_train(train_per_task=3, datasets=["sums"])
    assert len(train) == 3 and {r["split"] for r in train} == {"train"}
    assert "sums" in benchmarks.known_datasets()
    with pytest.raises(ConfigError, match=r"'eval_per_task' names unknown dataset\(s\) \['other'\]; allowed: .*'sums'"):
        experiment.select_eval({"other": 1})
    custom_data._LOCAL.clear()
    with pytest.raises(ConfigError, match=r"'train_datasets' names unknown dataset\(s\) \['sums'\]"):
        experiment.select_train(datasets=["sums"])


def test_evaluation_scores_a_custom_set_by_its_answer_type(tmp_path, monkeypatch, tiny_model_dir):
    from nesylib.methods import prompts
    from nesylib.evaluation.evaluate import evaluate, get_task_spec
    from nesylib.generation.stopping import GenOutput
    from nesylib.models import load_model

    custom_data.register("sums", _entry(_jsonl(tmp_path / "sums.jsonl", ROWS), max_new_tokens=40, role="out_of_domain"))
    recs = benchmarks.load_dataset_records("sums", "test")
    spec = get_task_spec("sums")
    assert spec.cap("sums") == 40 and spec.version.startswith("custom-")
    # right by value (the authors' text rule would compare "13 apples" with "13"), or wrong
    outs = [f"Adding. Therefore, the answer is {r['answer']} apples." if i % 2 == 0 else
            "Therefore, the answer is 0." for i, r in enumerate(recs)]
    monkeypatch.setattr("nesylib.generation.engines.get_engine", lambda name: lambda m, t, ps, max_new_tokens, **kw: [
        GenOutput(o, len(p), 5, "eos") for o, p in zip(outs, ps)])
    res = evaluate(*load_model(str(tiny_model_dir)), recs, prompts.std, progress=False, n_boot=10)
    assert [r["correct"] for r in res.rows] == [i % 2 == 0 for i in range(len(recs))]
    assert res.rows[0]["max_new_tokens"] == 40
    assert res.summary["ood_datasets"] == ["sums"] and res.summary["id_average"] is None


# ------------------------------------------------------------------------------- teach CLI
def test_teach_accepts_a_dataset_file_with_a_live_teacher(tmp_path, monkeypatch, capsys):
    from fake_openai_server import FakeOpenAIServer

    from nesylib.teacher.cli import main

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _jsonl(tmp_path / "sums.jsonl", ROWS)
    (tmp_path / "sums.yaml").write_text("path: sums.jsonl\nanswer_type: number\n"
                                        "fields: {question: prompt_text, answer: gold, id: key}\n")

    def reply(body):  # right for even first addends, wrong for odd ones
        a, b = map(int, re.findall(r"What is (\d+) plus (\d+)\?\nA:", body["messages"][-1]["content"])[-1])
        return f"We add {a} and {b}. Therefore, the answer is {a + b if a % 2 == 0 else 0}."

    out = tmp_path / "r.jsonl"
    assert main(["teach", "--backend", "replay", "--datasets", str(tmp_path / "sums.yaml"), "--out", str(out)]) == 2
    assert "replay teacher has recorded rationales for bbh and gsm8k only, got ['sums']" in capsys.readouterr().err
    with FakeOpenAIServer(reply_fn=reply) as s:
        code = main(["teach", "--backend", "openai", "--model", "fake", "--base-url", s.base_url, "--api-key-env",
                     "NESYLIB_NO_KEY", "--datasets", str(tmp_path / "sums.yaml"), "--max-rounds", "1", "--out",
                     str(out)])
    assert code == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    train = benchmarks.load_dataset_records("sums", "train")
    assert sorted(r["uid"] for r in got) == sorted(r["uid"] for r in train if int(r["uid"][-1]) % 2 == 0)
    assert all(r["dataset"] == "sums" and r["rationale"].endswith(".") for r in got)
    assert main(["teach", "--datasets", str(tmp_path / "sums.jsonl"), "--out", str(out)]) == 2
    assert "is a data file; name the YAML entry" in capsys.readouterr().err
    assert main(["teach", "--backend", "openai", "--model", "m", "--datasets", "nope", "--out", str(out)]) == 2
    assert "unknown dataset(s) ['nope']" in capsys.readouterr().err


# ------------------------------------------------------------------ the example and 00_data
def test_readme_example_matches_the_example_files():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    jsonl = next(b for lang, b in blocks if lang == "json")
    assert jsonl.splitlines() == (EXAMPLE / "my_qa.jsonl").read_text().splitlines()[:3]
    yml = next(b for lang, b in blocks if lang == "yaml" and "answer_type" in b)
    assert yml == (EXAMPLE / "my_qa.yaml").read_text()
    preset = runs.load_preset(str(EXAMPLE / "preset.yaml"))
    with custom_data.exported(preset["datasets"]):
        assert len(benchmarks.load_dataset_records("my_qa", "train")) == 16
        assert set(preset["common"]["eval_per_task"]) <= set(benchmarks.known_datasets())


def test_data_notebook_accepts_the_dataset_on_the_smoke_preset(tmp_path, monkeypatch):
    """00_data on the smoke preset with the example entry added; the data file's content is in the cache key."""
    import os
    import shutil

    from nesylib.pipeline.params import apply_overrides

    keyed = []  # what each cache key was computed from (the package's code hash aside)
    parts = runner._key_parts
    monkeypatch.setattr(runner, "_key_parts", lambda nb, params, up: keyed.append(params) or parts(nb, params, up))
    ex = tmp_path / "ex"
    shutil.copytree(EXAMPLE, ex)
    preset = runs.load_preset("smoke")
    preset["datasets"] = {"my_qa": str(ex / "my_qa.yaml")}
    preset, _ = apply_overrides(preset, ["00_data.datasets=[gsm8k_plus, my_qa]"])
    run = lambda: runner.run_preset(preset, only=["00_data"], run_root=tmp_path / "run", log=lambda *_: None)  # noqa
    assert [o["status"] for o in run()] == ["ran"]
    res = json.loads((tmp_path / "run" / "00_data" / "results.json").read_text())
    assert res["counts"] == {"gsm8k_plus/test": 2100, "my_qa/test": 4, "my_qa/train": 16}
    env = json.loads((tmp_path / "run" / "00_data" / "env.json").read_text())
    assert env["custom_datasets"]["my_qa"]["entry"]["answer_type"] == "number"
    assert custom_data.ENV not in os.environ  # the runner's setting ended with the run
    lines = (ex / "my_qa.jsonl").read_text().splitlines(keepends=True)
    (ex / "my_qa.jsonl").write_text("".join(lines[:10]))
    assert [o["status"] for o in run()] == ["ran"]
    res = json.loads((tmp_path / "run" / "00_data" / "results.json").read_text())
    assert (res["counts"]["my_qa/train"], res["counts"]["my_qa/test"]) == (8, 2)
    first, second = (k["_datasets"]["my_qa"] for k in (keyed[0], keyed[len(keyed) // 2]))  # 00_data, each run
    assert first["entry"] == second["entry"] and first["data"] != second["data"]
