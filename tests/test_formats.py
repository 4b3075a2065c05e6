"""Student training formats: the Examples each method builds, and a short real training run per
format on the tiny model (loss finite, every trainable parameter changed)."""
import math

import pytest
import torch
from safetensors.torch import load_file

from nesylib.methods import prompts
from nesylib.data.benchmarks import load_bbh
from nesylib.errors import ConfigError, DataError
from nesylib.methods.formats import TRAIN_METHODS, examples_for

def _codex_records(task: str, n: int) -> list[dict]:
    """Train records with their replayed Codex CoT (D2 rewrite, correct ones only)."""
    from nesylib.teacher.cot import replay_rationales

    out = replay_rationales(load_bbh("train", tasks=[task])).records[:n]
    assert len(out) == n, f"fewer than {n} usable Codex rationales in {task}"
    return out


@pytest.fixture(scope="module")
def records(data_dir):
    return _codex_records("date_understanding", 3) + _codex_records("navigate", 3)


@pytest.fixture(scope="module")
def knowledge(records):
    passages = {r["uid"]: [f"Doc {i} . Fact {i} about {r['task']} is useful here." for i in range(2)]
                for r in records}
    summaries = {r["uid"]: f"1. Read the options of {r['task']} carefully." for r in records}
    return passages, summaries


def _for(method, records, knowledge):
    passages, summaries = knowledge
    kn = passages if method in ("kard", "kaft") else summaries if method == "kb" else None
    return examples_for(method, records, kn)


def test_single_task_formats(records, knowledge):
    r = records[0]
    passages, summaries = knowledge
    std, ft, kard, kaft, kb = (_for(m, records, knowledge)[0] for m in ("std", "ft", "kard", "kaft", "kb"))
    assert (std.prompt, std.target, std.group, std.uid) == (prompts.std(r), r["rationale"], "main", r["uid"])
    assert (ft.prompt, ft.target) == (prompts.ft(r), r["answer"])
    assert kard.prompt == prompts.kard(r, passages[r["uid"]]) and kard.target == r["rationale"]
    assert "Fact 1 about date_understanding" in kard.prompt
    assert kaft.prompt == prompts.kaft(r, passages[r["uid"]]) and kaft.target == r["answer"]
    assert kb.prompt == prompts.kb(r, summaries[r["uid"]]) and summaries[r["uid"]] in kb.prompt
    # an empty summary reduces P-KB to P-STD (NesyCD's no-knowledge fallback)
    assert examples_for("kb", [r], {r["uid"]: ""})[0].prompt == prompts.std(r)


def test_multi_task_formats(records):
    r = records[0]
    head, answer = prompts.split_rationale(r["rationale"])
    assert answer == r["answer"] + "." and prompts.ANSWER_MARKER not in head

    rat, ans = examples_for("mt-cot", [r])
    assert (rat.group, ans.group, rat.uid, ans.uid) == ("rationale", "answer", r["uid"], r["uid"])
    assert rat.prompt.endswith("[Explanation Generation]: ") and rat.target == r["rationale"]
    assert ans.prompt.endswith("[Answer Prediction]: ") and ans.target == answer

    rat, ans = examples_for("mt-re", [r])
    assert rat.prompt.endswith("\nRationale: ") and rat.target == head
    assert ans.prompt.endswith("\nAnswer: ") and ans.target == answer

    s1, s2 = examples_for("cascod", [r])
    assert (s1.prompt, s1.target) == (prompts.cascod(r), head)
    assert s2.prompt == prompts.cascod(r, head) and s2.prompt.endswith(prompts.ANSWER_MARKER + " ")
    assert head in s2.prompt and s2.target == answer


def test_all_methods_count_and_no_eos(records, knowledge):
    for m in TRAIN_METHODS:
        ex = _for(m, records, knowledge)
        per = 2 if m in ("mt-cot", "mt-re", "cascod") else 1
        assert len(ex) == per * len(records), m
        assert all(e.target and "<|im_end|>" not in e.target and e.target == e.target.strip() for e in ex), m


def test_bad_input_is_named(records, knowledge):
    r = dict(records[0], rationale="We reason a lot. So the answer is (A).")
    with pytest.raises(DataError, match=r["uid"]):
        examples_for("std", [r])
    with pytest.raises(DataError, match="nothing follows"):
        examples_for("mt-re", [dict(records[0], rationale="Reasoning. Therefore, the answer is")])
    with pytest.raises(DataError, match="rationale"):
        examples_for("mt-cot", [{k: v for k, v in records[0].items() if k != "rationale"}])
    with pytest.raises(ConfigError, match="inter"):
        examples_for("inter", records)
    with pytest.raises(ConfigError, match="knowledge"):
        examples_for("kard", records)
    with pytest.raises(DataError, match=records[1]["uid"]):
        examples_for("kaft", records, {records[0]["uid"]: []})
    with pytest.raises(DataError, match="summary string"):
        examples_for("kb", records[:1], {records[0]["uid"]: ["a passage"]})


@pytest.mark.parametrize("method", TRAIN_METHODS)
def test_each_format_trains(method, records, knowledge, tiny_model_dir, tmp_path):
    """trl's pattern: a few real steps per format; loss finite and every trainable tensor moved."""
    from nesylib.training.backends import _load_trainable
    from nesylib.training.engine import TrainConfig, train_lora

    cfg = TrainConfig(lora_r=4, lora_alpha=8, max_steps=3, per_device_batch=2, grad_accum=1, warmup_ratio=0.0,
                      lr=1e-2, cutoff_len=256, logging_steps=1, save_steps=100)
    before = {k: v.detach().clone() for k, v in
              _load_trainable(str(tiny_model_dir), cfg, "hf", None)[0].named_parameters() if v.requires_grad}
    res = train_lora(str(tiny_model_dir), _for(method, records, knowledge), cfg, tmp_path / method)
    losses = [loss for _, loss in res.metrics["loss_curve"]]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    after = load_file(res.adapter_dir / "adapter_model.safetensors")
    assert len(after) == len(before) > 0
    for name, old in before.items():
        key = name.replace(".default", "")
        assert key in after, key
        assert not torch.equal(after[key], old), f"{method}: {key} did not change"
    if method in ("mt-cot", "mt-re", "cascod"):
        assert set(res.metrics["group_loss_curves"]) == {"rationale", "answer"}
