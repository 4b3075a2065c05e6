"""The training backend and numerics: which backend trains (unsloth or transformers + peft, ``pick_backend``),
in which dtype and whether under bf16 autocast, and the model with fresh or saved LoRA weights loaded on it
(``_load_trainable``). ``nesylib.training.engine`` runs the training itself.

Importing this module imports torch but not transformers, so a notebook can call ``pick_backend`` first
(unsloth must patch transformers and peft before anything imports them).
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from nesylib.errors import ConfigError, ModelError
from nesylib.training.config import BACKENDS, TrainConfig

_BACKEND_CHOICE: dict[str, str] = {}


def pick_backend(requested: str = "auto") -> str:
    """'unsloth' when CUDA, the package and its import all work, else 'hf' (transformers + peft).

    Call it at the top of a notebook, before anything imports transformers: unsloth must patch
    transformers and peft at import time. ``requested='unsloth'`` raises if it cannot be used.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"backend={requested!r}: must be one of {BACKENDS}")
    if requested == "hf":
        return "hf"
    if "unsloth" not in _BACKEND_CHOICE:
        reason = None
        if not torch.cuda.is_available():
            reason = "no CUDA device"
        elif importlib.util.find_spec("unsloth") is None:
            reason = "the unsloth package is not installed (pip install 'nesylib[gpu]')"
        else:
            try:
                import unsloth  # noqa: F401  (NotImplementedError without a GPU, not ImportError)
            except Exception as e:  # noqa: BLE001
                reason = f"import unsloth failed: {e!r}"
        _BACKEND_CHOICE["unsloth"] = reason or ""
    reason = _BACKEND_CHOICE["unsloth"]
    if not reason:
        return "unsloth"
    if requested == "unsloth":
        raise ModelError(f"backend='unsloth' was requested but cannot be used: {reason}")
    if torch.cuda.is_available():
        warnings.warn(f"unsloth unavailable ({reason}); training with transformers+peft")
    return "hf"


def cpu_has_native_bf16() -> bool:
    """True when torch's CPU kernels run bf16 matmuls natively (AVX512-BF16 or AMX). Elsewhere (e.g. an
    AVX2-only CPU) bf16 falls back to a scalar path about 30x slower than fp32, so autocast must stay off."""
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in cap:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16_autocast(setting, cuda: bool) -> bool:
    """Whether training runs under bf16 autocast: ``True``/``False`` as given (True still needs bf16
    support on a GPU), ``"auto"`` where the device computes bf16 natively."""
    if setting == "auto":
        return torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
    return bool(setting) and (not cuda or torch.cuda.is_bf16_supported())


def _dtype(config: TrainConfig, cuda: bool) -> torch.dtype:
    if config.model_dtype == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, config.model_dtype)


def _linear_names(model) -> list[str]:
    """Leaf names of the Linear layers except the output head: 'all-linear' spelled out for unsloth."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")})


def _load_trainable(path: str, config: TrainConfig, backend: str, init_adapter: str | None):
    """(peft model, tokenizer) with fresh seeded LoRA weights or the weights of ``init_adapter``."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(config.seed)  # LoRA A matrices are random: seed them
    cuda = torch.cuda.is_available()
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=config.cutoff_len,
                                                       dtype=_dtype(config, cuda), load_in_4bit=False)
        if init_adapter is None:
            targets = (_linear_names(model) if config.target_modules == "all-linear"
                       else list(config.target_modules))
            model = FastLanguageModel.get_peft_model(
                model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=targets, bias="none", random_state=config.seed,
                use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False)
    else:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(config, cuda))
        if init_adapter is None:
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                              target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)  # LoRA weights stay fp32 over bf16 bases (D10)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = False
    return model, tok
