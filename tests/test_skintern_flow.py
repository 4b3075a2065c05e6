"""SKIntern end to end on the tiny model (notebook 04's flow) and the notebook glue in nesylib.methods.skintern.

Real BBH/GSM8K items with replayed teacher rationales, knowledge from the derived writer, self-information
compression scored by the tiny LM, seeded stage data fitted to a cutoff, one staged LoRA run, evaluation
on P-STD, and the FLOPs comparison against knowledge-augmented prompts.
"""
import pytest
from transformers import AutoConfig, AutoTokenizer

from nesylib.methods import prompts, students
from nesylib.pipeline import experiment
from nesylib.methods.compress import compress_stages, make_compressor
from nesylib.methods.curriculum import Schedule
from nesylib.errors import ConfigError
from nesylib.evaluation.flops import model_dims, prefill_macs
from nesylib.knowledge.writer import generate_knowledge
from nesylib.methods.skintern import (inference_stage_prompts, plan_table, progressive_plan, prompt_cost_table,
                                      stage_losses, training_budget)
from nesylib.teacher.cot import replay_rationales
from nesylib.teacher.derived import DerivedKnowledgeTeacher
from nesylib.training.engine import Stage, TrainConfig


@pytest.fixture(scope="module")
def train(data_dir):
    recs = experiment.select_train(["navigate", "date_understanding"], 5, 3, seed=42)
    return replay_rationales(recs, "auto").records


@pytest.fixture(scope="module")
def tests(data_dir):
    sets = experiment.select_eval({"bbh": 1, "gsm8k": 1, "arc-e": 1}, ["navigate", "date_understanding"], seed=42)
    return [r for recs in sets.values() for r in recs]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def knowledge(train):
    rationales = {r["uid"]: r["rationale"] for r in train[1:]}  # the writer knows nothing about train[0]
    return generate_knowledge(train, DerivedKnowledgeTeacher(rationales), max_attempts=2)


def test_skintern_flow_on_the_tiny_model(train, tests, tok, knowledge, tiny_model_dir, tmp_path):
    know, failures = knowledge
    assert len(train) >= 12 and set(know) == {r["uid"] for r in train[1:]}
    assert [f["uid"] for f in failures] == [train[0]["uid"]] and failures[0]["attempts"] == 2

    schedule = Schedule(T=2, max_demos=2)
    comp = make_compressor("self-info", model_name=str(tiny_model_dir))
    stages, report = compress_stages(know, schedule, comp, tokenizer=tok)
    assert [r["requested_ratio"] for r in report] == [1.0, 0.5, 0.0]
    assert report[1]["achieved_ratio"] == pytest.approx(0.5, abs=0.05) and report[2]["mean_words"] == 0

    cfg = TrainConfig(lora_r=4, lora_alpha=8, max_steps=2, per_device_batch=2, grad_accum=1, cutoff_len=384,
                      logging_steps=1, save_steps=100, lr=5e-3)
    budget = training_budget(len(train), cfg, schedule.T)
    assert budget == {"std_cot_steps": 2, "total_steps": 3, "per_stage": [1, 1, 1], "source": "train.max_steps=2",
                      "raised": True}
    plan = progressive_plan(train, stages, schedule, budget["total_steps"], seed=42, tokenizer=tok,
                            cutoff_len=cfg.cutoff_len)
    assert [p.report["n_demos"] for p in plan] == [2, 1, 0] and plan[0].report["no_knowledge"] == 1
    assert [e.prompt for e in plan[-1].examples] == [prompts.std(r) for r in train]  # the last stage is P-STD
    assert plan[0].report["prompt_tokens_mean"] > plan[1].report["prompt_tokens_mean"] > \
        plan[2].report["prompt_tokens_mean"]
    n_tok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert all(n_tok(e.prompt) + n_tok(e.target) + 1 <= cfg.cutoff_len for p in plan for e in p.examples
               if p.stage < 2)  # fitted stages fit with the target and EOS

    staged = [Stage(p.examples, p.steps, name=f"t{p.stage}") for p in plan]
    out = students.student_dir(tmp_path, "skintern", staged, cfg, str(tiny_model_dir))
    res = students.train_student("skintern", staged, cfg, out, str(tiny_model_dir))
    assert res.metrics["stage_ends"] == [1, 2, 3] and [s["name"] for s in res.metrics["stages"]] == ["t0", "t1", "t2"]
    losses = stage_losses(res.metrics)
    assert [r["loss_mean"] for r in losses] == [round(loss, 4) for _, loss in res.metrics["loss_curve"]]
    dims = model_dims(AutoConfig.from_pretrained(tiny_model_dir))
    rows = plan_table(plan, report, dims["n_linear"], losses)
    assert [r["steps"] for r in rows] == [1, 1, 1] and rows[1]["achieved_ratio"] == report[1]["achieved_ratio"]
    assert rows[2]["prefill_macs_mean"] == round(dims["n_linear"] * plan[2].report["prompt_tokens_mean"])
    assert all(r["loss_mean"] > 0 for r in rows)

    result = students.evaluate_student("skintern", str(tiny_model_dir), res.adapter_dir, {"all": tests},
                                       tmp_path / "eval", batch_size=4, max_new_tokens=6)
    assert [x["prompt"] for x in result.rows] == [prompts.std(r) for r in tests]
    row = students.result_row("skintern", result, res.metrics)
    assert row["method"] == "SKIntern" and row["items"] == len(tests)

    kard = experiment.KardKnowledge(train, know, k=3)
    stage0, rep0 = inference_stage_prompts(tests, train, know, schedule, 0, tokenizer=tok, cutoff_len=2048)
    sets = {"skintern": [x["prompt"] for x in result.rows], "kard": [prompts.kard(r, kard.test(r)) for r in tests],
            "skintern_stage0": stage0}
    costs = prompt_cost_table(sets, tok, dims, groups=[r["dataset"] for r in tests],
                              generated_tokens=[x["generated_tokens"] for x in result.rows])
    overall = {r["prompt"]: r for r in costs if r["group"] == "all"}
    # the question-only prompt's MACs are exactly what the evaluation harness counted
    assert overall["skintern"]["prefill_macs_mean"] * len(tests) == pytest.approx(row["prefill_tmacs"] * 1e12, rel=1e-6)
    assert overall["kard"]["prefill_ratio"] > 1 and overall["skintern_stage0"]["prefill_ratio"] > 1
    assert overall["skintern"]["inference_ratio"] == 1.0 and overall["kard"]["inference_flops_mean"] > \
        overall["skintern"]["inference_flops_mean"]
    assert {r["group"] for r in costs} == {"bbh", "gsm8k", "arc-e", "all"}


def test_stage_prompts_for_test_items(train, tests, tok, knowledge):
    know, _ = knowledge
    schedule = Schedule(T=2, max_demos=2)
    out, rep = inference_stage_prompts(tests, train, know, schedule, 0, seed=42)
    assert rep["items"] == len(tests) and rep["no_knowledge"] == 0
    by_q = {r["question"]: r for r in train}
    for r, p in zip(tests, out):
        assert p.startswith(prompts.std(r).split("\n\n")[0]) and p.endswith(prompts.std(r).split("\n\n", 1)[1])
        demo_qs = [q for q in by_q if f"Question: {q}\nAnswer: " in p]
        if r["dataset"] == "arc-e":  # no ARC train items: no demonstrations
            assert demo_qs == []
        else:  # two demos of the same task, each answered with its own teacher rationale
            assert len(demo_qs) == 2 and all(by_q[q]["task"] == r["task"] for q in demo_qs)
            assert all(f"Question: {q}\nAnswer: {by_q[q]['rationale']}" in p for q in demo_qs)
    assert rep["no_demos"] == sum(r["dataset"] == "arc-e" for r in tests)
    # the nearest train item's knowledge (the whole text at stage 0), found by BM25 on task + question
    nav = next((r, p) for r, p in zip(tests, out) if r["task"] == "navigate")
    assert any(k in nav[1] for u, k in know.items() if "navigate" in u)
    bare, _ = inference_stage_prompts(tests, train, know, schedule, 2)
    assert bare == [prompts.std(r) for r in tests]
    fitted, rep_fit = inference_stage_prompts(tests, train, know, schedule, 0, tokenizer=tok, cutoff_len=300)
    assert rep_fit["items_shortened"] > 0
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 300 for p, r in zip(fitted, tests)
               if len(tok(prompts.std(r), add_special_tokens=False)["input_ids"]) <= 300)
    with pytest.raises(ConfigError, match="tokenizer"):
        inference_stage_prompts(tests, train, know, schedule, 0, cutoff_len=300)


def test_training_budget_rules():
    cfg = TrainConfig(epochs=2, per_device_batch=8, grad_accum=1)
    assert training_budget(254, cfg, 6) == {"std_cot_steps": 64, "total_steps": 64,
                                            "per_stage": [9, 9, 9, 9, 9, 9, 10], "source": "train.epochs=2",
                                            "raised": False}
    assert training_budget(254, cfg, 3, epochs=1)["per_stage"] == [8, 8, 8, 8]
    assert training_budget(254, TrainConfig(max_steps=5, epochs=2), 6)["total_steps"] == 7
    with pytest.raises(ConfigError, match="epochs_budget"):
        training_budget(254, cfg, 6, epochs=0)
    with pytest.raises(ConfigError, match="n_items"):
        training_budget(0, cfg, 6)


def test_stage_losses_assign_logged_points_to_stages():
    metrics = {"stage_ends": [4, 8, 10], "loss_curve": [[1, 3.0], [3, 2.0], [5, 1.5], [8, 1.0], [10, 0.5]]}
    rows = stage_losses(metrics)
    assert [(r["first_step"], r["last_step"], r["logged"]) for r in rows] == [(1, 4, 2), (5, 8, 2), (9, 10, 1)]
    assert [r["loss_mean"] for r in rows] == [2.5, 1.25, 0.5] and rows[0]["loss_first"] == 3.0
    empty = stage_losses({"stage_ends": [2, 4], "loss_curve": [[1, 2.0]]})
    assert empty[1]["loss_mean"] is None and empty[1]["logged"] == 0
    with pytest.raises(ConfigError, match="stage_ends"):
        stage_losses({"loss_curve": []})


def test_cost_table_and_plan_table_errors(tok, train, knowledge):
    dims = {"n_linear": 1000, "n_layers": 2, "n_heads": 2, "head_dim": 4}
    rows = prompt_cost_table({"skintern": ["a b", "c"], "other": ["a b c d", "a b c d e f"]}, tok, dims)
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    ref = prefill_macs(1000, n("a b")) + prefill_macs(1000, n("c"))
    other = prefill_macs(1000, n("a b c d")) + prefill_macs(1000, n("a b c d e f"))
    assert [r["group"] for r in rows] == ["all", "all"] and "inference_ratio" not in rows[0]
    assert rows[1]["prefill_ratio"] == round(other / ref, 3) and rows[1]["prefill_macs_mean"] == round(other / 2)
    with pytest.raises(ConfigError, match="reference"):
        prompt_cost_table({"other": ["a"]}, tok, dims)
    with pytest.raises(ConfigError, match="one per item"):
        prompt_cost_table({"skintern": ["a"], "other": ["a", "b"]}, tok, dims)
    with pytest.raises(ConfigError, match="one entry per item"):
        prompt_cost_table({"skintern": ["a"]}, tok, dims, generated_tokens=[1, 2])
    know, _ = knowledge
    stages, report = compress_stages(know, Schedule(T=2, max_demos=1), make_compressor("truncate"))
    plan = progressive_plan(train, stages, Schedule(T=2, max_demos=1), 3)  # no tokenizer: no token counts
    assert [r["achieved_ratio"] for r in plan_table(plan, report)] == [1.0, report[1]["achieved_ratio"], 0.0]
    with pytest.raises(ConfigError, match="tokenizer"):
        plan_table(plan, report, n_linear_params=1000)
