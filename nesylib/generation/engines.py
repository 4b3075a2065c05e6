"""The evaluation engines by name: "hf" (``generate.generate_batch``), "vllm" (``vllm_engine.VLLMEngine``) or
"auto" (vLLM when it is installed and a GPU is present)."""
from __future__ import annotations

from typing import Callable

from nesylib.errors import ConfigError
from nesylib.generation.generate import generate_batch
from nesylib.generation.stopping import GenOutput
from nesylib.generation.vllm_engine import VLLMEngine, vllm_available

ENGINES = ("hf", "vllm", "auto")


def resolve_engine(name: str) -> str:
    """The engine a name stands for: "auto" is "vllm" when vLLM is installed and a GPU is present, else "hf"."""
    if name not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {name!r}")
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    return name


def get_engine(name: str = "hf", **settings) -> Callable[..., list[GenOutput]]:
    """A callable with ``generate_batch``'s signature: "hf" (own loop), "vllm" (``VLLMEngine``; its
    ``vllm.LLM`` is built once per base model and settings and kept for the process), or "auto" (vLLM when
    it is installed and a GPU is present, else "hf"). ``settings`` go to ``vllm.LLM`` (vLLM only)."""
    name = resolve_engine(name)
    if name == "hf":
        if settings:
            raise ConfigError(f"engine settings {sorted(settings)} apply to engine='vllm' only")
        return generate_batch
    return VLLMEngine(**settings)
