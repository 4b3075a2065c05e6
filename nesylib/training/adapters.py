"""LoRA adapters on a loaded model: is it a PeftModel, fold the adapter in for good (``merge_lora``,
before saving or serving a final student), or merge it only for the duration of an evaluation
(``_merged_adapter``, so training can continue afterwards). Shared by evaluation and the engines.

Saved adapters: ``merge_adapter`` writes base + adapter as one plain transformers folder, ``export_model`` is
that behind the checks of ``nesylib export-model``, and ``load_student`` loads a student for evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path

from nesylib.errors import ConfigError, ModelError
from nesylib.files import atomic_dir


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merge_lora(model):
    """A PeftModel's adapter folded into the base weights (D20: evaluate merged weights).

    Returns ``model.merge_and_unload()``: the base model, changed in place, without LoRA modules.
    Any other model is returned as it is. Use it before saving or serving a final student; to
    evaluate between training stages, ``evaluate(..., merge=True)`` merges and unmerges instead.
    """
    return model.merge_and_unload() if is_peft(model) else model


class _merged_adapter:
    """Context: a PeftModel's adapter merged into the base weights, unmerged on exit.

    Unmerging subtracts the same delta again, so the base weights come back up to fp32 rounding
    (relative ~1e-7); training can continue on the adapter afterwards.
    """

    def __init__(self, model, enabled: bool):
        self.model = model if enabled and is_peft(model) else None
        self.merged = False

    def __enter__(self):
        if self.model is not None:
            self.model.merge_adapter()
            self.merged = True
        return self

    def __exit__(self, *exc):
        if self.merged:
            self.model.unmerge_adapter()
        return False


# ------------------------------------------------------------------------------------ saved adapters
def _tokenizer_dir(base_path: str, adapter_dir: Path) -> str:
    return str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base_path


def merge_adapter(base: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a LoRA adapter into its base model and save a plain transformers folder (D20)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nesylib.models import resolve_model

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json (not a saved LoRA adapter)")
    base_path = resolve_model(str(base))
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(_tokenizer_dir(base_path, adapter_dir))
    with atomic_dir(out_dir) as tmp:  # a killed merge never leaves a half folder behind
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def export_model(adapter_dir: str | Path, out_dir: str | Path, base: str | None = None, dtype: str = "float32",
                 force: bool = False) -> Path:
    """``merge_adapter`` behind the checks of ``python -m nesylib export-model``: a self-contained folder
    (config, safetensors weights, tokenizer, generation config) for ``from_pretrained`` or vLLM.

    ``base`` defaults to the adapter's ``base_model_name_or_path``. An existing non-empty ``out_dir`` is
    refused unless ``force``; the merge writes a temporary sibling and renames it into place.
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype={dtype!r}: must be float32, bfloat16 or float16")
    if not adapter_dir.is_dir():
        raise ModelError(f"{adapter_dir}: adapter folder not found")
    cfg_file = adapter_dir / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json (not a saved LoRA adapter)")
    if out_dir.resolve() == adapter_dir.resolve():
        raise ConfigError(f"{out_dir}: is the adapter folder itself; choose another output folder")
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: exists and is not empty; pass --force to replace it")
    if base is None:
        try:
            base = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
        except ValueError as e:
            raise ModelError(f"{cfg_file}: unreadable ({e})") from None
        if not base:
            raise ModelError(f"{cfg_file}: names no base_model_name_or_path; pass --base")
        if Path(base).is_absolute() and not Path(base).is_dir():  # trained on another machine or cache
            raise ModelError(f"{cfg_file}: its base model folder {base} does not exist here; pass --base")
    return merge_adapter(base, adapter_dir, out_dir, dtype)


def load_student(base: str, adapter_dir: str | Path | None = None, merged: bool = True,
                 dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) for evaluation: eval mode, left padding.

    Without ``adapter_dir`` it is the base model (or a merged folder passed as ``base``). With one,
    the adapter is merged in memory (``merged=True``, plain fast model) or kept as a PeftModel.
    """
    from nesylib.models import load_model, resolve_model

    if adapter_dir is None:
        return load_model(str(base), dtype=dtype, device=device)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    base_path = resolve_model(str(base))
    tok = AutoTokenizer.from_pretrained(_tokenizer_dir(base_path, adapter_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merged:
        model = model.merge_and_unload()
    if device:
        model.to(device)
    model.eval()
    return model, tok
