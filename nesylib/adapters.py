"""LoRA adapters on a loaded model: is it a PeftModel, fold the adapter in for good (``merge_lora``,
before saving or serving a final student), or merge it only for the duration of an evaluation
(``_merged_adapter``, so training can continue afterwards). Shared by evaluation and the engines."""
from __future__ import annotations


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
