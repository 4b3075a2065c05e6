"""The training loss: the group-weighted response-token cross-entropy (``group_weighted_ce``) and the per-group
token norms of a run's stream that make every target token weigh the same (``target_token_norms``; method.md
§11 (c), D14). ``nesylib.training.engine``'s Trainer computes it on each micro-batch.
"""
from __future__ import annotations

import math

import torch


def group_weighted_ce(logits: torch.Tensor, targets: torch.Tensor, group_ids: torch.Tensor,
                      weights: torch.Tensor, norms: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The training loss: sum over groups g in the batch of weights[g] * CE_g.

    ``logits[b, k]`` predicts ``targets[b, k]`` (-100 = no loss); ``group_ids[b]`` is sequence b's
    group. Without ``norms``, CE_g is the token mean over g's tokens in this batch. With ``norms``
    (per group: the run's mean number of g's target tokens per micro-batch), CE_g is the token
    *sum* divided by that constant, so every target token of the run weighs the same whichever
    batch it lands in: one cross-entropy over the concatenated data, where each format counts by
    its share of target tokens (D14), and a batch of short answer-only targets no longer weighs as
    much as a batch of long rationales. Returns the loss and each group's token-mean CE (for logs).
    """
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=-100, reduction="none").view_as(targets)
    valid = targets != -100
    loss = logits.new_zeros((), dtype=torch.float32)
    parts = {}
    for g in group_ids.unique().tolist():
        m = valid & (group_ids == g)[:, None]
        total = ce[m].sum()
        parts[g] = total.detach() / m.sum().clamp(min=1)
        loss = loss + weights[g] * (total / norms[g] if norms is not None else total / m.sum().clamp(min=1))
    return loss, parts


def target_token_norms(items: list, order: list[int], batch_size: int, n_groups: int) -> list[float]:
    """Per group, the mean number of its target tokens in one micro-batch of the run's stream
    (``order``: item indices, consecutive ``batch_size`` items form a micro-batch)."""
    n_batches = max(1, math.ceil(len(order) / batch_size))
    totals = [0] * n_groups
    for i in order:
        for seq in items[i]:
            totals[seq.group] += seq.n_target
    return [max(t / n_batches, 1.0) for t in totals]
