import pytest
import torch

from nesylib import models
from nesylib.errors import ModelError


def test_smollm2_converted_and_generates(smollm2_dir):
    model, tok = models.load_model(str(smollm2_dir))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    assert tok.padding_side == "left"
    enc = tok(["The capital of France is"], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_tiny_model_shares_tokenizer(tiny_model_dir, smollm2_dir):
    model, tok = models.load_model(str(tiny_model_dir))
    _, tok2 = models.load_model(str(smollm2_dir))
    assert tok("hello world")["input_ids"] == tok2("hello world")["input_ids"]
    assert model.config.num_hidden_layers == 2
    logits = model(**tok(["a b c"], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"tinyllama.*HF_HUB_OFFLINE=1"):
        models.resolve_model("tinyllama")


def test_names_resolve(smollm2_dir, tiny_model_dir):
    assert models.resolve_model("smollm2-135m") == str(smollm2_dir)
    assert models.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
