"""FLOPs accounting (D22): analytic counts checked against torch's FlopCounterMode on real models."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nesylib.evaluation.flops import (
    attention_flops, count_flops_torch, flop_counter, flops_for_items, inference_flops, linear_params, model_dims,
    prefill_flops, prefill_macs,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _ids(n):
    return torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(n))


def test_linear_params_by_hand(tiny):
    c = tiny.config
    d, ff, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff  # q, o, k, v, gate/up/down
    expected = c.num_hidden_layers * per_layer + d * c.vocab_size  # + the tied lm_head
    assert tiny.lm_head.weight is tiny.model.embed_tokens.weight
    assert linear_params(tiny) == expected
    norms = sum(p.numel() for n, p in tiny.named_parameters() if "norm" in n)
    assert linear_params(tiny) == sum(p.numel() for p in tiny.parameters()) - norms  # embedding excluded once
    assert model_dims(AutoConfig.from_pretrained(tiny.name_or_path)) == model_dims(tiny)


@pytest.mark.parametrize("length", [8, 37, 128])
def test_prefill_matches_flop_counter_on_tiny_model(tiny, length):
    measured = count_flops_torch(tiny, _ids(length))
    assert measured["by_op"].get("aten._scaled_dot_product_flash_attention_for_cpu", 0) > 0
    full = prefill_flops(tiny, length, attention="full")  # the kernel computes the whole L x L matrix
    assert full == pytest.approx(measured["total"], rel=1e-3)
    assert prefill_flops(tiny, length) == pytest.approx(measured["total"], rel=0.05)  # causal convention


def test_eager_attention_is_counted_the_same(tiny_model_dir):
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    measured = count_flops_torch(eager, _ids(64))
    assert "aten._scaled_dot_product_flash_attention_for_cpu" not in measured["by_op"]
    assert prefill_flops(eager, 64, attention="full") == pytest.approx(measured["total"], rel=1e-3)


def test_generation_with_kv_cache_matches_flop_counter(tiny):
    # prefill P tokens, then G single-token steps with the cache: torch counts each step's attention
    # over all cached keys, which is the causal convention's per-position cost.
    P, G = 20, 6
    ids = _ids(P)
    with torch.no_grad(), flop_counter() as fc:
        out = tiny(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        for _ in range(G):
            nxt = out.logits[:, -1:].argmax(-1)
            out = tiny(input_ids=nxt, past_key_values=cache, use_cache=True)
    measured = fc.get_total_flops()
    dims = model_dims(tiny)
    decode = sum(2 * dims["n_linear"] + attention_flops(dims, 1, start=P + i) for i in range(G))
    assert prefill_flops(tiny, P, attention="full") + decode == pytest.approx(measured, rel=1e-3)
    assert inference_flops(tiny, P, G) == pytest.approx(measured, rel=0.05)


def test_smollm2_prefill_matches_flop_counter(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    measured = count_flops_torch(model, _ids(64))
    n_linear = linear_params(model)
    assert 130e6 < n_linear < 140e6  # 134.5M incl. the tied lm_head
    assert prefill_flops(model, 64, attention="full") == pytest.approx(measured["total"], rel=1e-3)
    assert prefill_flops(model, 64) == pytest.approx(measured["total"], rel=0.05)
    assert 2 * prefill_macs(n_linear, 64) == pytest.approx(measured["total"], rel=0.05)


def test_attention_convention_arithmetic(tiny):
    dims = model_dims(tiny)
    k = 4 * dims["head_dim"] * dims["n_heads"] * dims["n_layers"]
    assert attention_flops(dims, 10) == k * 55 and attention_flops(dims, 10, attention="full") == k * 100
    assert attention_flops(dims, 10, attention="none") == 0
    # splitting a sequence into a prefill and cached steps does not change the causal total
    assert attention_flops(dims, 7) + attention_flops(dims, 3, start=7) == attention_flops(dims, 10)
    assert inference_flops(tiny, 30, 12) == 2 * dims["n_linear"] * 42 + attention_flops(dims, 42)
    assert inference_flops(tiny, 30, 0) == prefill_flops(tiny, 30)
    with pytest.raises(ValueError, match="attention"):
        attention_flops(dims, 3, attention="square")


def test_flops_for_items_sums_and_multi_call_items(tiny):
    res = flops_for_items(tiny, [10, 20, [5, 7]], [3, 0, [2, 4]])
    n = res["n_linear"]
    assert res["prefill_macs"] == [10 * n, 20 * n, 12 * n]
    assert res["prefill_macs_total"] == 42 * n and res["prefill_tmacs"] == 42 * n / 1e12
    assert res["inference_flops"][2] == inference_flops(tiny, 5, 2) + inference_flops(tiny, 7, 4)
    assert res["inference_flops_total"] == sum(res["inference_flops"]) and res["n_items"] == 3
    assert "N_linear" in res["convention"]


def test_bad_counts_raise(tiny):
    with pytest.raises(ValueError, match="one entry per item"):
        flops_for_items(tiny, [1, 2], [1])
    with pytest.raises(TypeError, match=r"prompt_token_counts\[0\]"):
        flops_for_items(tiny, [1.5], [1])
    with pytest.raises(ValueError, match="item 0"):
        flops_for_items(tiny, [[1, 2]], [[1]])
    with pytest.raises(ValueError, match="prompt_tokens"):
        prefill_macs(10, -1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        linear_params("not a model")
