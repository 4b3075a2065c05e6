"""NesyCD's S_E trains on one cross-entropy over three concatenated formats (D14): each format must
weigh by its share of target tokens, and length grouping must not make single-format batches.

Before the fix, grouping by length put all short answer-only (P-FT) items into batches of their
own and the loss was a per-batch mean, so P-FT batches carried far more than their share."""
import random

import pytest
import torch
from transformers import AutoTokenizer

from nesylib.errors import ConfigError
from nesylib.methods.formats import examples_for
from nesylib.training.loss import group_weighted_ce, target_token_norms
from nesylib.training.engine import TrainConfig, Stage, _build_stream


def _records(n):
    out = []
    for i in range(n):
        steps = " ".join(f"Step {j}: item {i} links to item {i + j}." for j in range(1 + i % 4))
        out.append({"uid": f"synth/t/{i}", "dataset": "synth", "task": "synth_relation",
                    "task_description": "Follow the chain of relations.",
                    "question": f"Who is linked to item {i}?\nOptions:\n(A) a\n(B) b", "answer": "(A)",
                    "rationale": f"{steps} Therefore, the answer is (A)."})
    return out


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _se_examples(n=48):
    recs = _records(n)
    errors = recs[: n // 2]
    kb = examples_for("kb", errors, {r["uid"]: "Learning Summary:\n1. Follow each link.\n\nSupplementary "
                                                "Knowledge:\n1. Item links are one step each." for r in errors})
    return kb + examples_for("std", recs) + examples_for("ft", recs)


def _stream(tok, examples, group_by_length=True):
    cfg = TrainConfig(per_device_batch=8, grad_accum=1, max_steps=12, cutoff_len=512, group_by_length=group_by_length)
    items, order, _, _, share = _build_stream(tok, [Stage(examples, steps=0)], ["main"], cfg)
    return items, order, share, cfg


def test_length_grouped_batches_mix_every_format(tok):
    items, order, share, cfg = _stream(tok, _se_examples())
    assert set(share) == {"kb", "std", "ft"}
    batches = [order[b:b + cfg.per_device_batch] for b in range(0, len(order), cfg.per_device_batch)]
    kinds_per_batch = [{items[i][0].kind for i in b} for b in batches]
    assert all(len(k) == 3 for k in kinds_per_batch), kinds_per_batch  # no single-format batch
    # mixing formats costs the padding that single-format batches saved, but no more than a random order
    def padded(order_):
        bs = [order_[b:b + 8] for b in range(0, len(order_), 8)]
        return sum(len(b) * max(len(items[i][0].input_ids) for i in b) for b in bs)
    _, plain, _, _ = _stream(tok, _se_examples(), group_by_length=False)
    assert padded(order) <= 1.02 * padded(plain)


def test_each_format_weighs_by_its_target_tokens(tok):
    """Attribute the run's loss to each format through the gradient of the loss on the real
    batches: each format's share of the total gradient weight equals its share of target tokens."""
    items, order, share, cfg = _stream(tok, _se_examples())
    norms = torch.tensor(target_token_norms(items, order, cfg.per_device_batch, 1))
    weight = {k: 0.0 for k in share}
    names = sorted(share)
    for b in range(0, len(order), cfg.per_device_batch):
        seqs = [s for i in order[b:b + cfg.per_device_batch] for s in items[i]]
        width = max(len(s.labels) for s in seqs)
        targets = torch.full((len(seqs), width), -100)
        for r, s in enumerate(seqs):
            targets[r, :len(s.labels)] = torch.tensor(s.labels)
        logits = torch.zeros(len(seqs), width, 8, requires_grad=True)  # uniform: every token's CE is log 8
        loss, _ = group_weighted_ce(logits, targets.clamp(max=7).masked_fill(targets == -100, -100),
                                    torch.zeros(len(seqs), dtype=torch.long), torch.tensor([1.0]), norms)
        loss.backward()
        per_row = logits.grad.abs().sum(dim=(1, 2))
        for r, s in enumerate(seqs):
            weight[names[s.kind] or "main"] += float(per_row[r])
    total = sum(weight.values())
    for k in share:
        assert weight[k] / total == pytest.approx(share[k], abs=0.01), (k, weight[k] / total, share)
    # the answer-only format is a small share of the target tokens, so it must stay a small share of the loss
    assert share["ft"] < 0.2


def _padded_tokens(items, order, micro):
    """Tokens the model processes when each micro-batch is padded to its longest sequence."""
    bs = [order[b:b + micro] for b in range(0, len(order), micro)]
    return sum(len(b) * max(len(items[i][0].input_ids) for i in b) for b in bs)


def test_accumulated_micro_batches_group_lengths_inside_mixed_steps(tok):
    """With gradient accumulation the step (global batch) mixes the formats, while each micro-batch
    holds the step's items of similar length: the long P-KB prompts are not padded alongside the short
    P-FT ones. Before the fix the order was cut into micro-batches, each mixing all formats."""
    ex = _se_examples()
    cfg = TrainConfig(per_device_batch=2, grad_accum=4, max_steps=12, cutoff_len=512, group_by_length=True)
    items, order, _, _, _ = _build_stream(tok, [Stage(ex, steps=0)], ["main"], cfg)
    steps = [order[b:b + cfg.global_batch] for b in range(0, len(order), cfg.global_batch)]
    assert all(len({items[i][0].kind for i in s}) == 3 for s in steps)  # every optimizer step mixes formats
    for s in steps:  # within a step, longest first: micro-batches are contiguous length ranges
        lens = [len(items[i][0].input_ids) for i in s]
        assert lens == sorted(lens, reverse=True)
    # the same steps with their items in random order pad far more
    rng = random.Random(0)
    shuffled = []
    for s in steps:
        s = list(s)
        rng.shuffle(s)
        shuffled += s
    assert _padded_tokens(items, order, 2) < 0.9 * _padded_tokens(items, shuffled, 2)


def test_se_step_budget_std_trains_the_std_cot_steps_on_a_format_balanced_sample(tmp_path, tiny_model_dir, tok):
    """``se_step_budget="std"`` gives S_E the Std-CoT student's steps (SKIntern's budget rule), drawing
    its batches from all three formats in their shares; "own" is an epoch of the whole set."""
    from nesylib.methods import catalog as mth
    from nesylib.training.engine import steps_for

    cfg = TrainConfig(epochs=1, per_device_batch=2, grad_accum=2, lora_r=4, lora_alpha=8, cutoff_len=256,
                      save_steps=50, logging_steps=1, group_by_length=True)
    ex = _se_examples(16)  # 8 P-KB + 16 P-STD + 16 P-FT = 40 examples over 16 questions
    lab = mth.Lab(str(tiny_model_dir), cfg, tmp_path, tmp_path / "nb", log=False)
    mth.nesycd_fit(lab, ex, n_questions=16, step_budget="std")
    std_steps = steps_for(16, 1, cfg)
    assert lab.trained["nesycd"].metrics["steps"] == std_steps == 4
    share = lab.trained["nesycd"].metrics["target_token_share"]
    assert set(share) == {"kb", "std", "ft"}
    mth.nesycd_fit(lab, ex, n_questions=16, step_budget="own")
    assert lab.trained["nesycd"].metrics["steps"] == steps_for(len(ex), 1, cfg) == 10
    with pytest.raises(ConfigError, match="se_step_budget"):
        mth.nesycd_fit(lab, ex, 16, step_budget="half")
