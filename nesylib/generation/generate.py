"""Batched decoding for evaluation: greedy by default (D20), the authors' sampling as an option.

``generate_batch`` is the transformers engine: it checks and encodes the prompts, builds the stop rule
(``nesylib.generation.stopping``) and runs the continuous-batching decode loop of ``nesylib.generation.decode``.

Greedy outputs equal unbatched ``model.generate(do_sample=False)`` of each prompt alone, once the
same stop rule is applied to both (``apply_stop_rules``); tests check this on the tiny model and
on SmolLM2, and ``benchmarks/eval_throughput.py`` checks it on real BBH items while timing both. Prompts are
tokenised as in training: ``tokenizer(prompt, add_special_tokens=False)``, so no BOS is added (D11).

The optional vLLM engine for GPU machines is ``nesylib.generation.vllm_engine``; ``nesylib.generation.engines`` picks an
engine by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nesylib.generation.decode import _Decoder, _device_of, _gqa_attention
from nesylib.errors import ConfigError
from nesylib.generation.stopping import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_STOP_STRINGS, GenOutput, RepetitionRule,
                                         StopRule, eos_token_ids, per_prompt_caps)


@dataclass(frozen=True)
class Sampling:
    """The authors' vLLM sampling (method.md §6.1). Seeded per prompt, so a prompt's sample does
    not depend on the batch it lands in."""
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 50

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"sampling.temperature must be > 0 (sampling=None is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k}")

def encode_prompts(tokenizer, prompts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
    """Token ids exactly as in training (nesylib.training.sft_data): no special tokens, BOS only when
    ``add_bos`` (D11: the authors' template has none)."""
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p:
            raise ConfigError(f"prompts[{i}] must be a non-empty string, got {p!r:.80}")
    if add_bos and tokenizer.bos_token_id is None:
        raise ConfigError("add_bos=True but the tokenizer has no bos_token")
    bos = [tokenizer.bos_token_id] if add_bos else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def prepare_requests(tokenizer, prompts, max_new_tokens, stop_on_repetition, sampling, add_bos: bool):
    """What every engine checks and builds first: (repetition rule or None, token ids per prompt,
    cap per prompt)."""
    if sampling is not None and not isinstance(sampling, Sampling):
        raise ConfigError(f"sampling must be None (greedy) or a Sampling, got {type(sampling).__name__}")
    rep = stop_on_repetition if isinstance(stop_on_repetition, RepetitionRule) else (
        RepetitionRule() if stop_on_repetition else None)
    encoded = encode_prompts(tokenizer, prompts, add_bos)
    return rep, encoded, per_prompt_caps(max_new_tokens, len(encoded))


def generate_batch(model, tokenizer, prompts: Sequence[str],
                   max_new_tokens: int | Sequence[int] = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16,
                   stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
                   stop_on_repetition: bool | RepetitionRule = True, sort_by_length: bool = True,
                   progress: bool = True, sampling: Sampling | None = None, seed: int = 42,
                   add_bos: bool = False) -> list[GenOutput]:
    """Complete every prompt; outputs come back in the order of ``prompts``.

    Greedy (``sampling=None``) results match unbatched ``model.generate`` followed by
    ``apply_stop_rules`` up to floating-point rounding: the batch shape changes a matmul's last
    bits (with several threads), which can flip a near-tie between two tokens, so stored
    evaluations are keyed on the batch size and thread count (``evaluation.cache.numeric_setting``).
    ``max_new_tokens`` is one cap for all prompts or one per prompt (per-task caps). ``stop_on_repetition`` may be
    a ``RepetitionRule`` to change its thresholds. ``sampling`` draws with one generator per
    prompt, seeded from ``seed`` and the prompt's position, so a sample does not depend on the
    batch it was decoded in.
    """
    import torch

    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rep, encoded, caps = prepare_requests(tokenizer, prompts, max_new_tokens, stop_on_repetition, sampling, add_bos)
    rule = StopRule(tokenizer, eos_token_ids(model, tokenizer), stop_strings, max(caps, default=1), rep)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(rule.eos_ids, default=0)
    order = list(range(len(encoded)))
    if sort_by_length:  # longest first: similar lengths share a batch, and a memory blow-up shows at once
        order.sort(key=lambda i: -len(encoded[i]))
    generators = None
    if sampling is not None:
        dev = _device_of(model)
        generators = {i: torch.Generator(device=dev).manual_seed(seed * 1_000_003 + i) for i in order}
    bar = _progress(len(order), progress)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _gqa_attention(model):
            dec = _Decoder(model, rule, encoded, caps, pad_id, int(batch_size), sampling, generators, bar.update1)
            states = dec.run(order)
    finally:
        bar.close()
        model.train(was_training)
    return [rule.output(states[i], len(encoded[i])) for i in range(len(encoded))]


class _progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from nesylib.progress import tqdm

            self.bar = tqdm(total=total, desc="generate", unit="seq")

    def update1(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
