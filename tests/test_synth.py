"""The synthetic knowledge-sparse benchmark (nesylib.synth): generator, splits, files, teacher."""
import dataclasses
import re
from collections import Counter

import pytest

from helpers import synth_fixtures
from nesylib.data.benchmarks import parse_options
from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import ANSWER_MARKER, split_rationale
from nesylib.synth import (SPLITS, TASKS, TEMPLATES, SynthConfig, SynthTeacher, describe, generate_benchmark,
                           generate_world, load_benchmark, load_world, rationale_records, save_benchmark, solve)
from nesylib.synth.bench import _question
from nesylib.teacher.base import Teacher, TeacherRequest

DEFAULT = SynthConfig()
world, bench, teacher = synth_fixtures(DEFAULT)


def _ask(teacher, record, kind="cot", **extra):
    return teacher.complete([TeacherRequest(prompt="", kind=kind, uid=record["uid"], record=record, extra=extra)])[0]


# ----------------------------------------------------------------------------------- generator
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = SynthConfig.smoke()
    a = save_benchmark(generate_benchmark(cfg), tmp_path / "a", generate_world(cfg))
    b = save_benchmark(generate_benchmark(cfg), tmp_path / "b", generate_world(cfg))
    other = SynthConfig.smoke(seed=7)
    c = save_benchmark(generate_benchmark(other), tmp_path / "c", generate_world(other))
    for name in ("train.jsonl", "test.jsonl", "ood.jsonl", "world.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    """Set iteration order changes with PYTHONHASHSEED; the files must not."""
    import os
    import subprocess
    import sys

    code = ("import sys; from nesylib.synth import *; c = SynthConfig.smoke(); "
            "save_benchmark(generate_benchmark(c), sys.argv[1], generate_world(c))")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    for name in ("train.jsonl", "test.jsonl", "ood.jsonl", "world.json"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_sizes_schema_and_hop_mix(bench):
    assert {s: len(bench[s]) for s in SPLITS} == {"train": 480, "test": 192, "ood": 160}
    uids = [r["uid"] for s in SPLITS for r in bench[s]]
    assert len(set(uids)) == len(uids)
    for split in SPLITS:
        per_task = Counter(r["task"] for r in bench[split])
        assert set(per_task) == set(TASKS) and len(set(per_task.values())) == 1
        for r in bench[split]:
            assert set(r) == {"uid", "dataset", "task", "split", "question", "options", "answer",
                              "task_description", "meta"}
            assert re.fullmatch(rf"synth/{r['task']}/\d+", r["uid"]) and r["split"] == split
            assert r["options"] == parse_options(r["question"])
            assert r["meta"]["hops"] == len(r["meta"]["facts"]) in (1, 2, 3)
    # hop quotas from hop_weights = .35/.40/.25 of 120 per task
    assert describe(bench)["hops_train"] == {1: 4 * 42, 2: 4 * 48, 3: 4 * 30}


def test_exposure_cap_and_test_facts_seen_in_train(bench):
    exposure = Counter(f for r in bench["train"] for f in r["meta"]["facts"])
    assert max(exposure.values()) <= DEFAULT.max_exposures
    for split in SPLITS:
        for r in bench[split]:
            assert r["meta"]["fact_exposures"] == [exposure[f] for f in r["meta"]["facts"]]
            assert min(r["meta"]["fact_exposures"]) >= 1  # every fact needed is in some train question


def test_no_leakage_new_combinations_only(bench):
    train_q = {r["question"] for r in bench["train"]}
    combos = {s: [tuple(r["meta"]["facts"]) for r in bench[s]] for s in SPLITS}
    for split in ("test", "ood"):
        assert not train_q & {r["question"] for r in bench[split]}
        assert not set(combos["train"]) & set(combos[split])
    all_combos = [c for s in SPLITS for c in combos[s]]
    assert len(set(all_combos)) == len(all_combos)


def test_ood_uses_other_templates(world, bench):
    for split in SPLITS:
        kind = "ood" if split == "ood" else "id"
        assert {r["meta"]["template"].split("-")[0] for r in bench[split]} == {kind}
    for r in bench["ood"]:
        v, p = r["meta"]["variant"], r["meta"]["params"]
        id_texts = {_question(world, v, p, t) for t in TEMPLATES[v][0]}
        assert r["question"].split("\nOptions:")[0] not in id_texts


def test_answers_follow_from_facts_and_options_are_fair(world, bench):
    for split in SPLITS:
        for r in bench[split]:
            m = r["meta"]
            sol = solve(world, m["variant"], m["params"])
            assert sol.facts == m["facts"] and sol.answer == m["answer_text"]
            if r["task"] == "synth_unit":
                assert r["options"] == [] and r["answer"] == sol.answer and sol.answer.isdigit()
                continue
            texts = [o.split(") ", 1)[1] for o in r["options"]]
            assert len(texts) == DEFAULT.n_options == len(set(texts))
            assert texts.count(sol.answer) == 1
            assert r["options"][texts.index(sol.answer)].startswith(r["answer"])


def test_answer_letters_balanced(bench):
    for split in SPLITS:
        mc = [r for r in bench[split] if r["options"]]
        counts = Counter(r["answer"] for r in mc)
        assert set(counts) == {"(A)", "(B)", "(C)", "(D)"} and max(counts.values()) - min(counts.values()) <= 1
        for task in ("synth_relation", "synth_place", "synth_rule"):
            c = Counter(r["answer"] for r in mc if r["task"] == task)
            assert max(c.values()) - min(c.values()) <= 1


def test_save_load_roundtrip_and_missing_files(tmp_path, bench, world):
    save_benchmark(bench, tmp_path, world)
    assert load_benchmark(tmp_path) == bench
    loaded = load_world(tmp_path)
    assert loaded.facts == world.facts and loaded.config == DEFAULT
    r = bench["train"][200]
    assert _ask(SynthTeacher(loaded), r).text == _ask(SynthTeacher(world), r).text
    (tmp_path / "ood.jsonl").unlink()
    with pytest.raises(DataError, match="ood.jsonl"):
        load_benchmark(tmp_path)
    with pytest.raises(DataError, match="world.json"):
        load_world(tmp_path / "nowhere")


def test_config_errors_name_the_parameter():
    with pytest.raises(ConfigError, match="n_goods"):
        generate_world(SynthConfig(n_goods=99))
    with pytest.raises(ConfigError, match="hop_weights"):
        SynthConfig(hop_weights=(1, 2)).validate()
    with pytest.raises(ConfigError, match="too small"):  # demand exceeds what the world can ask
        generate_benchmark(dataclasses.replace(SynthConfig.smoke(), n_train_per_task=200))


# ------------------------------------------------------------------------------------- teacher
def test_teacher_rationales_are_judged_correct_and_wrong_ones_are_not(bench, teacher):
    from nesylib.evaluation.extract import is_correct, is_correct_strict

    assert isinstance(teacher, Teacher)
    for r in bench["train"]:
        reply = _ask(teacher, r)
        assert reply.ok and reply.text.endswith(f"{ANSWER_MARKER} {r['answer']}.")
        assert is_correct(reply.text, r["answer"], r["task"], r["question"])
        assert is_correct_strict(reply.text, r["answer"], r["task"], r["question"])
        for fact in r["meta"]["facts"]:  # the rationale states exactly the facts of this question
            assert teacher.world.facts[fact][:-1] in reply.text
        if r["options"]:
            wrong = next(o[:3] for o in r["options"] if not o.startswith(r["answer"]))
        else:
            wrong = str(int(r["answer"]) + 1)
        bad = reply.text[: reply.text.rindex(ANSWER_MARKER)] + f"{ANSWER_MARKER} {wrong}."
        assert not is_correct(bad, r["answer"], r["task"], r["question"])


def test_teacher_refuses_test_and_ood_records(bench, teacher):
    for split in ("test", "ood"):
        for r in bench[split]:
            for kind in ("cot", "knowledge", "error_analysis"):
                reply = _ask(teacher, r, kind, student_output="Therefore, the answer is (A).")
                assert not reply.ok and reply.text is None and f"split {split!r}" in reply.error
    r = bench["train"][0]
    assert not _ask(teacher, r, "chat").ok
    assert not teacher.complete([TeacherRequest(prompt="x", kind="cot")])[0].ok
    assert not _ask(teacher, {**r, "split": None}).ok
    assert "student_output" in _ask(teacher, r, "error_analysis").error
    other = generate_benchmark(SynthConfig.smoke(seed=7))["train"][20]  # a record of another world
    assert not _ask(teacher, other).ok


def test_teacher_is_deterministic(bench, teacher):
    r = bench["train"][300]
    for kind in ("cot", "knowledge", "error_analysis"):
        reqs = [TeacherRequest(prompt="", kind=kind, record=r, sample_index=i, temperature=0.8,
                               extra={"student_output": "no idea"}) for i in range(3)]
        assert len({rep.text for rep in teacher.complete(reqs)}) == 1


def test_error_analysis_names_facts_and_diagnoses(bench, teacher):
    from nesylib.knowledge.text import parse

    r = next(x for x in bench["train"] if x["meta"]["variant"] == "mentor3")
    facts = [teacher.world.facts[f] for f in r["meta"]["facts"]]
    lure = solve(teacher.world, "mentor3", r["meta"]["params"]).lures[0]
    letter = next(o[:3] for o in r["options"] if o.endswith(f" {lure}"))
    text = _ask(teacher, r, "error_analysis", student_output=f"{facts[0]} Therefore, the answer is {letter}.").text
    summary, knowledge = parse(text)
    assert text.startswith("Learning Summary:\n1. ") and "\n\nSupplementary Knowledge:\n1. " in text
    assert "2 of the 3 facts" in summary and "shorter or misdirected chain" in summary
    assert all(f in knowledge for f in facts)
    text = _ask(teacher, r, "error_analysis", student_output="Mirel mentors Tavo Tavo Tavo").text
    assert "never reached" in parse(text)[0]


def test_knowledge_has_facts_and_a_distractor_free_related_fact(bench, teacher):
    from nesylib.knowledge.text import problem

    with_related = 0
    for r in bench["train"]:
        text = _ask(teacher, r, "knowledge").text
        assert problem(text) is None
        body = text.split("Supplementary Knowledge:\n", 1)[1]
        items = [re.sub(r"^\d+\. ", "", line) for line in body.splitlines()]
        facts = [teacher.world.facts[f] for f in r["meta"]["facts"]]
        assert items[: len(facts)] == facts
        extra = items[len(facts):]  # no method text after the facts: only the related fact, if any
        assert len(extra) <= 1
        for line in extra:
            with_related += 1
            assert line in teacher.world.facts.values() and line not in facts
            distractors = [o.split(") ", 1)[1] for o in r["options"] if not o.startswith(r["answer"])]
            assert not any(re.search(rf"\b{d}\b", line) for d in distractors)
    assert with_related > 0.9 * len(bench["train"])


def test_rationale_records_and_the_nesycd_skintern_plumbing(bench, teacher):
    from nesylib.knowledge.kb import build_kb
    from nesylib.knowledge.writer import generate_knowledge
    from nesylib.methods.nesycd import collect_demonstrations
    from nesylib.methods.prompts import std

    train = bench["train"][::40]
    rows = rationale_records(train, teacher)
    assert [r["uid"] for r in rows] == [r["uid"] for r in train]
    assert all(split_rationale(r["rationale"])[1] == r["answer"] + "." for r in rows)
    assert rationale_records(bench["test"][:3], teacher) == []  # refused, so dropped
    # NesyCD steps 2-3: a student that answers wrong on every item, analysed by the teacher
    outputs = ["I think so. Therefore, the answer is 0." if not r["options"] else
               f"Therefore, the answer is {next(o[:3] for o in r['options'] if not o.startswith(r['answer']))}."
               for r in train]
    errors, corrects = collect_demonstrations(train, outputs, [std(r) for r in train])
    assert len(errors) == len(train) and not corrects
    kb = build_kb(errors, teacher, max_attempts=1)
    assert not kb.failures
    knowledge, failures = generate_knowledge(train, teacher, max_attempts=1)
    assert not failures and set(knowledge) == {r["uid"] for r in train}


def test_sequences_are_short_for_a_cpu_student(bench, teacher, tiny_model_dir):
    """P-STD prompt + teacher rationale stay far below calibration.md's 320-token budget."""
    from transformers import AutoTokenizer

    from nesylib.methods.prompts import std

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = rationale_records(bench["train"], teacher)
    lengths = [len(tok(std(r) + r["rationale"])["input_ids"]) for r in rows]
    assert len(rows) == len(bench["train"]) and max(lengths) <= 240
    assert max(len(tok(std(r))["input_ids"]) for s in ("test", "ood") for r in bench[s]) <= 128
