"""The batched decoding engine against one-at-a-time ``model.generate`` (real forward passes)."""
from __future__ import annotations

import pytest
import torch

from nesylib.errors import ConfigError
from nesylib.generation.engines import get_engine
from nesylib.generation.decode import PREFILL_SLACK, _sdpa_gqa_forward
from nesylib.generation.generate import Sampling, generate_batch
from nesylib.generation.stopping import (AUTHORS_STOP_STRINGS, DEFAULT_STOP_STRINGS, RepetitionRule, apply_stop_rules,
                                         eos_token_ids)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module: on the shared 2-core machine, two spinning OpenMP
    threads per process ran these decoding loops 10-100x slower whenever other jobs were busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(path):
    from nesylib.models import load_model

    return load_model(str(path))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The random tiny LLaMA as provisioned: it falls into loops of one token (repetition stress)."""
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def scrambled(tiny_model_dir):
    """The tiny LLaMA with large random weights: long, varied outputs (near-ties stress greedy
    equality), plus a frequent mid-output token declared EOS so sequences end at different steps."""
    model, tok = _load(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=g)
    # tokens from the middle of four outputs become extra EOS ids: those rows end at different steps
    probe = _reference(model, tok, _prompts()[:4], 40, eos=[tok.eos_token_id])
    extra = [ids[4 + 7 * i] for i, ids in enumerate(probe)]
    model.generation_config.eos_token_id = [tok.eos_token_id, *extra]
    return model, tok


def _prompts():
    """Real BBH test prompts (Std-CoT) of mixed lengths plus very short ones."""
    from nesylib.methods import prompts
    from nesylib.data.benchmarks import load_bbh, subsample

    recs = subsample(load_bbh("test"), per_task=1, seed=3)[:7]
    ps = [prompts.std(r) for r in recs]
    # near-equal lengths share a prefill group, so some rows are left-padded there too
    return ps + [ps[0] + "Think.", ps[0] + "Think again, slowly.", "Hi", "2 + 2 =",
                 "The following are multiple choice questions"]


def _reference(model, tok, prompts, max_new, eos=None):
    out = []
    with torch.inference_mode():
        for p in prompts:
            enc = tok(p, add_special_tokens=False, return_tensors="pt")
            g = model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                               eos_token_id=eos if eos is not None else model.generation_config.eos_token_id,
                               pad_token_id=tok.pad_token_id)
            out.append(g[0, enc["input_ids"].shape[1]:].tolist())
    return out


def _same(a, b):
    return [(x.token_ids, x.text, x.stopped_by, x.generated_tokens, x.prompt_tokens) for x in a] == \
           [(x.token_ids, x.text, x.stopped_by, x.generated_tokens, x.prompt_tokens) for x in b]


@pytest.mark.parametrize("batch_size,sort,slack", [(1, True, 1.0), (3, False, 1.0), (4, True, 1.1), (16, True, 1.1),
                                                   (16, True, 100.0)])
def test_batched_equals_unbatched_greedy(scrambled, data_dir, monkeypatch, batch_size, sort, slack):
    """``slack`` > 1 lets near-equal prompts share a padded prefill; 100 pads whole groups."""
    monkeypatch.setitem(PREFILL_SLACK, "cpu", slack)
    model, tok = scrambled
    prompts, n = _prompts(), 40
    eos = eos_token_ids(model, tok)
    refs = [apply_stop_rules(ids, tok, eos_ids=eos, prompt_tokens=len(tok(p, add_special_tokens=False)["input_ids"]),
                             max_new_tokens=n, stop_strings=(), repetition=None)
            for p, ids in zip(prompts, _reference(model, tok, prompts, n))]
    # the stress is real: prompts from 1 to 250+ tokens, and sequences end at different steps
    assert len({r.prompt_tokens for r in refs}) == len(prompts) and max(r.prompt_tokens for r in refs) > 150
    assert {"eos", "length"} <= {r.stopped_by for r in refs}
    assert len({r.generated_tokens for r in refs}) >= 4
    got = generate_batch(model, tok, prompts, max_new_tokens=n, batch_size=batch_size, stop_strings=(),
                         stop_on_repetition=False, sort_by_length=sort, progress=False)
    assert _same(got, refs)


def test_batched_equals_unbatched_with_stop_rules(tiny, data_dir):
    """Default stop rules online == the same rules replayed over model.generate's output."""
    model, tok = tiny
    prompts, n = _prompts(), 64
    eos = eos_token_ids(model, tok)
    refs = [apply_stop_rules(ids, tok, eos_ids=eos, prompt_tokens=len(tok(p, add_special_tokens=False)["input_ids"]),
                             max_new_tokens=n) for p, ids in zip(prompts, _reference(model, tok, prompts, n))]
    got = generate_batch(model, tok, prompts, max_new_tokens=n, batch_size=4, progress=False)
    assert _same(got, refs)
    # this random model loops on one token: the repetition rule ends it after 24 tokens, not 64
    assert any(o.stopped_by == "repetition" and o.generated_tokens == 24 for o in got)


def test_per_prompt_caps(scrambled, data_dir):
    model, tok = scrambled
    prompts = _prompts()[:5]
    caps = [5, 30, 12, 1, 20]
    got = generate_batch(model, tok, prompts, max_new_tokens=caps, batch_size=2, stop_strings=(),
                         stop_on_repetition=False, progress=False)
    full = generate_batch(model, tok, prompts, max_new_tokens=30, batch_size=5, stop_strings=(),
                          stop_on_repetition=False, progress=False)
    for o, f, cap in zip(got, full, caps):
        assert o.generated_tokens <= cap
        assert o.token_ids == f.token_ids[:cap]
        assert o.stopped_by == ("length" if len(f.token_ids) > cap or f.stopped_by == "length" else f.stopped_by)
    with pytest.raises(ConfigError, match="entries for 5 prompts"):
        generate_batch(model, tok, prompts, max_new_tokens=[3, 4], progress=False)


def test_add_bos_matches_training_layout(scrambled, data_dir):
    """add_bos=True (D11 flag) decodes from [BOS] + prompt ids, as nesylib.training.sft_data trains."""
    model, tok = scrambled
    ps = _prompts()[:3]
    got = generate_batch(model, tok, ps, max_new_tokens=12, add_bos=True, stop_strings=(), stop_on_repetition=False,
                         progress=False)
    eos = eos_token_ids(model, tok)
    with torch.inference_mode():
        for p, o in zip(ps, got):
            ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
            ref = apply_stop_rules(g[0, len(ids):].tolist(), tok, eos_ids=eos, max_new_tokens=12, stop_strings=(),
                                   repetition=None)
            assert (o.prompt_tokens, o.token_ids) == (len(ids), ref.token_ids)


def test_stop_string_cuts_text_at_first_occurrence(scrambled, data_dir):
    model, tok = scrambled
    prompt = _prompts()[0]
    free = generate_batch(model, tok, [prompt], max_new_tokens=30, stop_strings=(), stop_on_repetition=False,
                          progress=False)[0]
    full_text = tok.decode(free.token_ids, skip_special_tokens=True)
    stop = full_text[len(full_text) // 3: len(full_text) // 3 + 4]  # a piece from the middle of the output
    assert stop.strip()
    out = generate_batch(model, tok, [prompt], max_new_tokens=30, stop_strings=(stop, "never-there"),
                         stop_on_repetition=False, progress=False)[0]
    assert out.stopped_by == "stop_string"
    assert out.text == full_text[:full_text.find(stop)]
    # decoding stopped at the first token whose text completes the stop string
    k = out.generated_tokens
    assert out.token_ids == free.token_ids[:k]
    assert stop in tok.decode(free.token_ids[:k], skip_special_tokens=True)
    assert stop not in tok.decode(free.token_ids[:k - 1], skip_special_tokens=True)


def test_stop_rule_on_real_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = [tok.eos_token_id]
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = enc("Four apples. Therefore, the answer is 4.\n\nQuestion: How many pears?")
    out = apply_stop_rules(ids, tok, eos_ids=eos)
    assert (out.text, out.stopped_by) == ("Four apples. Therefore, the answer is 4.", "stop_string")
    assert out.generated_tokens < len(ids)
    # the authors' set alone lets the invented question through
    assert apply_stop_rules(ids, tok, eos_ids=eos, stop_strings=AUTHORS_STOP_STRINGS).stopped_by == "length"
    for s in ("</s>", "---", "```output", "\n\nQuestion:"):
        assert s in DEFAULT_STOP_STRINGS
    # EOS ends the text before the EOS token; tokens after it are never looked at
    ids2 = enc("So it is (B).") + eos + enc(" --- more")
    out2 = apply_stop_rules(ids2, tok, eos_ids=eos)
    assert (out2.text, out2.stopped_by, out2.generated_tokens) == ("So it is (B).", "eos", ids2.index(eos[0]) + 1)
    # the cap counts generated tokens
    out3 = apply_stop_rules(ids, tok, eos_ids=eos, max_new_tokens=3, stop_strings=())
    assert (out3.stopped_by, out3.generated_tokens, out3.token_ids) == ("length", 3, ids[:3])


def test_repetition_rule():
    rule = RepetitionRule()  # period <= 20, >= 4 copies, >= 24 tokens
    assert not rule.fires([7] * 23) and rule.fires([7] * 24)
    assert rule.fires([1, 2, 3] * 8) and not rule.fires([1, 2, 3] * 7 + [1, 2])
    period20 = list(range(100, 120))
    assert rule.fires([5, 6] + period20 * 4) and not rule.fires(period20 * 3 + period20[:19])
    period21 = list(range(200, 221))
    assert not rule.fires(period21 * 6)  # longer than max_period
    # legitimate text: five zeros of "1000000", a few "not"s, a long answer, must not fire
    assert not rule.fires([16, 15, 15, 15, 15, 15, 15])
    assert not rule.fires(list(range(400)))
    assert not RepetitionRule(max_period=2, min_repeats=4, min_span=8).fires([1, 2, 3] * 10)
    with pytest.raises(ConfigError):
        RepetitionRule(min_repeats=1)


def test_repetition_stop_point(tiny_model_dir):
    """The rule fires at the first token where the loop is complete."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    unit = tok(" the cat sat on the mat.", add_special_tokens=False)["input_ids"]
    ids = tok("Reasoning:", add_special_tokens=False)["input_ids"] + unit * 12
    out = apply_stop_rules(ids, tok, eos_ids=[tok.eos_token_id], stop_strings=())
    p = len(unit)
    need = p * max(4, -(-24 // p))
    assert out.stopped_by == "repetition"
    assert out.generated_tokens == len(ids) - len(unit) * 12 + need
    assert apply_stop_rules(ids, tok, eos_ids=[tok.eos_token_id], repetition=None).stopped_by == "length"


def test_deterministic_and_seeded_sampling(scrambled, data_dir):
    model, tok = scrambled
    prompts = _prompts()[:4]
    a = generate_batch(model, tok, prompts, max_new_tokens=20, batch_size=4, progress=False)
    b = generate_batch(model, tok, prompts, max_new_tokens=20, batch_size=4, progress=False)
    assert _same(a, b)
    s1 = generate_batch(model, tok, prompts, max_new_tokens=20, sampling=Sampling(), seed=1, batch_size=4,
                        progress=False)
    s1b = generate_batch(model, tok, prompts, max_new_tokens=20, sampling=Sampling(), seed=1, batch_size=1,
                         progress=False)
    s2 = generate_batch(model, tok, prompts, max_new_tokens=20, sampling=Sampling(), seed=2, batch_size=4,
                        progress=False)
    assert _same(s1, s1b)  # one generator per prompt: the batch does not change the draw
    assert [o.token_ids for o in s1] != [o.token_ids for o in s2]
    assert [o.token_ids for o in s1] != [o.token_ids for o in a]  # T=0.6 differs from greedy here
    with pytest.raises(ConfigError):
        Sampling(temperature=0)
    with pytest.raises(ConfigError):
        generate_batch(model, tok, prompts, sampling={"temperature": 0.6}, progress=False)


def test_gqa_attention_is_bit_identical():
    """The CPU attention used in the loop equals transformers' sdpa path exactly."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Mod(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 9, 1, 64, generator=g)
    k, v = torch.randn(5, 3, 70, 64, generator=g), torch.randn(5, 3, 70, 64, generator=g)
    mask = torch.ones(5, 1, 1, 70, dtype=torch.bool)
    mask[0, ..., :20] = False
    mask[3, ..., :41] = False
    ref, _ = sdpa_attention_forward(Mod(), q, k, v, mask, scaling=0.125)
    got, _ = _sdpa_gqa_forward(Mod(), q, k, v, mask, scaling=0.125)
    assert torch.equal(ref, got)


def test_input_validation(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="list of strings"):
        generate_batch(model, tok, "one prompt", progress=False)
    with pytest.raises(ConfigError, match=r"prompts\[1\]"):
        generate_batch(model, tok, ["ok", ""], progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        generate_batch(model, tok, ["ok"], batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_batch(model, tok, ["ok"], max_new_tokens=0, progress=False)
    with pytest.raises(ConfigError, match="empty string"):
        generate_batch(model, tok, ["ok"], stop_strings=("",), progress=False)
    assert generate_batch(model, tok, [], progress=False) == []


def test_engines():
    assert get_engine("hf") is generate_batch
    assert get_engine("auto") is generate_batch  # no GPU/vLLM in the CPU suite
    with pytest.raises(ConfigError, match="engine must be one of"):
        get_engine("tgi")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="vllm"):
            get_engine("vllm")


def test_smollm2_batched_equals_unbatched(smollm2_dir, data_dir):
    """The real student on 4 real BBH prompts: identical greedy outputs, stop rules included."""
    from nesylib.methods import prompts
    from nesylib.data.benchmarks import load_bbh, subsample

    model, tok = _load(smollm2_dir)
    # the four shortest Std-CoT prompts of one item per task keep the prefill (and the test) short
    ps = sorted((prompts.std(r) for r in subsample(load_bbh("test"), per_task=1, seed=0)), key=len)[:4]
    n = 48
    eos = eos_token_ids(model, tok)
    refs = [apply_stop_rules(ids, tok, eos_ids=eos, prompt_tokens=len(tok(p, add_special_tokens=False)["input_ids"]),
                             max_new_tokens=n) for p, ids in zip(ps, _reference(model, tok, ps, n))]
    got = generate_batch(model, tok, ps, max_new_tokens=n, batch_size=4, progress=False)
    assert _same(got, refs)
    assert all(o.text.strip() for o in got)
