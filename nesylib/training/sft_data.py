"""Tokenised training data for the LoRA engine: sequences, items, the run's item order, batches.

* A *sequence* is one Example tokenised per D11: prompt and target tokenised separately without
  special tokens, concatenated, EOS appended to the target; labels are -100 on the prompt.
* An *item* is what the sampler draws: one sequence, or the rationale and answer sequences of one
  record (MT-CoT, MT-Re, CasCoD), so that both loss terms of a record land in the same step (D18).
* The *stream* is the whole run's item order, fixed up front from the seed: per stage, seeded
  permutations of that stage's items, concatenated. A resumed run replays it exactly, and a new
  stage's (re-rendered) data starts exactly at an optimizer-step boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import Example


@dataclass(frozen=True)
class Sequence:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    group: int  # index into the run's group names
    kind: int = 0  # index into the run's example kinds (training formats)

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != -100)


@dataclass
class TruncationStats:
    sequences: int = 0
    target_truncated: int = 0  # target tail cut to fit cutoff_len (EOS lost with it)
    prompt_truncated: int = 0  # prompt alone too long: its left part was cut

    def as_dict(self) -> dict:
        return {"sequences": self.sequences, "target_truncated": self.target_truncated,
                "prompt_truncated": self.prompt_truncated}


def encode_pair(prompt_ids: list[int], target_ids: list[int], eos_id: int, cutoff_len: int,
                bos_id: int | None = None) -> tuple[list[int], list[int], str | None]:
    """(input_ids, labels, truncation) for one sequence; truncation is None, 'target' or 'prompt'.

    Over-long items keep their prompt and lose the target tail. If the prompt alone leaves no
    room, it is cut from the left so that min(len(target), cutoff_len // 4) target tokens remain.
    """
    prompt = ([bos_id] if bos_id is not None else []) + list(prompt_ids)
    target = list(target_ids) + [eos_id]
    kind = None
    if len(prompt) + len(target) > cutoff_len:
        if len(prompt) < cutoff_len:
            target, kind = target[: cutoff_len - len(prompt)], "target"
        else:
            keep_t = min(len(target), max(1, cutoff_len // 4))
            prompt, target, kind = prompt[len(prompt) - (cutoff_len - keep_t):], target[:keep_t], "prompt"
    return prompt + target, [-100] * len(prompt) + target, kind


def encode_items(tokenizer, examples: list[Example], groups: list[str], cutoff_len: int,
                 add_bos: bool = False, kinds: list[str] | None = None) -> tuple[list[list[Sequence]], TruncationStats]:
    """Tokenise Examples and pair the groups of one record into items (see module docstring).

    Examples of group "main" are items of their own. Other groups are joined by uid: each uid
    forms one item holding at most one sequence per group. ``kinds`` (the run's example kinds)
    numbers each sequence's ``kind``; None numbers them all 0.
    """
    kidx = {k: i for i, k in enumerate(kinds or [])}
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token: the target's EOS cannot be appended (§2.2)")
    if add_bos and tokenizer.bos_token_id is None:
        raise ConfigError("add_bos=True but the tokenizer has no bos_token")
    bos = tokenizer.bos_token_id if add_bos else None
    gidx = {g: i for i, g in enumerate(groups)}
    p_ids = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    t_ids = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    stats = TruncationStats()
    items: list[list[Sequence]] = []
    by_uid: dict[str, list[Sequence]] = {}
    seen: set[tuple[str, str]] = set()
    for i, (ex, p, t) in enumerate(zip(examples, p_ids, t_ids)):
        if not ex.target.strip():
            raise DataError(f"examples[{i}] (uid {ex.uid!r}): empty target")
        ids, labels, kind = encode_pair(p, t, tokenizer.eos_token_id, cutoff_len, bos)
        stats.sequences += 1
        if kind == "target":
            stats.target_truncated += 1
        elif kind == "prompt":
            stats.prompt_truncated += 1
        seq = Sequence(tuple(ids), tuple(labels), gidx[ex.group], kidx.get(ex.kind, 0))
        if ex.group == "main":
            items.append([seq])
            continue
        if not ex.uid:
            raise DataError(f"examples[{i}]: group {ex.group!r} needs a uid to pair it with the record's other group")
        if (ex.uid, ex.group) in seen:
            raise DataError(f"examples[{i}]: a second {ex.group!r} example for uid {ex.uid!r}; a record contributes "
                            f"one sequence per group (repeat data with epochs, not duplicates)")
        seen.add((ex.uid, ex.group))
        if ex.uid not in by_uid:
            by_uid[ex.uid] = []
            items.append(by_uid[ex.uid])
        by_uid[ex.uid].append(seq)
    return items, stats


def item_order(n_items: int, n_draws: int, seed: int, stage: int, lengths: list[int] | None = None,
               batch_size: int = 1, kinds: list[int] | None = None) -> list[int]:
    """``n_draws`` indices into ``range(n_items)``: consecutive seeded permutations (one per pass).

    With ``lengths`` (length grouping), each run of 50 batches is sorted by length, cut into
    batches, and the batches are shuffled (seeded): a batch holds items of similar length, so little
    of it is padding, while the order of batches stays random (sorted runs alone would put every
    short item, e.g. all answer-only targets, at the end of training). ``batch_size`` is the
    optimizer step's batch; inside it the items come longest first, so that the micro-batches of
    gradient accumulation (consecutive slices of the step) each hold items of similar length.

    With ``kinds`` (each item's training format) holding more than one kind, each kind is sorted by
    length on its own and the kinds are interleaved in proportion before the cut: every batch then
    mixes the formats in their share of the data, where sorting the mixture would give
    single-format batches (all the short answer-only items together).
    """
    order: list[int] = []
    rep = 0
    while len(order) < n_draws:
        perm = np.random.default_rng([seed, stage, rep]).permutation(n_items).tolist()
        if lengths is not None:  # within one pass, so that a batch never holds the same item twice
            perm = _group_by_length(perm, lengths, batch_size, [seed, stage, rep], kinds)
        order += perm
        rep += 1
    return order[:n_draws]


def _interleave_by_kind(run: list[int], lengths: list[int], kinds: list[int]) -> list[int]:
    """Each kind's items longest first, merged so that kind k's i-th item sits at the relative
    position (i + 0.5) / n_k: consecutive items come from every kind in proportion."""
    by_kind: dict[int, list[int]] = {}
    for k in run:
        by_kind.setdefault(kinds[k], []).append(k)
    keyed = []
    for kind, members in by_kind.items():
        members.sort(key=lambda k: -lengths[k])
        keyed += [((i + 0.5) / len(members), kind, k) for i, k in enumerate(members)]
    return [k for _, _, k in sorted(keyed)]


def _group_by_length(perm: list[int], lengths: list[int], batch_size: int, seed: list[int],
                     kinds: list[int] | None = None) -> list[int]:
    mega = 50 * batch_size
    mixed = kinds is not None and len(set(kinds)) > 1
    out = []
    for s in range(0, len(perm), mega):
        if mixed:
            run = _interleave_by_kind(perm[s:s + mega], lengths, kinds)
        else:
            run = sorted(perm[s:s + mega], key=lambda k: -lengths[k])
        batches = [run[b:b + batch_size] for b in range(0, len(run), batch_size)]
        for b in np.random.default_rng(seed + [7919, s]).permutation(len(batches)):
            out += sorted(batches[b], key=lambda k: -lengths[k])  # micro-batches of a step: similar lengths
    return out


class StreamSampler(torch.utils.data.Sampler):
    """Yields a fixed list of dataset indices: the same order on every pass (exact resume)."""

    def __init__(self, order: list[int]):
        self.order = list(order)

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[list[Sequence]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> list[Sequence]:
        return self.items[i]


class ItemCollator:
    """Flattens a batch of items into right-padded sequences with their group ids."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[list[Sequence]]) -> dict:
        seqs = [s for item in batch for s in item]
        width = max(len(s.input_ids) for s in seqs)
        if self.multiple:
            width = math.ceil(width / self.multiple) * self.multiple
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            n = len(s.input_ids)
            ids[r, :n] = torch.tensor(s.input_ids)
            labels[r, :n] = torch.tensor(s.labels)
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "group_ids": torch.tensor([s.group for s in seqs], dtype=torch.long)}
