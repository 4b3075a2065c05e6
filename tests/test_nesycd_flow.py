"""NesyCD end to end on the tiny model: S_P -> demonstrations -> KB -> S_E -> retrieval -> evaluation.

The same calls as notebooks 02 and 03, on real BBH/GSM8K train items with their replayed teacher
rationales, real LoRA training (2 steps) and real batched generation. The random tiny model answers
everything wrong, so every item becomes a KB entry through the offline derived tutor.
"""
import json

import pytest

from helpers import notebook_runner
from nesylib.methods import nesycd, prompts, students
from nesylib.data.benchmarks import load_bbh, load_gsm8k, subsample
from nesylib.methods.formats import examples_for
from nesylib.knowledge.kb import KnowledgeBase, build_kb
from nesylib.teacher.cot import replay_rationales
from nesylib.training.engine import TrainConfig

CFG = TrainConfig(lora_r=4, lora_alpha=8, max_steps=2, per_device_batch=2, grad_accum=1, cutoff_len=384,
                  save_steps=50, logging_steps=1)


@pytest.fixture(scope="module")
def train(data_dir):
    recs = subsample(load_bbh("train", tasks=["navigate", "date_understanding"]), per_task=3, seed=5)
    recs += load_gsm8k("train")[:2]
    return replay_rationales(recs).records  # the rationale dataset of notebook 01 (correct-only)


@pytest.fixture(scope="module")
def flow(tmp_path_factory, tiny_model_dir, train):
    root = tmp_path_factory.mktemp("nesycd_flow")
    base = str(tiny_model_dir)
    # 1. S_P = Std-CoT, in the shared students folder
    sp_ex = examples_for("std", train)
    sp_dir = students.student_dir(root, "std", sp_ex, CFG, base)
    sp = students.train_student("std", sp_ex, CFG, sp_dir, base)
    # 2. demonstrations: S_P on the training questions
    demo_eval, demo_dir, cached = nesycd.evaluate_cached("std", base, sp.adapter_dir, {"train": train},
                                                         sp_dir / "evals", max_new_tokens=8)
    errors, corrects = nesycd.demonstrations_from_eval(train, demo_eval)
    # 3. KB by the offline tutor, saved and reloaded
    tutor = nesycd.tutor_from_params("derived", train)
    kb = build_kb(errors, tutor, student_name="S_P tiny")
    kb.save(root / "kb.jsonl")
    kb2 = KnowledgeBase.load(root / "kb.jsonl").index("bm25")
    # 5. S_E from the base model on the D14 mix
    se_ex = nesycd.se_training_examples(train, kb2)
    se_dir = students.student_dir(root, "kb", se_ex, CFG, base)
    se = students.train_student("kb", se_ex, CFG, se_dir, base)
    return dict(root=root, base=base, sp=sp, sp_dir=sp_dir, demo_eval=demo_eval, demo_dir=demo_dir,
                demo_cached=cached, errors=errors, corrects=corrects, kb=kb, kb2=kb2, se_ex=se_ex, se_dir=se_dir,
                se=se)


def test_s_p_and_demonstrations(flow, train):
    assert (flow["sp"].adapter_dir / "adapter_model.safetensors").is_file()
    assert flow["sp"].metrics["steps"] == 2
    assert not flow["demo_cached"] and (flow["demo_dir"] / "samples.jsonl").is_file()
    errors, corrects = flow["errors"], flow["corrects"]
    assert len(errors) + len(corrects) == len(train) and len(errors) > 0
    rows = {r["uid"]: r for r in flow["demo_eval"].rows}
    for d in errors:
        assert d["question"] == prompts.std(d["record"]) == rows[d["uid"]]["prompt"]  # P-STD on train questions
        assert d["stu_right_score"] == 0 and not rows[d["uid"]]["correct"]


def test_demonstrations_are_reused_without_generating(flow, train, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("evaluate_student must not run for a stored evaluation")

    monkeypatch.setattr(students, "evaluate_student", boom)
    again, folder, cached = nesycd.evaluate_cached("std", flow["base"], flow["sp"].adapter_dir, {"train": train},
                                                   flow["sp_dir"] / "evals", max_new_tokens=8)
    assert cached and folder == flow["demo_dir"]
    assert again.rows == flow["demo_eval"].rows and again.summary == json.loads(json.dumps(flow["demo_eval"].summary))
    # another cap is another evaluation
    with pytest.raises(AssertionError, match="must not run"):
        nesycd.evaluate_cached("std", flow["base"], flow["sp"].adapter_dir, {"train": train},
                               flow["sp_dir"] / "evals", max_new_tokens=9)


def test_kb_artifact_round_trip(flow):
    kb, kb2, errors = flow["kb"], flow["kb2"], flow["errors"]
    assert len(kb) == len(errors) and not kb.failures  # every error item has an accepted rationale
    assert kb2.entries == kb.entries
    lines = (flow["root"] / "kb.jsonl").read_text().splitlines()
    assert len(lines) == len(kb)
    first = json.loads(lines[0])
    assert first["teacher"] == "derived-from-rationales" and first["student"] == "S_P tiny"
    assert first["summary"].startswith("Learning Summary:") and "Supplementary Knowledge:" in first["summary"]
    stats = nesycd.kb_statistics(kb, flow["errors"], flow["corrects"])
    assert stats[-1]["task"] == "all" and stats[-1]["kb_entries"] == len(kb)
    assert sum(s["kb_entries"] for s in stats[:-1]) == len(kb)


def test_s_e_is_a_new_student_on_the_d14_mix(flow, train):
    se, se_ex, kb2 = flow["se"], flow["se_ex"], flow["kb2"]
    n_err = len(kb2)
    assert len(se_ex) == n_err + 2 * len(train)
    assert all(prompts.KB_INTRO in e.prompt for e in se_ex[:n_err])
    assert flow["se_dir"] != flow["sp_dir"] and (se.adapter_dir / "adapter_model.safetensors").is_file()
    assert se.metrics["steps"] == 2


def test_retrieval_and_evaluation_with_kb_prompts(flow, data_dir):
    kb2, base = flow["kb2"], flow["base"]
    tests = subsample(load_bbh("test", tasks=["navigate"]), per_task=2, seed=1)
    # a question sharing no term with any KB entry: nothing is retrieved, the prompt is P-STD
    stray = {"uid": "bbh/web_of_lies/90001", "dataset": "bbh", "task": "web_of_lies", "split": "test",
             "question": "Zyxqv wobbleflorp?", "options": [], "answer": "Yes",
             "task_description": "Quuxify snarfblats.", "meta": {}}
    records = tests + [stray]
    knowledge = nesycd.retrieved_knowledge(records, kb2)
    assert knowledge[stray["uid"]] == prompts.NO_SUMMARY
    for r in tests:
        assert knowledge[r["uid"]] == kb2.retrieve(r, k=3)[0]["knowledge"]  # the top of 3 hits, inserted
    gated = nesycd.retrieved_knowledge(records, kb2, gate=lambda r: r["uid"] == tests[0]["uid"])
    assert gated[tests[0]["uid"]] == prompts.NO_SUMMARY and gated[tests[1]["uid"]] == knowledge[tests[1]["uid"]]

    res = students.evaluate_student("kb", base, flow["se"].adapter_dir, {"bbh": records}, flow["root"] / "eval_kb",
                                    knowledge=lambda r: knowledge[r["uid"]], max_new_tokens=6)
    logged = [json.loads(line) for line in (flow["root"] / "eval_kb" / "samples.jsonl").read_text().splitlines()]
    by_uid = {row["uid"]: row for row in logged}
    for r in tests:
        p = by_uid[r["uid"]]["prompt"]
        assert p == prompts.kb(r, knowledge[r["uid"]])
        block = f"{prompts.KB_INTRO}\n{knowledge[r['uid']].strip()}\n\nQuestion: {r['question']}\n{prompts.STEP_CUE}"
        assert p.endswith(block)
    assert by_uid[stray["uid"]]["prompt"] == prompts.std(stray)  # "No need summary." -> P-STD
    row = students.result_row("kb", res, flow["se"].metrics)
    assert row["method"] == "NesyCD" and row["bbh_n"] == 3 and 0.0 <= row["bbh"] <= 1.0


def test_kb_notebook_with_an_api_tutor(tmp_path, monkeypatch, tiny_model_dir):
    """02 against a local OpenAI-compatible server with faults: invalid analyses are retried and then
    recorded as failures, valid ones become entries, and the key is never written anywhere."""
    from fake_openai_server import FakeOpenAIServer
    from nesylib.knowledge.kb import KB_PROMPT_VERSION, QUESTION_HEADER

    key = "sk-test-" + "k3" * 16
    monkeypatch.setenv("NESYLIB_TUTOR_KEY", key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def reply(body):
        slot = body["messages"][-1]["content"].rsplit(QUESTION_HEADER, 1)[1]
        if "about gsm8k" in slot:
            return "I cannot help with this one."  # no sections: invalid on every attempt
        return "Learning Summary:\n1. Check each step.\n\nSupplementary Knowledge:\n1. A relevant fact."

    run = notebook_runner(tmp_path, tiny_model_dir, train_per_task=3, gsm8k_train=2)
    run("01_teacher_distillation.ipynb")
    with FakeOpenAIServer(api_key=key, fault_rate=0.3, seed=4, faults=("429", "500"), reply_fn=reply) as s:
        run("02_kb_construction.ipynb", train={"max_steps": 1, "per_device_batch": 2, "grad_accum": 1, "lora_r": 4,
                                               "lora_alpha": 8, "cutoff_len": 384},
            max_new_tokens=8, tutor_backend="openai", tutor_model="fake", tutor_base_url=s.base_url,
            api_key_env="NESYLIB_TUTOR_KEY")
    res = json.loads((tmp_path / "02_kb_construction" / "results.json").read_text())
    kb = KnowledgeBase.load(tmp_path / "02_kb_construction" / "kb.jsonl")
    failures = [json.loads(line) for line in
                (tmp_path / "02_kb_construction" / "kb.failures.jsonl").read_text().splitlines()]
    gsm_errors = sum(1 for f in failures if f["task"] == "gsm8k")
    assert res["failures"] == len(failures) == gsm_errors > 0
    assert all(f["attempts"] == 3 and "invalid analysis" in f["reason"] for f in failures)
    assert res["kb_entries"] == len(kb) == res["errors"] - gsm_errors
    assert all("fake" in e["teacher"] and e["prompt_version"] == KB_PROMPT_VERSION for e in kb)
    assert res["tutor_calls"]["succeeded"] >= len(kb) + 3 * gsm_errors
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert key not in p.read_text(errors="replace"), f"the API key leaked into {p}"


def test_a_tutor_that_never_parses_stops_02_and_an_empty_kb_stops_03(tmp_path, monkeypatch, tiny_model_dir):
    """No NesyCD without knowledge: 02 stops naming the tutor and the counts; with the threshold lowered
    to 0 it completes on an empty KB (every display cell copes) and 03 then refuses, naming 02's KB."""
    import papermill as pm

    from fake_openai_server import FakeOpenAIServer

    monkeypatch.setenv("NESYLIB_TUTOR_KEY", "sk-test-" + "n8" * 16)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    tiny = dict(train={"max_steps": 1, "per_device_batch": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8,
                       "cutoff_len": 384}, max_new_tokens=8)
    run = notebook_runner(tmp_path, tiny_model_dir, train_per_task=3, gsm8k_train=0)
    run("01_teacher_distillation.ipynb")
    with FakeOpenAIServer(reply_fn=lambda body: "Happy to help! The student should think harder.") as s:
        tutor = dict(tutor_backend="openai", tutor_model="fake-tutor", tutor_base_url=s.base_url,
                     api_key_env="NESYLIB_TUTOR_KEY", **tiny)
        with pytest.raises(pm.PapermillExecutionError) as err:
            run("02_kb_construction.ipynb", **tutor)
        msg = str(err.value)
        for words in ("NotEnoughKnowledge", "openai:fake-tutor", "failures", "min_knowledge_share=0.5",
                      "tutor_backend", "Happy to help!"):
            assert words in msg, (words, msg)
        assert not (tmp_path / "02_kb_construction" / "results.json").exists()
        paid = sum(s.paid.values())
        run("02_kb_construction.ipynb", min_knowledge_share=0.0, **tutor)  # on purpose: accept an empty KB
        assert sum(s.paid.values()) == paid  # the stored calls are replayed, none paid twice
    res = json.loads((tmp_path / "02_kb_construction" / "results.json").read_text())
    check = res["knowledge_check"]
    assert res["kb_entries"] == 0 and res["errors"] > 0
    assert (check["items"], check["with_knowledge"], check["failures"]) == (res["errors"], 0, res["errors"])
    assert check["teacher"] == "openai:fake-tutor" and check["first_unparseable_reply"].startswith("Happy to help!")
    with pytest.raises(pm.PapermillExecutionError) as err:
        run("03_nesycd_training.ipynb", **tiny)
    msg = str(err.value)
    for words in ("NotEnoughKnowledge", str(tmp_path / "02_kb_construction" / "kb.jsonl"), "openai:fake-tutor",
                  f"{res['errors']} errors", "02_kb_construction"):
        assert words in msg, (words, msg)
