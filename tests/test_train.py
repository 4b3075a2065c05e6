"""The LoRA engine: label masks, truncation, the D18 multi-task loss, exact resume, stages,
init_adapter, merging."""
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback

from nesylib.errors import ConfigError
from nesylib.methods.prompts import Example
from nesylib.training.backends import pick_backend
from nesylib.training.loss import group_weighted_ce
from nesylib.training.sft_data import ItemCollator, encode_items, encode_pair, item_order
from nesylib.training.engine import Stage, TrainConfig, load_student, merge_adapter, steps_for, train_lora


def _cfg(**kw):
    base = dict(lora_r=4, lora_alpha=8, max_steps=3, per_device_batch=2, grad_accum=1, warmup_ratio=0.0,
                lr=5e-3, cutoff_len=128, logging_steps=1, save_steps=100)
    return TrainConfig(**{**base, **kw})


def _std(n, offset=0):
    return [Example(f"Question {i}: what is {i} plus {i}?\nAnswer: Let's think step by step. ",
                    f"{i} plus {i} is {2 * i}. Therefore, the answer is {2 * i}.", "main", f"t/x/{i}")
            for i in range(offset, offset + n)]


def _mt(n):
    out = []
    for i in range(n):
        out += [Example(f"Q{i}: add {i} and {i}.\n[Explanation Generation]: ",
                        f"Adding {i} to itself doubles it. Therefore, the answer is {2 * i}.", "rationale", f"t/m/{i}"),
                Example(f"Q{i}: add {i} and {i}.\n[Answer Prediction]: ", f"{2 * i}.", "answer", f"t/m/{i}")]
    return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_label_mask_on_real_batch(tok):
    ex = _std(2) + [Example("Short prompt: ", "a much longer target text than the prompt", "main", "t/x/9")]
    items, stats = encode_items(tok, ex, ["main"], cutoff_len=512)
    assert stats.as_dict() == {"sequences": 3, "target_truncated": 0, "prompt_truncated": 0}
    batch = ItemCollator(tok.pad_token_id)([it for it in items])
    for row, e in enumerate(ex):
        p = tok(e.prompt, add_special_tokens=False)["input_ids"]
        t = tok(e.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p) + len(t)
        assert batch["input_ids"][row, :n].tolist() == p + t  # separate tokenisation, no BOS (D11)
        labels = batch["labels"][row]
        assert (labels[: len(p)] == -100).all()                     # prompt tokens carry no loss
        assert labels[len(p):n].tolist() == t                       # every response token does, EOS included
        assert labels[n - 1] == tok.eos_token_id
        assert (labels[n:] == -100).all() and batch["attention_mask"][row].sum() == n  # padding
    assert tok.decode(batch["labels"][2][batch["labels"][2] != -100]).startswith(ex[2].target)


def test_truncation_rules_and_counts(tok):
    ids, labels, kind = encode_pair([1, 2, 3], [4, 5, 6, 7], eos_id=0, cutoff_len=6)
    assert (ids, labels, kind) == ([1, 2, 3, 4, 5, 6], [-100] * 3 + [4, 5, 6], "target")  # tail and EOS cut
    ids, labels, kind = encode_pair(list(range(10, 20)), [4, 5], eos_id=0, cutoff_len=8)
    # prompt alone over the cutoff: its left part goes, cutoff // 4 = 2 target tokens stay
    assert (ids, labels, kind) == (list(range(14, 20)) + [4, 5], [-100] * 6 + [4, 5], "prompt")
    ids, labels, kind = encode_pair([1, 2], [3], eos_id=0, cutoff_len=8)
    assert kind is None and labels == [-100, -100, 3, 0]
    long_target = Example("P: ", " ".join(["word"] * 200), "main", "a")
    long_prompt = Example(" ".join(["word"] * 200), "short answer", "main", "b")
    _, stats = encode_items(tok, [long_target, long_prompt] + _std(2), ["main"], cutoff_len=64)
    assert stats.as_dict() == {"sequences": 4, "target_truncated": 1, "prompt_truncated": 1}


def test_mt_loss_equals_weighted_parts(tiny_model_dir, tok, tmp_path):
    """The engine's loss on a stacked MT batch == 0.7 * CE(rationales) + 0.3 * CE(answers),
    each a token mean, computed by hand with the model's own loss on separate batches."""
    from transformers import TrainingArguments

    from nesylib.training.backends import _load_trainable
    from nesylib.training.engine import _trainer_class

    cfg = _cfg()
    model, _ = _load_trainable(str(tiny_model_dir), cfg, "hf", None)
    groups = ["answer", "rationale"]
    items, _ = encode_items(tok, _mt(3), groups, cutoff_len=128)
    coll = ItemCollator(tok.pad_token_id)
    trainer = _trainer_class()(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    by_hand = {}
    with torch.no_grad():
        for g, name in enumerate(groups):
            part = coll([[s for it in items for s in it if s.group == g]])
            by_hand[name] = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"],
                                  labels=part["labels"]).loss
        expected = 0.7 * by_hand["rationale"] + 0.3 * by_hand["answer"]
        for slice_logits in (True, False):
            trainer.setup(None, groups, [0.3, 0.7], slice_logits)
            batch = coll(items)
            assert batch["group_ids"].tolist() == [1, 0, 1, 0, 1, 0]  # each item's two sequences together
            got = trainer.compute_loss(model, batch)
            assert torch.allclose(got, expected, atol=1e-5), (slice_logits, got, expected)
    assert not torch.allclose(by_hand["rationale"], by_hand["answer"])  # the weights matter
    # group_weighted_ce on its own: one group with weight 1 is the plain token mean
    logits = torch.randn(2, 3, 5)
    tg = torch.tensor([[1, -100, 2], [3, 4, -100]])
    loss, parts = group_weighted_ce(logits, tg, torch.tensor([0, 0]), torch.tensor([1.0]))
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tg.flatten(), ignore_index=-100)
    assert torch.allclose(loss, ref) and torch.allclose(parts[0], ref)


class _Kill(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"simulated kill after step {self.at}")


def test_resume_after_kill_matches_uninterrupted(tiny_model_dir, tmp_path):
    # dropout on and MT items: resume must restore the RNG, the data order and the optimizer
    cfg = _cfg(max_steps=5, save_steps=2, lora_dropout=0.1, warmup_ratio=0.2)
    ex = _mt(5)
    full = train_lora(str(tiny_model_dir), ex, cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model_dir), ex, cfg, tmp_path / "killed", callbacks=[_Kill(3)])
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    with pytest.raises(ConfigError, match="different inputs"):
        train_lora(str(tiny_model_dir), ex, _cfg(max_steps=5, save_steps=2, lr=1e-3), tmp_path / "killed")
    resumed = train_lora(str(tiny_model_dir), ex, cfg, tmp_path / "killed")
    assert resumed.metrics["resumed_from_step"] == 2 and not list((tmp_path / "killed").glob("checkpoint-*"))
    a = load_file(full.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert [s for s, _ in resumed.metrics["loss_curve"]] == [1, 2, 3, 4, 5]
    for (_, x), (_, y) in zip(full.metrics["loss_curve"], resumed.metrics["loss_curve"]):
        assert math.isclose(x, y, rel_tol=1e-4)
    assert full.metrics["tokens_seen"] == resumed.metrics["tokens_seen"] > resumed.metrics["tokens_processed_this_process"]
    again = train_lora(str(tiny_model_dir), ex, cfg, tmp_path / "killed")  # finished: returned, not retrained
    assert again.cached and again.metrics["fingerprint"] == resumed.metrics["fingerprint"]


def test_stages_share_one_schedule_and_reports(tiny_model_dir, tmp_path):
    assert steps_for(33, 10, TrainConfig()) == 11
    order = item_order(4, 10, seed=42, stage=0)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [0, 1, 2, 3]  # whole passes first
    assert order == item_order(4, 10, seed=42, stage=0) != item_order(4, 10, seed=43, stage=0)

    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12]
    plain = item_order(12, 24, seed=42, stage=1)
    grouped = item_order(12, 24, seed=42, stage=1, lengths=lengths, batch_size=2)  # 2 passes of 6 batches
    assert sorted(grouped) == sorted(plain) and grouped == item_order(12, 24, 42, 1, lengths, 2)
    for p in (grouped[:12], grouped[12:]):
        assert sorted(p) == list(range(12))  # each pass is a permutation: no item twice in a batch
        batches = [sorted(lengths[j] for j in p[b:b + 2]) for b in range(0, 12, 2)]
        assert sorted(batches) == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]]  # neighbours by length
    assert [lengths[j] for j in grouped[:12]] != sorted(lengths, reverse=True)  # batch order is shuffled
    assert grouped[:12] != grouped[12:]
    with pytest.raises(ConfigError, match="TrainConfig.lora_dropout"):
        TrainConfig(lora_dropout=1.5).validate()
    with pytest.raises(ConfigError, match="no weight for group"):
        train_lora(str(tiny_model_dir), [Example("p", "t", "aux", "u")], _cfg(), tmp_path / "bad")

    long = [Example("Q: ", " ".join(["word"] * 300), "main", "long")]
    stages = [Stage(_std(4) + long, steps=2, name="t0"), Stage(_std(4, offset=10), steps=2, name="t1")]
    res = train_lora(str(tiny_model_dir), stages, _cfg(warmup_ratio=0.25), tmp_path / "staged")
    m = res.metrics
    assert m["steps"] == 4 and m["stage_ends"] == [2, 4] and [s["items"] for s in m["stages"]] == [5, 4]
    assert m["truncation"]["target_truncated"] == 1 and m["backend"] == pick_backend("auto") == "hf"
    assert m["tokens_seen"] == m["tokens_processed_this_process"] > 0 and m["warmup_steps"] == 1
    assert m["tokens_per_s"] > 0 and m["tokens_per_s_steady"] > 0
    # one warmup + cosine over all 4 steps: the rate never jumps back up at the stage boundary
    lrs = [lr for _, lr in m["lr_curve"]]
    assert lrs[0] == 0.0 and lrs[1] == 5e-3 and lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] > 0


def test_init_adapter_and_merge_match_peft(tiny_model_dir, tmp_path):
    first = train_lora(str(tiny_model_dir), _std(4), _cfg(), tmp_path / "a")
    # lr 0 throughout (one warmup step): the continued adapter must equal the one it started from
    cont = train_lora(str(tiny_model_dir), _std(4, offset=4), _cfg(max_steps=1, warmup_ratio=0.5),
                      tmp_path / "b", init_adapter=first.adapter_dir)
    a = load_file(first.adapter_dir / "adapter_model.safetensors")
    b = load_file(cont.adapter_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)

    merged_dir = merge_adapter(str(tiny_model_dir), first.adapter_dir, tmp_path / "merged")
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    peft_model, tok = load_student(str(tiny_model_dir), first.adapter_dir, merged=False)
    merged, tok2 = load_student(str(merged_dir))
    in_memory, _ = load_student(str(tiny_model_dir), first.adapter_dir, merged=True)
    base, _ = load_student(str(tiny_model_dir))
    assert tok.padding_side == tok2.padding_side == "left"
    batch = tok(["Question 1: what is 1 plus 1?", "Hi"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ref = peft_model(**batch).logits
        assert torch.allclose(merged(**batch).logits, ref, atol=1e-4)
        assert torch.allclose(in_memory(**batch).logits, ref, atol=1e-4)
        assert not torch.allclose(base(**batch).logits, ref, atol=1e-4)  # the adapter does something
