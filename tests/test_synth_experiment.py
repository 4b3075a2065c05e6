"""Notebook 08's glue (nesylib.synth.experiment) on the smoke world, the real tokenizer and the tiny model."""
import json

import pytest

from helpers import synth_fixtures
from nesylib.methods import prompts
from nesylib.errors import ConfigError, DataError
from nesylib.synth import SynthConfig, rationale_records, solve
from nesylib.synth import experiment as sx

SMOKE = SynthConfig.smoke()
world, bench, teacher = synth_fixtures(SMOKE)


@pytest.fixture(scope="module")
def train_rows(bench, teacher):
    return rationale_records(bench["train"], teacher)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _gold_rationale(world, rec):
    """What a perfect student writes: the solver's steps and the gold answer."""
    sol = solve(world, rec["meta"]["variant"], rec["meta"]["params"])
    return " ".join(sol.steps) + f" {prompts.ANSWER_MARKER} {rec['answer']}."


def test_resolve_config_presets_overrides_and_errors():
    assert sx.resolve_config("default") == SynthConfig()
    assert sx.resolve_config("smoke") == SMOKE
    assert sx.resolve_config({"max_exposures": 2}) == SynthConfig(max_exposures=2)
    assert sx.resolve_config({"base": "smoke", "seed": 3}) == SynthConfig.smoke(seed=3)
    with pytest.raises(ConfigError, match="synth_config"):
        sx.resolve_config("big")
    with pytest.raises(ConfigError, match="base="):
        sx.resolve_config({"base": "tiny"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        sx.resolve_config({"n_facts": 3})
    with pytest.raises(ConfigError, match="max_exposures"):
        sx.resolve_config({"max_exposures": 0})


def test_eval_records_are_test_then_ood_and_a_seeded_stratified_subset(bench):
    full = sx.eval_records(bench)
    assert [r["split"] for r in full] == ["test"] * len(bench["test"]) + ["ood"] * len(bench["ood"])
    assert len({r["uid"] for r in full}) == len(full)  # both splits fit one evaluate() call
    sub = sx.eval_records(bench, per_task=2, seed=1)
    assert len(sub) == 2 * 4 * 2 and sub == sx.eval_records(bench, per_task=2, seed=1)
    assert {(r["split"], r["task"]) for r in sub} == {(r["split"], r["task"]) for r in full}
    assert sub != sx.eval_records(bench, per_task=2, seed=2)
    with pytest.raises(ConfigError, match="eval_per_task_synth"):
        sx.eval_records(bench, per_task=0)
    with pytest.raises(DataError, match="'ood'"):
        sx.eval_records({"test": bench["test"]})


def test_eval_records_take_a_size_per_split(bench):
    sub = sx.eval_records(bench, per_task={"test": 3, "ood": 1}, seed=1)
    assert [r["split"] for r in sub] == ["test"] * 3 * 4 + ["ood"] * 4
    assert [r for r in sub if r["split"] == "test"] == sx.eval_records(bench, per_task=3, seed=1)[:12]
    whole_ood = sx.eval_records(bench, per_task={"test": 1}, seed=1)
    assert sum(r["split"] == "ood" for r in whole_ood) == len(bench["ood"])
    with pytest.raises(ConfigError, match=r"unknown split.*'dev'"):
        sx.eval_records(bench, per_task={"test": 1, "dev": 1})
    with pytest.raises(ConfigError, match=r"eval_per_task_synth'\['ood'\]"):
        sx.eval_records(bench, per_task={"ood": "2"})


def test_task_spec_caps_cover_the_longest_rationale_of_each_family(train_rows, tok):
    spec = sx.synth_task_spec(train_rows, tok, margin=1.3, floor=8)
    for task, cap in spec.max_new_tokens_by_task.items():
        longest = max(len(tok(r["rationale"], add_special_tokens=False)["input_ids"]) + 1
                      for r in train_rows if r["task"] == task)
        assert cap == max(8, -(-13 * longest // 10)) and spec.cap(task) == cap
    assert spec.max_new_tokens == max(spec.max_new_tokens_by_task.values())
    assert sx.synth_task_spec(train_rows, tok, floor=500).cap("synth_unit") == 500
    with pytest.raises(ConfigError):
        sx.synth_task_spec([], tok)


def test_item_rows_measure_exposure_and_facts_stated(world, bench):
    recs = sx.eval_records(bench)
    good = [{"uid": r["uid"], "correct": True, "output": _gold_rationale(world, r)} for r in recs]
    bad = [{"uid": r["uid"], "correct": False, "has_answer": False, "output": "I do not know."} for r in recs]
    inserted = {r["uid"]: "Background. " + _gold_rationale(world, r) for r in recs[:5]}
    rows = sx.item_rows("m", good, recs, world, inserted)
    assert all(i["facts_in_output"] == 1.0 for i in rows)
    assert [i["facts_in_knowledge"] for i in rows[:5]] == [1.0] * 5 and rows[5]["facts_in_knowledge"] == 0.0
    assert all(i["facts_in_output"] == 0.0 and not i["has_answer"] for i in sx.item_rows("m", bad, recs, world))
    for r, i in zip(recs, rows):
        assert i["min_exposure"] == min(r["meta"]["fact_exposures"]) >= 1
        assert i["hops"] == len(r["meta"]["facts"]) and i["mc"] == bool(r["options"])
    multi = next(r for r in recs if len(r["meta"]["facts"]) >= 2)
    first_fact_only = world.facts[multi["meta"]["facts"][0]]
    assert sx.facts_stated(first_fact_only.upper(), multi, world) == 1  # case-insensitive, counts each fact
    with pytest.raises(DataError, match="not among the records"):
        sx.item_rows("m", [{"uid": "synth/x/1", "correct": True}], recs, world)
    with pytest.raises(DataError, match="not a synth record"):
        sx.item_features({"uid": "bbh/x/1", "meta": {}})


def test_accuracy_by_and_paired_differences():
    items = []
    for i in range(40):
        split = "test" if i < 20 else "ood"
        items.append({"method": "std", "uid": f"u{i}", "split": split, "hops": 1 + i % 3, "correct": i % 4 == 0})
        items.append({"method": "kb", "uid": f"u{i}", "split": split, "hops": 1 + i % 3, "correct": i % 2 == 0})
    acc = sx.accuracy_by(items, ["split"])
    got = {(r.method, r.split): r.accuracy for r in acc.itertuples()}
    assert got == {("std", "test"): 0.25, ("kb", "test"): 0.5, ("std", "ood"): 0.25, ("kb", "ood"): 0.5}
    assert (acc.ci_low <= acc.accuracy).all() and (acc.accuracy <= acc.ci_high).all()
    diff = sx.paired_vs(items, "std")
    assert list(diff.split) == ["test", "ood"] and (diff["diff"] == 0.25).all() and (diff.n == 20).all()
    with pytest.raises(ConfigError, match="reference"):
        sx.paired_vs(items, "nesycd")


def test_markdown_table():
    md = sx.markdown_table([{"a": 1, "b": "x|y"}, {"a": None}], ["a", "b"])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "|  |  |"]


def test_floors_chance_and_cooccurrence(world, bench, train_rows):
    recs = sx.eval_records(bench)
    chance = sx.chance_rows(recs)
    assert {c["expected"] for c in chance if c["mc"]} == {0.25}
    assert {c["expected"] for c in chance if not c["mc"]} == {0.0}
    heur = sx.cooccurrence_baseline(train_rows, recs, world, seed=3)
    assert [h["uid"] for h in heur] == [r["uid"] for r in recs if r["options"]]
    assert heur == sx.cooccurrence_baseline(train_rows, recs, world, seed=3)
    # a crafted case: only the gold option ever appears next to the asked name
    rec = next(r for r in recs if r["task"] == "synth_relation")
    person = rec["meta"]["params"]["person"]
    gold = rec["meta"]["answer_text"]
    fake_train = [{"uid": "t1", "rationale": f"{gold} is the mentor of {person}. Therefore, the answer is (A)."}]
    [h] = sx.cooccurrence_baseline(fake_train, [rec], world)
    assert h["correct"] and h["score"] == 1 and h["tied"] == 1
    with pytest.raises(DataError, match="rationale"):
        sx.cooccurrence_baseline([{"uid": "t"}], [rec], world)


def _kb(sp_result, train, teacher):
    from nesylib.knowledge.kb import build_kb
    from nesylib.methods.nesycd import demonstrations_from_eval

    errors, corrects = demonstrations_from_eval(train, sp_result)
    return build_kb(errors, teacher, student_name="S_P test"), errors, corrects


def test_nesycd_kb_and_skintern_stages(world, bench, teacher, train_rows, tok):
    from nesylib.methods.compress import make_compressor
    from nesylib.methods.curriculum import Schedule

    from nesylib.evaluation.evaluate import EvalResult

    train = bench["train"]
    sp_rows = [{"uid": r["uid"], "prompt": prompts.std(r),
                "output": (train_rows[i]["rationale"] if i % 2 else "Therefore, the answer is 0.")}
               for i, r in enumerate(train)]
    kb, errors, corrects = _kb(EvalResult(sp_rows, {}, {}), train, teacher)
    assert len(errors) == len(kb) == len(train) // 2 and len(corrects) == len(train) - len(train) // 2
    entry = kb.entry_for(errors[0]["uid"])
    rec = errors[0]["record"]
    assert all(world.facts[f] in entry["summary"] for f in rec["meta"]["facts"])  # the teacher names the facts
    with pytest.raises(DataError, match="no output"):
        _kb(EvalResult(sp_rows[1:], {}, {}), train, teacher)

    from nesylib.knowledge.writer import generate_knowledge

    knowledge, failures = generate_knowledge(train, teacher, max_attempts=1)
    assert not failures
    from nesylib.methods.compress import compress_stages
    from nesylib.methods.skintern import progressive_plan

    schedule = Schedule(T=2, max_demos=2)
    stages_k, comp = compress_stages(knowledge, schedule, make_compressor("truncate"), tok)
    plan = progressive_plan(train_rows, stages_k, schedule, 5, seed=1, tokenizer=tok, cutoff_len=1024)
    stages, reports = plan, [p.report for p in plan]
    assert [s.steps for s in stages] == [1, 1, 3] and [s.stage for s in stages] == [0, 1, 2]
    assert [r["n_demos"] for r in reports] == [2, 1, 0] and [c["requested_ratio"] for c in comp] == [1.0, 0.5, 0.0]
    assert [e.prompt for e in stages[-1].examples] == [prompts.std(r) for r in train_rows]  # D17
    fact_line = lambda uid: knowledge[uid].split("Supplementary Knowledge:\n")[1].split("\n")[0]  # noqa: E731
    assert all(fact_line(r["uid"]) in e.prompt for r, e in zip(train_rows, stages[0].examples))
    assert not any(fact_line(r["uid"]) in e.prompt for r, e in zip(train_rows, stages[-1].examples))


def test_train_and_evaluate_on_the_tiny_model(tmp_path, world, bench, train_rows, tok, tiny_model_dir):
    """A real two-step LoRA run through nesylib.methods.catalog and batched generation; logs, stored
    evaluations and analysis rows line up."""
    from nesylib.methods import catalog as mth
    from nesylib.training.engine import TrainConfig

    cfg = TrainConfig(max_steps=2, per_device_batch=2, grad_accum=1, lora_r=4, lora_alpha=8, cutoff_len=256,
                      save_steps=50, logging_steps=1)
    recs = sx.eval_records(bench, per_task=1)
    spec = sx.synth_task_spec(train_rows, tok, floor=8)

    def lab(out, **kw):
        opts = {"specs": {"synth": spec}, "max_new_tokens": 6, **kw}
        return mth.Lab(str(tiny_model_dir), cfg, tmp_path, tmp_path / out, batch_size=4, log=False, **opts)

    std = mth.plain_method(lab("nb"), "std", train_rows, {"synth": recs})
    assert len(std.result.rows) == len(recs)
    logged = [json.loads(line) for line in (tmp_path / "nb" / "eval" / "std" / "samples.jsonl").read_text().splitlines()]
    assert [r["uid"] for r in logged] == [r["uid"] for r in recs]
    assert all(r["generated_tokens"] <= 6 for r in logged)
    assert std.result.meta["specs"]["synth"]["version"] == "synth-1"
    kb_text = {r["uid"]: "Learning Summary:\n1. x\n\nSupplementary Knowledge:\n1. y" for r in recs}
    l4 = lab("nb", max_new_tokens=4)
    nes = l4.score("nesycd", std.adapter, {"synth": recs}, knowledge=lambda r: kb_text[r["uid"]])
    assert all(prompts.KB_INTRO in r["prompt"] for r in nes.rows)
    # the same student, prompts, caps and spec (06's variant equal to 08): the stored answers, copied
    again = lab("nb2", max_new_tokens=4).score("nesycd", std.adapter, {"synth": recs},
                                               knowledge=lambda r: kb_text[r["uid"]])
    assert [r["output"] for r in again.rows] == [r["output"] for r in nes.rows]
    assert (tmp_path / "nb2" / "eval" / "nesycd" / "samples.jsonl").read_bytes() == \
        (tmp_path / "nb" / "eval" / "nesycd" / "samples.jsonl").read_bytes()
    stored = sorted((std.adapter.parent / "evals").iterdir())
    # other inserted knowledge, another cap or another spec: evaluated anew (a new stored folder)
    other_text = {u: t.replace("x", "z") for u, t in kb_text.items()}
    assert sx.synth_task_spec(train_rows, tok, floor=8, margin=2.0).max_new_tokens_by_task != spec.max_new_tokens_by_task
    for know, kw in ((other_text, {"max_new_tokens": 4}), (kb_text, {"max_new_tokens": 3}),
                     (kb_text, {"max_new_tokens": None}),
                     (kb_text, {"max_new_tokens": None,
                                "specs": {"synth": sx.synth_task_spec(train_rows, tok, floor=8, margin=2.0)}})):
        lab("nbx", **kw).score("nesycd", std.adapter, {"synth": recs}, knowledge=lambda r: know[r["uid"]])
        now = sorted((std.adapter.parent / "evals").iterdir())
        assert len(now) == len(stored) + 1, kw
        stored = now
    rows = sx.item_rows("std", std.result.rows, recs, world)
    assert [r["split"] for r in rows] == [r["split"] for r in recs]
    assert all(isinstance(r["derives"], bool) for r in rows)
    with pytest.raises(ConfigError, match="method"):
        mth.plain_method(lab("x"), "kb", train_rows, {"synth": recs})
