"""Inference compute accounting (method.md §6.5, D22).

Two numbers are reported for every method, with the same convention:

* **prefill MACs** (the authors' "tflops"): N_linear x prompt tokens, summed over items, where
  N_linear = the parameters of every ``nn.Linear`` (lm_head included, even when tied to the
  embedding; embeddings excluded). This is what ``thop.profile`` on the prompt measured.
* **inference FLOPs**: 2 x N_linear x (prompt + generated tokens) for the matrix products, plus
  the attention term. Attention convention: the token at position p (1-based) attends to p keys
  (itself and all earlier tokens, KV cache during generation); per layer and query head it costs
  two matrix products, QK^T and AV, of 2 x p x head_dim FLOPs each, i.e. 4 x p x head_dim x
  n_heads per layer. Over T = prompt + generated tokens this sums to
  4 x head_dim x n_heads x n_layers x T(T+1)/2. Query heads count (GQA shares keys, not work).
  Norms, activations, softmax, rotary embeddings and sliding windows are ignored (all small).

``attention="full"`` instead counts the whole L x L score matrix of a prefill, which is what dense
attention kernels compute and what torch's FlopCounterMode reports; it is used for validation.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import nn

CONVENTION = ("prefill MACs = N_linear x prompt tokens (the authors' 'tflops'); inference FLOPs = "
              "2 x N_linear x (prompt + generated tokens) + causal attention 4 x head_dim x n_heads x n_layers "
              "x T(T+1)/2; N_linear = all nn.Linear parameters incl. lm_head, excl. embeddings")
_ATTENTION = ("causal", "full", "none")


def linear_params(model: nn.Module) -> int:
    """Parameters (weights and biases) of every ``nn.Linear`` in ``model``.

    A tied lm_head still counts, since it is a full matrix product per token; embedding tables do
    not (they are lookups). ``modules()`` yields each module once, so shared layers count once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    total = 0
    for module in (m for m in model.modules() if isinstance(m, nn.Linear)):
        total += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return total


def _shape(config) -> dict:
    """n_layers, n_heads and head_dim of a transformers config (the text part for multimodal ones)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    except AttributeError as e:
        raise ValueError(f"config {type(cfg).__name__} lacks num_hidden_layers / num_attention_heads") from e
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return {"n_layers": n_layers, "n_heads": n_heads, "head_dim": int(head_dim)}


def model_dims(config_or_model) -> dict:
    """{n_linear, n_layers, n_heads, head_dim} of a model, or of a config (built on the meta device)."""
    if isinstance(config_or_model, nn.Module):
        model = config_or_model
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("the model has no .config; pass a transformers model or its config")
    else:
        from transformers import AutoModelForCausalLM

        config = config_or_model
        with torch.device("meta"):  # parameter shapes only: no memory, no weights
            model = AutoModelForCausalLM.from_config(config)
    return {"n_linear": linear_params(model), **_shape(config)}


def _count(value, name: str) -> int:
    """A non-negative integer count (Python, numpy or 0-d torch integers); floats and bools refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer token count, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer token count, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def prefill_macs(n_linear: int, prompt_tokens: int) -> int:
    """The authors' per-prompt count: N_linear x prompt tokens (multiply-accumulates, not FLOPs)."""
    return _count(n_linear, "n_linear") * _count(prompt_tokens, "prompt_tokens")


def attention_flops(dims: dict, n_tokens: int, start: int = 0, attention: str = "causal") -> int:
    """QK^T and AV FLOPs for ``n_tokens`` new positions after ``start`` cached ones.

    causal: position p attends to p keys; full: every query attends to all start + n_tokens keys.
    """
    if attention not in _ATTENTION:
        raise ValueError(f"attention must be one of {_ATTENTION}, got {attention!r}")
    n, start = _count(n_tokens, "n_tokens"), _count(start, "start")
    per_key = 4 * dims["head_dim"] * dims["n_heads"] * dims["n_layers"]  # 2 matmuls x 2 FLOPs per MAC
    if attention == "none":
        return 0
    if attention == "full":
        return per_key * n * (start + n)
    end = start + n
    return per_key * (end * (end + 1) // 2 - start * (start + 1) // 2)


def prefill_flops(config_or_model, prompt_tokens: int, attention: str = "causal", dims: dict | None = None) -> int:
    """FLOPs of one forward pass over a prompt: 2 x N_linear x L (lm_head on all L) + attention."""
    dims = dims or model_dims(config_or_model)
    L = _count(prompt_tokens, "prompt_tokens")
    return 2 * dims["n_linear"] * L + attention_flops(dims, L, attention=attention)


def inference_flops(config_or_model, prompt_tokens: int, generated_tokens: int, attention: str = "causal",
                    dims: dict | None = None) -> int:
    """Full inference FLOPs of one call: 2 x N_linear x (prompt + generated) + attention term.

    The convention counts every prompt and generated token as one processed position (the last
    generated token's forward pass is included, a negligible over-count of one position).
    """
    dims = dims or model_dims(config_or_model)
    total = _count(prompt_tokens, "prompt_tokens") + _count(generated_tokens, "generated_tokens")
    return 2 * dims["n_linear"] * total + attention_flops(dims, total, attention=attention)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter():
    """A display-less ``FlopCounterMode`` that also counts torch's fused CPU attention kernel.

    torch has no formula for ``_scaled_dot_product_flash_attention_for_cpu`` (SDPA on CPU), so
    the attention products would silently count 0; the supplied formula is the full-square count
    torch uses for its GPU kernels. Use it as a context manager around any forward passes.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops_torch(model: nn.Module, input_ids: torch.Tensor) -> dict:
    """Matmul FLOPs of one forward pass as measured by torch (``flop_counter``): {"total", "by_op"}."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a 2-D (batch, length) tensor")
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(input_ids=input_ids.to(next(model.parameters()).device))
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def _per_item(value, name: str, i: int) -> list[int]:
    """One item's token counts: an int, or a sequence of ints (one per call, e.g. CasCoD's stages)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_count(v, f"{name}[{i}]") for v in value]
    return [_count(value, f"{name}[{i}]")]


def flops_for_items(config_or_model, prompt_token_counts, generated_token_counts, attention: str = "causal") -> dict:
    """Per-item and summed prefill MACs and inference FLOPs for one evaluated dataset.

    Each entry of ``prompt_token_counts`` is an int or, for multi-call methods (CasCoD's two
    stages), a list with one count per call; ``generated_token_counts`` must match it in shape.
    Returns n_linear, per-item lists ``prefill_macs`` and ``inference_flops``, their totals,
    ``prefill_tmacs`` / ``inference_tflops`` (totals / 1e12) and the convention string.
    """
    prompts, gens = list(prompt_token_counts), list(generated_token_counts)
    if len(prompts) != len(gens):
        raise ValueError(f"prompt_token_counts ({len(prompts)}) and generated_token_counts ({len(gens)}) "
                         "must have one entry per item")
    dims = model_dims(config_or_model)
    macs, flops = [], []
    for i, (p, g) in enumerate(zip(prompts, gens)):
        calls_p, calls_g = _per_item(p, "prompt_token_counts", i), _per_item(g, "generated_token_counts", i)
        if len(calls_p) != len(calls_g):
            raise ValueError(f"item {i}: {len(calls_p)} prompt counts but {len(calls_g)} generated counts")
        macs.append(sum(prefill_macs(dims["n_linear"], cp) for cp in calls_p))
        flops.append(sum(inference_flops(None, cp, cg, attention=attention, dims=dims)
                         for cp, cg in zip(calls_p, calls_g)))
    return {"n_linear": dims["n_linear"], "n_items": len(prompts), "prefill_macs": macs,
            "inference_flops": flops, "prefill_macs_total": sum(macs), "inference_flops_total": sum(flops),
            "prefill_tmacs": sum(macs) / 1e12, "inference_tflops": sum(flops) / 1e12,
            "convention": CONVENTION, "attention": attention}
