"""The evaluation runner: task specs, sample logs, scoring, CasCoD two-stage inference, LoRA merging."""
from __future__ import annotations

import json

import pytest
import torch

from nesylib.methods import prompts
from nesylib.errors import ConfigError, DataError
from nesylib.evaluation.evaluate import (BBH_MAX_NEW_TOKENS, GSM8K_MAX_NEW_TOKENS, TASK_SPECS, TaskSpec,
                                         cap_from_targets, evaluate, get_task_spec, merge_lora)
from nesylib.generation.generate import generate_batch
from nesylib.generation.stopping import GenOutput

LOG_KEYS = {"uid", "dataset", "task", "method", "prompt", "output", "scored_output", "answer", "gold", "correct",
            "correct_strict", "has_answer", "well_formed", "prompt_tokens", "generated_tokens", "stopped_by",
            "max_new_tokens"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: two spinning OpenMP threads crawl when the shared machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from nesylib.models import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def records(data_dir):
    from nesylib.data.benchmarks import load_bbh, load_gsm8k, subsample

    bbh = subsample(load_bbh("test", tasks=["navigate", "date_understanding", "web_of_lies"]), per_task=1)
    return bbh + load_gsm8k("test")[:2]


class FakeEngine:
    """Stands in for the generator to plant known outputs; records what it was asked."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def __call__(self, model, tokenizer, prompts_, max_new_tokens, **kw):
        self.calls.append({"prompts": list(prompts_), "max_new_tokens": list(max_new_tokens), **kw})
        texts = self.texts[len(self.calls) - 1]
        return [GenOutput(t(p) if callable(t) else t, len(p), 7, "eos") for t, p in zip(texts, prompts_)]


def _fake(monkeypatch, *texts):
    eng = FakeEngine(list(texts))
    monkeypatch.setattr("nesylib.generation.engines.get_engine", lambda name: eng)
    return eng


def test_sample_log_and_summary(tiny, records, tmp_path):
    model, tok = tiny
    res = evaluate(model, tok, records, prompts.std, method="std", out_dir=tmp_path, batch_size=4,
                   max_new_tokens=12, progress=False, n_boot=50)
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(res.rows)) and len(lines) == len(records)
    direct = generate_batch(model, tok, [prompts.std(r) for r in records], max_new_tokens=12, progress=False)
    from nesylib.evaluation.extract import extract_answer, is_correct, is_correct_strict, is_well_formed

    for row, rec, out in zip(lines, records, direct):
        assert LOG_KEYS <= set(row)
        assert (row["uid"], row["dataset"], row["task"], row["gold"]) == (rec["uid"], rec["dataset"], rec["task"],
                                                                           rec["answer"])
        assert row["prompt"] == prompts.std(rec)
        assert row["prompt_tokens"] == len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        assert (row["output"], row["generated_tokens"], row["stopped_by"]) == (out.text, out.generated_tokens,
                                                                               out.stopped_by)
        assert row["answer"] == extract_answer(out.text, rec["task"])
        assert row["correct"] == is_correct(out.text, rec["answer"], rec["task"], rec["question"])
        assert row["correct_strict"] == is_correct_strict(out.text, rec["answer"], rec["task"], rec["question"])
        assert row["well_formed"] == is_well_formed(out.text)
        assert row["max_new_tokens"] == 12
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["summary"]["datasets"]["bbh"]["n"] == 3 and saved["summary"]["datasets"]["gsm8k"]["n"] == 2
    assert saved["meta"]["method"] == "std" and saved["meta"]["lora_merged"] is False
    s = res.summary
    assert sum(s["stopped_by"].values()) == len(records)
    assert s["tokens"]["generated"] == sum(r["generated_tokens"] for r in res.rows)
    from nesylib.evaluation.flops import linear_params

    n_lin = linear_params(model)
    bbh_prompt_tokens = sum(r["prompt_tokens"] for r in res.rows if r["dataset"] == "bbh")
    assert s["flops"]["bbh"]["prefill_tmacs"] == pytest.approx(n_lin * bbh_prompt_tokens / 1e12)
    assert res.samples_path == tmp_path / "samples.jsonl"


def test_scoring_of_planted_outputs(tiny, records, monkeypatch):
    """Right, wrong and answer-less outputs are scored and counted as the extractor says."""
    gold = {r["uid"]: r["answer"] for r in records}
    texts = [f"Some steps. Therefore, the answer is {gold[r['uid']]}." for r in records]
    texts[1] = "I am not sure."                                           # no answer at all
    texts[3] = "So 5 + 5 = 10. Therefore, the answer is 999999."           # wrong number
    _fake(monkeypatch, texts)
    res = evaluate(*tiny, records, prompts.std, progress=False, n_boot=50)
    assert [r["correct"] for r in res.rows] == [True, False, True, False, True]
    assert [r["correct_strict"] for r in res.rows] == [True, False, True, False, True]
    assert [r["well_formed"] for r in res.rows] == [True, False, True, True, True]
    assert res.rows[3]["answer"] == "999999"
    assert res.accuracy == pytest.approx(3 / 5)
    assert res.summary["datasets"]["bbh"]["accuracy"] == pytest.approx(2 / 3)
    assert res.summary["datasets"]["gsm8k"]["accuracy"] == pytest.approx(1 / 2)
    assert res.summary["strict"]["datasets"]["gsm8k"]["accuracy"] == pytest.approx(1 / 2)
    assert res.summary["no_answer_rate"] == pytest.approx(1 / 5)


def test_caps_follow_the_task_specs(tiny, records, monkeypatch):
    eng = _fake(monkeypatch, ["x"] * len(records))
    res = evaluate(*tiny, records, prompts.std, progress=False, n_boot=10)
    want = [BBH_MAX_NEW_TOKENS[r["task"]] if r["dataset"] == "bbh" else GSM8K_MAX_NEW_TOKENS for r in records]
    assert eng.calls[0]["max_new_tokens"] == want == [r["max_new_tokens"] for r in res.rows]
    assert eng.calls[0]["stop_strings"] == TASK_SPECS["bbh"].stop_strings
    assert res.meta["specs"]["bbh"]["version"] == TASK_SPECS["bbh"].version
    eng = _fake(monkeypatch, ["x"] * len(records))
    evaluate(*tiny, records, prompts.std, max_new_tokens=1024, progress=False, n_boot=10)  # the authors' D20 cap
    assert eng.calls[0]["max_new_tokens"] == [1024] * len(records)


def test_cascod_two_stage(tiny, records, tmp_path):
    model, tok = tiny
    res = evaluate(model, tok, records, prompts.cascod, method="cascod", two_stage=prompts.cascod, out_dir=tmp_path,
                   max_new_tokens=10, progress=False, n_boot=10)
    s1 = generate_batch(model, tok, [prompts.cascod(r) for r in records], max_new_tokens=10, progress=False)
    for row, rec, first in zip(res.rows, records, s1):
        assert row["stage1_output"] == first.text
        assert row["stage2_prompt"] == prompts.cascod(rec, first.text)
        assert row["stage2_prompt"].endswith(prompts.ANSWER_MARKER + " ")
        ntok = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in (row["prompt"], row["stage2_prompt"])]
        assert row["prompt_tokens"] == ntok
        assert len(row["generated_tokens"]) == 2 and row["generated_tokens"][0] == first.generated_tokens
        assert row["scored_output"] == f"{prompts.ANSWER_MARKER} {row['output'].lstrip()}"
    from nesylib.evaluation.flops import linear_params

    both = sum(sum(r["prompt_tokens"]) for r in res.rows if r["dataset"] == "gsm8k")
    assert res.summary["flops"]["gsm8k"]["prefill_tmacs"] == pytest.approx(linear_params(model) * both / 1e12)
    assert json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])["stage2_prompt"]


def test_cascod_scores_the_stage2_answer(tiny, records, monkeypatch):
    gold = {r["uid"]: r["answer"] for r in records}
    _fake(monkeypatch, ["A long rationale."] * len(records), [f"{gold[r['uid']]}." for r in records])
    res = evaluate(*tiny, records, prompts.cascod, two_stage=prompts.cascod, progress=False, n_boot=10)
    assert all(r["correct"] and r["well_formed"] for r in res.rows)
    assert res.rows[0]["stage1_output"] == "A long rationale."


def test_specs_and_unavailable_bb(data_dir):
    assert {"bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus", "bb"} <= set(TASK_SPECS)
    with pytest.raises(DataError, match="D4"):
        get_task_spec("bb")
    with pytest.raises(DataError, match="D4"):
        TASK_SPECS["bb"].load()
    with pytest.raises(ConfigError, match="no TaskSpec"):
        get_task_spec("mmlu")
    arc = TASK_SPECS["arc-c"].load()
    assert len(arc) == 1172 and TASK_SPECS["arc-c"].cap(arc[0]["task"]) == 320
    assert TASK_SPECS["bbh"].cap("geometric_shapes") == 1116 and TASK_SPECS["bbh"].cap("navigate") == 366
    assert cap_from_targets([100]) == 320 and cap_from_targets([300]) == 390 and cap_from_targets([]) == 320


def test_cap_table_matches_the_teacher_targets(tiny_model_dir, data_dir):
    """BBH/GSM8K caps = max(320, 1.3 x the longest filtered rationale + EOS), SmolLM2 tokens."""
    from transformers import AutoTokenizer

    from nesylib.data.benchmarks import load_bbh, load_gsm8k
    from nesylib.teacher.cot import replay_rationales

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)  # SmolLM2's tokenizer
    by_task: dict[str, list[int]] = {}
    rs = replay_rationales(load_bbh("train") + load_gsm8k("train"))
    enc = tok([r["rationale"] for r in rs.records], add_special_tokens=False)["input_ids"]
    for r, ids in zip(rs.records, enc):
        by_task.setdefault(r["task"], []).append(len(ids) + 1)
    assert {t: cap_from_targets(v) for t, v in by_task.items() if t != "gsm8k"} == BBH_MAX_NEW_TOKENS
    assert cap_from_targets(by_task["gsm8k"]) == GSM8K_MAX_NEW_TOKENS


def test_custom_spec_and_bad_input(tiny, records, monkeypatch):
    synth = [{**records[0], "uid": "mine/x/0", "dataset": "mine"}]
    with pytest.raises(ConfigError, match="no TaskSpec for dataset 'mine'"):
        evaluate(*tiny, synth, prompts.std, progress=False)
    eng = _fake(monkeypatch, ["Therefore, the answer is (A)."])
    evaluate(*tiny, synth, prompts.std, specs={"mine": TaskSpec("mine", None, 77)}, progress=False, n_boot=10)
    assert eng.calls[0]["max_new_tokens"] == [77]
    with pytest.raises(ConfigError, match="empty"):
        evaluate(*tiny, [], prompts.std)
    with pytest.raises(DataError, match="duplicate uid"):
        evaluate(*tiny, [records[0], records[0]], prompts.std)
    with pytest.raises(DataError, match="lacks key"):
        evaluate(*tiny, [{"uid": "a"}], prompts.std)
    with pytest.raises(ConfigError, match="build_prompt returned"):
        evaluate(*tiny, records, lambda r: None)
    with pytest.raises(ConfigError, match="extractor"):
        evaluate(*tiny, synth, prompts.std, specs={"mine": TaskSpec("mine", None, extractor="regex")})


def _lora(tiny_model_dir, seed=0):
    from peft import LoraConfig, get_peft_model

    from nesylib.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.eval()
    return peft_model, tok


def test_merged_lora_equals_unmerged(tiny_model_dir):
    peft_model, tok = _lora(tiny_model_dir)
    ids = tok("Question: What is 2 + 2?\nAnswer: Let's think step by step.", add_special_tokens=False,
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        unmerged = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
        merged_model = merge_lora(peft_model)
        merged = merged_model(input_ids=ids).logits
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapter changes the model ...
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)  # ... and merging keeps that change
    assert type(merged_model).__name__ == "LlamaForCausalLM"
    assert merge_lora(merged_model) is merged_model  # a plain model passes through


def test_evaluate_merges_and_restores_the_adapter(tiny_model_dir, records):
    peft_model, tok = _lora(tiny_model_dir, seed=1)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    merged = evaluate(peft_model, tok, records[:3], prompts.std, max_new_tokens=8, progress=False, n_boot=10)
    assert merged.meta["lora_merged"] is True
    after = dict(peft_model.named_parameters())
    for n, p in before.items():  # unmerged again: training could go on
        torch.testing.assert_close(after[n].detach(), p, atol=1e-6, rtol=1e-5)
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())
    plain = evaluate(peft_model, tok, records[:3], prompts.std, max_new_tokens=8, merge=False, progress=False,
                     n_boot=10)
    assert plain.meta["lora_merged"] is False
    assert [r["output"] for r in merged.rows] == [r["output"] for r in plain.rows]


def test_a_student_evaluation_shows_its_progress(tiny_model_dir, records, tmp_path, capsys):
    """Evaluating a student draws a text progress bar of the sequences generated (it ran silently before);
    ``progress=False`` keeps it quiet."""
    from nesylib.methods import students

    few = {"bbh": records[:2]}
    students.evaluate_student("std", str(tiny_model_dir), None, few, tmp_path / "a", max_new_tokens=4)
    err = capsys.readouterr().err
    assert "generate" in err and "2/2" in err
    students.evaluate_student("std", str(tiny_model_dir), None, few, tmp_path / "b", max_new_tokens=4,
                              progress=False)
    assert "generate" not in capsys.readouterr().err
