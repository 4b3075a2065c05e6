"""NesyCD glue: demonstration collection, the S_E training mix (D14) and P-KB inference prompts."""
import json

import pytest
import torch

from nesylib.methods import nesycd
from nesylib.methods import prompts
from nesylib.data.benchmarks import load_bbh, load_gsm8k, subsample
from nesylib.errors import ConfigError
from nesylib.generation.stopping import GenOutput
from nesylib.knowledge.kb import KnowledgeBase, build_kb
from nesylib.methods.nesycd import collect_demonstrations, kb_prompts, se_training_examples, strip_student_output
from nesylib.teacher.base import TeacherReply


def _wrong(rec):
    """A gold-shaped answer that is not the gold one."""
    if rec["options"] and rec["answer"].startswith("("):
        letters = [o[:3] for o in rec["options"] if o.startswith("(")]
        return next(x for x in letters if x != rec["answer"])
    if rec["task"] == "gsm8k":
        return str(int(float(rec["answer"])) + 1)
    return {"Yes": "No", "No": "Yes", "True": "False", "False": "True", "valid": "invalid",
            "invalid": "valid"}.get(rec["answer"], rec["answer"] + "x")


@pytest.fixture(scope="module")
def train(data_dir):
    """Real train items (BBH tasks of every answer kind, plus GSM8K) with a teacher-style rationale."""
    tasks = ["date_understanding", "navigate", "formal_fallacies", "object_counting", "word_sorting",
             "logical_deduction_three_objects"]
    recs = subsample(load_bbh("train", tasks=tasks), per_task=2, seed=1) + load_gsm8k("train")[:2]
    return [r | {"rationale": f"We reason about it carefully. Therefore, the answer is {r['answer']}."} for r in recs]


class AnalysisTeacher:
    name = "fake-tutor"

    def complete(self, requests):
        return [TeacherReply(text=f"Learning Summary:\n1. Advice for {r.uid}.\n\nSupplementary Knowledge:\n"
                                  f"1. Facts for {r.record['task']}.") for r in requests]


def test_strip_student_output():
    q = "What is 2 + 3?"
    prompt = f"Intro.\n\nQuestion: {q}\nAnswer: Let's think step by step. "
    assert strip_student_output(prompt + "2 + 3 = 5. Therefore, the answer is 5.", prompt, q) == \
        "2 + 3 = 5. Therefore, the answer is 5."
    assert strip_student_output(f"Question: {q}\nAnswer: It is 5.", prompt, q) == "It is 5."
    assert strip_student_output("Rationale: add them. Therefore, the answer is 5.", prompt, q) == \
        "add them. Therefore, the answer is 5."
    assert strip_student_output("  We add. Answer: 5", prompt, q) == "We add. Answer: 5"  # only a leading label


def test_collect_demonstrations_scores_with_the_comparator(train):
    prompts_ = [prompts.std(r) for r in train]
    outputs = []
    for i, r in enumerate(train):
        ans = r["answer"] if i % 3 else _wrong(r)  # every third item is wrong
        text = f"Some steps. Therefore, the answer is {ans}."
        if i == 1:
            text = prompts_[i] + text  # an engine that echoes the prompt
        if i == 2:
            text = GenOutput(text="Answer: " + text, prompt_tokens=1, generated_tokens=1, stopped_by="eos")
        outputs.append(text)
    errors, corrects = collect_demonstrations(train, outputs, prompts_)
    assert [e["uid"] for e in errors] == [r["uid"] for i, r in enumerate(train) if i % 3 == 0]
    assert len(errors) + len(corrects) == len(train)
    assert {e["stu_right_score"] for e in errors} == {0} and {c["stu_right_score"] for c in corrects} == {1}
    by_uid = {d["uid"]: d for d in errors + corrects}
    for i, r in enumerate(train):
        d = by_uid[r["uid"]]
        assert d["record"] is r and d["question"] == prompts_[i]
        assert d["stu_response"].startswith("Some steps. Therefore, the answer is")
    with pytest.raises(Exception, match="align"):
        collect_demonstrations(train, outputs[:-1], prompts_)


@pytest.fixture(scope="module")
def kb_and_errors(train):
    prompts_ = [prompts.std(r) for r in train]
    outputs = [f"Hmm. Therefore, the answer is {_wrong(r) if i % 2 == 0 else r['answer']}."
               for i, r in enumerate(train)]
    errors, _ = collect_demonstrations(train, outputs, prompts_)
    return build_kb(errors, AnalysisTeacher(), student_name="s_p"), errors


def test_se_training_examples_composition(train, kb_and_errors):
    kb, errors = kb_and_errors
    n, n_err = len(train), len(errors)
    assert n_err == len(kb) == (n + 1) // 2
    ex = se_training_examples(train, kb)
    assert len(ex) == n_err + 2 * n
    part_a, part_b, part_c = ex[:n_err], ex[n_err:n_err + n], ex[n_err + n:]
    err_recs = [r for r in train if kb.entry_for(r["uid"])]
    for e, r in zip(part_a, err_recs):
        summary = kb.entry_for(r["uid"])["summary"]
        assert e.prompt == prompts.kb(r, summary) and e.uid == r["uid"]
        assert f"\n\n{prompts.KB_INTRO}\n{summary}\n\nQuestion: {r['question']}\n{prompts.STEP_CUE}" in e.prompt
        assert e.target == r["rationale"]
    assert [(e.prompt, e.target) for e in part_b] == [(prompts.std(r), r["rationale"]) for r in train]
    assert [(e.prompt, e.target) for e in part_c] == [(prompts.ft(r), r["answer"]) for r in train]
    assert {e.group for e in ex} == {"main"}  # one CE loss with equal weight (D14)
    # items outside the given train list are ignored even if the KB has them
    assert len(se_training_examples(train[:4], kb)) == len([r for r in train[:4] if kb.entry_for(r["uid"])]) + 8


def test_se_training_examples_leave_one_out_and_ablation(train, kb_and_errors):
    kb, errors = kb_and_errors
    n_err = len(errors)
    loo = se_training_examples(train, kb, own_summary=False, loo_retrieval=True)[:n_err]
    for e in loo:
        own = kb.entry_for(e.uid)["summary"]
        assert own not in e.prompt
        assert kb.knowledge_for(next(r for r in train if r["uid"] == e.uid), exclude_self=True) in e.prompt
    assert len(se_training_examples(train, kb, own_summary=False)) == 2 * len(train)
    with pytest.raises(ConfigError, match="not both"):
        se_training_examples(train, kb, own_summary=True, loo_retrieval=True)


def test_kb_prompts(train, kb_and_errors):
    kb, errors = kb_and_errors
    err = errors[0]["record"]
    test_like = dict(err, uid="bbh/x/999")  # the same question as a KB entry
    p = kb_prompts([test_like], kb)[0]
    assert p == prompts.kb(test_like, kb.entry_for(err["uid"])["summary"])
    assert p.index(prompts.KB_INTRO) < p.index("Learning Summary:") < p.index("\n\nQuestion: ")
    # empty KB, or a gate that says the student is confident: plain P-STD
    assert kb_prompts([test_like], KnowledgeBase()) == [prompts.std(test_like)]
    assert kb_prompts([test_like], kb, gate=lambda r: True) == [prompts.std(test_like)]
    two = kb_prompts([test_like], kb, k_insert=2)[0]
    hits = kb.retrieve(test_like, k=3)
    assert hits[0]["knowledge"] + "\n" + hits[1]["knowledge"] in two


# ------------------------------------------------------------------------------- notebook glue
def test_tutor_from_params(train):
    from nesylib.teacher.base import TeacherRequest
    from nesylib.teacher.derived import DerivedKnowledgeTeacher

    tutor = nesycd.tutor_from_params("derived", train)
    assert isinstance(tutor, DerivedKnowledgeTeacher)
    reply = tutor.complete([TeacherRequest(prompt="p", kind="error_analysis", uid=train[0]["uid"],
                                           record=train[0])])[0]
    assert reply.ok and reply.text.startswith("Learning Summary:")
    with pytest.raises(ConfigError, match="tutor_backend must be one of"):
        nesycd.tutor_from_params("replay", train)
    with pytest.raises(ConfigError, match="needs a model name"):
        nesycd.tutor_from_params("openai", train)


def test_kb_statistics_counts_per_task(train, kb_and_errors):
    kb, errors = kb_and_errors
    prompts_ = [prompts.std(r) for r in train]
    outputs = [f"Hmm. Therefore, the answer is {_wrong(r) if i % 2 == 0 else r['answer']}."
               for i, r in enumerate(train)]
    errors, corrects = collect_demonstrations(train, outputs, prompts_)
    kb.failures.append({"source_uid": "gsm8k/gsm8k/0", "task": "gsm8k", "reason": "x"})
    try:
        stats = {s["task"]: s for s in nesycd.kb_statistics(kb, errors, corrects)}
    finally:
        kb.failures.pop()
    for task in {r["task"] for r in train}:
        n = sum(r["task"] == task for r in train)
        n_err = sum(e["record"]["task"] == task for e in errors)
        assert stats[task]["items"] == n and stats[task]["errors"] == n_err
        assert stats[task]["kb_entries"] == sum(e["task"] == task for e in kb)
    assert stats["gsm8k"]["failures"] == 1 and stats["all"]["failures"] == 1
    assert stats["all"]["items"] == len(train) and stats["all"]["error_rate"] == round(len(errors) / len(train), 4)
    words = [len(e["summary"].split()) for e in kb]
    assert stats["all"]["summary_words_mean"] == round(sum(words) / len(words), 1)


def test_demonstrations_from_eval_aligns_by_uid(train):
    from types import SimpleNamespace

    rows = [{"uid": r["uid"], "prompt": prompts.std(r), "output": f"So. Therefore, the answer is {r['answer']}."}
            for r in reversed(train)]  # another order than the records
    errors, corrects = nesycd.demonstrations_from_eval(train, SimpleNamespace(rows=rows))
    assert not errors and [c["uid"] for c in corrects] == [r["uid"] for r in train]
    with pytest.raises(Exception, match="no output for 1 record"):
        nesycd.demonstrations_from_eval(train, SimpleNamespace(rows=rows[1:]))


def test_evaluation_key_tracks_what_changes_outputs(train, kb_and_errors, tmp_path):
    kb, _ = kb_and_errors
    sets = {"bbh": [r for r in train if r["dataset"] == "bbh"]}
    know = nesycd.retrieved_knowledge(sets["bbh"], kb)
    key = nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: know[r["uid"]])
    assert key == nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: know[r["uid"]])
    assert key != nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: prompts.NO_SUMMARY)
    assert key != nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: know[r["uid"]],
                                             max_new_tokens=10)
    assert key != nesycd.evaluation_key("kb", "smollm2-135m", None, sets, lambda r: know[r["uid"]])
    # the numeric setting: batch shape and thread count decide a matmul's last bits, so a greedy
    # near-tie may flip; a stored evaluation is not reused across them
    assert key != nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: know[r["uid"]], batch_size=32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert key != nesycd.evaluation_key("kb", "tiny-llama", None, sets, lambda r: know[r["uid"]])
    finally:
        torch.set_num_threads(threads)
    adapter = tmp_path / "s" / "adapter"
    adapter.mkdir(parents=True)
    (adapter.parent / "train_result.json").write_text(json.dumps({"fingerprint": "abc"}))
    k1 = nesycd.evaluation_key("std", "tiny-llama", adapter, sets)
    (adapter.parent / "train_result.json").write_text(json.dumps({"fingerprint": "abd"}))
    assert k1 != nesycd.evaluation_key("std", "tiny-llama", adapter, sets)


def test_retrieved_knowledge_needs_distinct_uids(train, kb_and_errors):
    kb, _ = kb_and_errors
    with pytest.raises(Exception, match="distinct uids"):
        nesycd.retrieved_knowledge([train[0], train[0]], kb)
