"""The vLLM engine (nesylib.generation.vllm_engine.VLLMEngine) against a stand-in ``vllm`` module, so its contract is
checked without a GPU: one engine kept across calls and adapters, adapters served as LoRAs with stable
ids, per-prompt caps and seeds, greedy sampling, the project's stop rules replayed exactly, prompt order,
the merged fallback, and the evaluation key that keeps vLLM and transformers evaluations apart. The
tests marked ``gpu`` compare the real vLLM with the transformers engine and skip without CUDA + vllm."""
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nesylib.generation import generate, vllm_engine
from nesylib.generation.engines import get_engine
from nesylib.errors import ConfigError, ModelError
from nesylib.generation.generate import Sampling, encode_prompts
from nesylib.generation.stopping import DEFAULT_STOP_STRINGS, apply_stop_rules, eos_token_ids
from nesylib.generation.vllm_engine import ModelFiles, lora_support

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Question: eos case", "Question: stop string case", "Question: length case",
           "Question: loop case", "Question: dashes case"]
CAPS = [40, 40, 10, 100, 40]
REASONS = ["eos", "stop_string", "length", "repetition", "stop_string"]  # what each canned completion tests


class FakeVLLM:
    """Records what the engine asks of ``vllm`` and answers with canned token ids, cut the way vLLM cuts
    them: at a stop token (kept), at max_tokens, and after the token that completes a stop string (kept,
    or dropped when ``drop_stop_token``, as a detokeniser that disagrees with the replay would)."""

    def __init__(self, tok, canned: dict, default: list[int]):
        self.tok, self.canned, self.default = tok, canned, default
        self.built, self.calls = [], []
        self.drop_stop_token = False
        self.short = None  # cut every completion to this many tokens (a too small max_model_len)

    def _cut(self, full: list[int], sp) -> list[int]:
        out = []
        for t in full:
            out.append(t)
            if t in sp.stop_token_ids or len(out) >= sp.max_tokens:
                break
            if sp.stop and any(s in self.tok.decode(out, skip_special_tokens=True) for s in sp.stop):
                if self.drop_stop_token:
                    out.pop()
                break
        return out[:self.short] if self.short else out

    def modules(self) -> dict:
        fake = self

        class LLM:
            def __init__(self, model, **kw):
                fake.built.append({"model": model, **kw})

            def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
                fake.calls.append({"prompts": [list(p["prompt_token_ids"]) for p in prompts],
                                   "params": list(sampling_params), "lora_request": lora_request})
                return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=self._answer(p, sp))])
                        for p, sp in zip(prompts, sampling_params)]

            def _answer(self, p, sp):
                return fake._cut(fake.canned.get(tuple(p["prompt_token_ids"]), fake.default), sp)

        class SamplingParams(SimpleNamespace):
            pass

        class LoRARequest:
            def __init__(self, lora_name, lora_int_id, lora_path):
                self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

        vllm = types.ModuleType("vllm")
        vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
        lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
        request.LoRARequest = LoRARequest
        vllm.lora, lora.request = lora, request
        return {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def canned(tok):
    """Prompt token ids -> the full completion the stand-in decodes (before any stop)."""
    eos = tok.eos_token_id
    texts = [_ids(tok, " Step 1 is done. Therefore, the answer is (A).") + [eos] + _ids(tok, " never seen"),
             _ids(tok, " The answer is 7.\n\nQuestion: What is 2 + 2?\nAnswer: 4") + [eos],
             _ids(tok, " word" * 40) + [eos],
             _ids(tok, " 1 2" + " 3 4" * 40) + [eos],
             _ids(tok, " First step.\n---\nSecond part") + [eos]]
    return {tuple(ids): t for ids, t in zip(encode_prompts(tok, PROMPTS), texts)}


@pytest.fixture
def fake(monkeypatch, tok, canned):
    f = FakeVLLM(tok, canned, _ids(tok, " Therefore, the answer is No.") + [tok.eos_token_id])
    for name, mod in f.modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "_VLLM", {"engines": {}, "lora_ids": {}, "saved": {}, "no_lora": {}})
    return f


def _adapter(base, out: Path, tok, **lora) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(task_type="CAUSAL_LM", **lora))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    return {"a": _adapter(tiny_model_dir, d / "a", tok, r=4, lora_alpha=8, target_modules="all-linear"),
            "b": _adapter(tiny_model_dir, d / "b", tok, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
            "dora": _adapter(tiny_model_dir, d / "dora", tok, r=4, target_modules=["q_proj", "v_proj"],
                             use_dora=True)}


def _expected(tok, canned, eos, caps=CAPS):
    enc = encode_prompts(tok, PROMPTS)
    return [apply_stop_rules(canned[tuple(ids)], tok, eos_ids=eos, prompt_tokens=len(ids), max_new_tokens=cap)
            for ids, cap in zip(enc, caps)]


# ------------------------------------------------------------------------------ the engine's contract
def test_one_engine_for_calls_and_adapters(fake, tok, tiny_model_dir, adapters):
    base = str(tiny_model_dir)
    a, b = ModelFiles.load(base, adapters["a"]), ModelFiles.load(base, adapters["b"])
    get_engine("vllm")(a, tok, PROMPTS, max_new_tokens=CAPS, progress=False)
    eng = get_engine("vllm")  # a second engine object: the same vllm.LLM
    eng(b, tok, PROMPTS, max_new_tokens=CAPS, progress=False)
    eng(a, tok, PROMPTS, max_new_tokens=CAPS, progress=False)
    eng(ModelFiles.load(base), tok, PROMPTS, max_new_tokens=CAPS, progress=False)
    assert len(fake.built) == 1
    built = fake.built[0]
    assert built["model"] == base and built["tokenizer"] == base
    assert built["enable_lora"] is True and built["max_lora_rank"] >= 8 and built["max_loras"] == 1
    reqs = [c["lora_request"] for c in fake.calls]
    assert reqs[0].lora_path == str(Path(adapters["a"]).resolve())
    assert reqs[1].lora_path == str(Path(adapters["b"]).resolve())
    assert reqs[0].lora_int_id != reqs[1].lora_int_id and reqs[0].lora_name != reqs[1].lora_name
    assert min(r.lora_int_id for r in reqs[:3]) >= 1
    assert (reqs[2].lora_int_id, reqs[2].lora_name) == (reqs[0].lora_int_id, reqs[0].lora_name)  # stable per path
    assert reqs[3] is None  # the base model on the same engine
    assert eng.last_served["mode"] == "base"
    # rewritten adapter weights get a new id, so vLLM's adapter cache cannot serve the old ones
    w = Path(adapters["a"]) / "adapter_model.safetensors"
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    eng(a, tok, PROMPTS[:1], max_new_tokens=8, progress=False)
    assert fake.calls[-1]["lora_request"].lora_int_id not in {reqs[0].lora_int_id, reqs[1].lora_int_id}
    assert len(fake.built) == 1


def test_caps_seeds_greedy_stop_rules_and_order(fake, tok, canned, tiny_model_dir, adapters):
    model = ModelFiles.load(str(tiny_model_dir), adapters["a"])
    eos = eos_token_ids(model, tok)
    assert eos == [tok.eos_token_id]
    eng = get_engine("vllm")
    # reversed prompt order: each output must still belong to its own prompt
    order = list(reversed(range(len(PROMPTS))))
    got = eng(model, tok, [PROMPTS[i] for i in order], max_new_tokens=[CAPS[i] for i in order], progress=False)
    want = _expected(tok, canned, eos)
    assert [o.stopped_by for o in want] == REASONS  # the canned completions cover every stop rule
    assert got == [want[i] for i in order]
    (call,) = fake.calls
    assert call["prompts"] == encode_prompts(tok, [PROMPTS[i] for i in order])
    for j, (i, sp) in enumerate(zip(order, call["params"])):
        assert sp.max_tokens == CAPS[i]
        assert (sp.temperature, sp.top_p, sp.top_k, sp.n) == (0.0, 1.0, -1, 1)
        assert sp.seed == 42 * 1_000_003 + j
        assert sp.stop_token_ids == eos and sp.ignore_eos is True
        assert sp.stop == list(DEFAULT_STOP_STRINGS)
    assert eng.last_served == {"mode": "lora", "model": str(tiny_model_dir), "adapter": adapters["a"],
                               "regenerated": 0}
    # the authors' sampling: their parameters, seeded per prompt position
    eng(model, tok, PROMPTS[:2], max_new_tokens=CAPS[:2], sampling=Sampling(0.6, 0.9, 50), seed=7, progress=False)
    for j, sp in enumerate(fake.calls[-1]["params"]):
        assert (sp.temperature, sp.top_p, sp.top_k, sp.seed) == (0.6, 0.9, 50, 7 * 1_000_003 + j)


def test_stop_vllm_sees_but_the_replay_does_not_is_decoded_again(fake, tok, canned, tiny_model_dir):
    fake.drop_stop_token = True
    model = ModelFiles.load(str(tiny_model_dir))
    got = get_engine("vllm")(model, tok, PROMPTS, max_new_tokens=CAPS, progress=False)
    assert got == _expected(tok, canned, [tok.eos_token_id])
    first, again = fake.calls
    redo = [i for i, r in enumerate(REASONS) if r == "stop_string"]
    assert again["prompts"] == [first["prompts"][i] for i in redo]
    assert [sp.stop for sp in again["params"]] == [[]] * len(redo)
    assert [sp.seed for sp in again["params"]] == [42 * 1_000_003 + i for i in redo]
    assert [sp.max_tokens for sp in again["params"]] == [CAPS[i] for i in redo]


def test_a_completion_cut_short_by_vllm_is_an_error(fake, tok, tiny_model_dir):
    fake.short = 3
    with pytest.raises(ModelError, match="max_model_len"):
        get_engine("vllm")(ModelFiles.load(str(tiny_model_dir)), tok, PROMPTS[:1], max_new_tokens=40, progress=False)


def test_peft_model_is_served_as_lora_and_left_unmerged(fake, tok, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
    eng = get_engine("vllm")
    eng(model, tok, PROMPTS[:2], max_new_tokens=8, progress=False)
    eng(model, tok, PROMPTS[:2], max_new_tokens=8, progress=False)
    assert len(fake.built) == 1 and fake.built[0]["model"] == str(tiny_model_dir)
    r1, r2 = (c["lora_request"] for c in fake.calls)
    assert (r1.lora_int_id, r1.lora_path) == (r2.lora_int_id, r2.lora_path)  # saved once while unchanged
    saved = json.loads((Path(r1.lora_path) / "adapter_config.json").read_text())
    assert saved["r"] == 4 and sorted(saved["target_modules"]) == ["q_proj", "v_proj"]
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "merged")]
    assert layers and not any(m.merged for m in layers)  # nothing folded in, training could go on
    assert eng.last_served["mode"] == "lora"


def test_unservable_adapter_is_merged_into_a_copy(fake, tok, tiny_model_dir, adapters):
    eng = get_engine("vllm")
    eng(ModelFiles.load(str(tiny_model_dir), adapters["dora"]), tok, PROMPTS[:1], max_new_tokens=8, progress=False)
    assert eng.last_served["mode"] == "merged" and "DoRA" in eng.last_served["reason"]
    built = fake.built[-1]
    assert built["model"] != str(tiny_model_dir) and "enable_lora" not in built
    assert (Path(built["model"]) / "config.json").is_file() and fake.calls[-1]["lora_request"] is None
    # a rank above the engine's max_lora_rank falls back the same way
    eng2 = get_engine("vllm", max_lora_rank=1)
    eng2(ModelFiles.load(str(tiny_model_dir), adapters["a"]), tok, PROMPTS[:1], max_new_tokens=8, progress=False)
    assert eng2.last_served["mode"] == "merged" and "max_lora_rank=1" in eng2.last_served["reason"]


def test_lora_support_names_what_vllm_cannot_serve(tmp_path, adapters):
    assert lora_support(adapters["a"]) is None and lora_support(adapters["b"]) is None

    def why(**cfg):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "bias": "none",
                                                           "target_modules": ["q_proj"], **cfg}))
        return lora_support(d, max_lora_rank=64)

    assert why() is None
    assert "r=128" in why(r=128)
    assert "DoRA" in why(use_dora=True)
    assert "modules_to_save" in why(modules_to_save=["lm_head"])
    assert "bias" in why(bias="lora_only")
    assert "per-layer" in why(rank_pattern={"q_proj": 8})
    assert "pattern" in why(target_modules=".*proj")
    assert "lm_head" in why(target_modules=["q_proj", "lm_head"])
    assert "PREFIX_TUNING" in why(peft_type="PREFIX_TUNING")
    with pytest.raises(ModelError, match="adapter_config.json"):
        lora_support(tmp_path)


def test_missing_vllm_names_the_package_and_the_engine_parameter(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, even where it is installed
    with pytest.raises(ConfigError, match=r"vllm package.*engine parameter"):
        get_engine("vllm")
    assert get_engine("auto") is generate.generate_batch


def test_settings_are_checked(fake):
    with pytest.raises(ConfigError, match="max_lora_rank"):
        get_engine("vllm", max_lora_rank=48)
    with pytest.raises(ConfigError, match="engine='vllm' only"):
        get_engine("hf", gpu_memory_utilization=0.5)


# ------------------------------------------------------------------------------ evaluation and its key
@pytest.fixture(scope="module")
def records(data_dir):
    from nesylib.data.benchmarks import load_bbh

    return load_bbh("test", tasks=["navigate"])[:2]


def test_vllm_evaluation_is_stored_apart_from_transformers(fake, records, tiny_model_dir, adapters, tmp_path):
    from nesylib.evaluation.cache import evaluate_cached, evaluation_key, numeric_setting

    base, sets = str(tiny_model_dir), {"bbh": records}
    assert "engine" not in numeric_setting(16) and numeric_setting(16) == numeric_setting(16, "hf")
    assert numeric_setting(16, "vllm")["engine"] == "vllm" and "vllm" in numeric_setting(16, "vllm")
    hf_key = evaluation_key("std", base, adapters["a"], sets, max_new_tokens=8, engine="hf")
    assert hf_key == evaluation_key("std", base, adapters["a"], sets, max_new_tokens=8)
    vllm_key = evaluation_key("std", base, adapters["a"], sets, max_new_tokens=8, engine="vllm")
    assert vllm_key != hf_key
    assert evaluation_key("std", base, adapters["a"], sets, max_new_tokens=8, engine="auto") == vllm_key

    res, folder, cached = evaluate_cached("std", base, adapters["a"], sets, tmp_path, max_new_tokens=8,
                                          engine="vllm")
    assert folder.name == f"std-{vllm_key}" and not cached
    assert [r["uid"] for r in res.rows] == [r["uid"] for r in records]
    assert [(r["output"], r["stopped_by"]) for r in res.rows] == [(" Therefore, the answer is No.", "eos")] * 2
    assert res.meta["engine"] == "vllm" and res.meta["vllm"]["mode"] == "lora" and not res.meta["lora_merged"]
    assert res.summary["flops"]["bbh"]["n_items"] == 2  # from the model config, no weights loaded
    assert all(sp.max_tokens == 8 for sp in fake.calls[0]["params"])
    again, _, cached = evaluate_cached("std", base, adapters["a"], sets, tmp_path, max_new_tokens=8, engine="vllm")
    assert cached and again.rows == res.rows and len(fake.calls) == 1


# ------------------------------------------------------------------------------ make gpu-check
def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    heavy = "('torch', 'transformers', 'vllm', 'nesylib.training.engine')"
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import gpu_check; rc = gpu_check.main([]); "
            f"print('heavy:', sorted(m for m in {heavy} if m in sys.modules)); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode != 0
    assert out.stderr.strip() == "no CUDA device: make gpu-check needs a GPU"
    assert "heavy: []" in out.stdout


def test_gpu_check_paper_slice_overrides_are_valid():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from nesylib.pipeline.params import apply_overrides
    from nesylib.pipeline.runs import load_preset

    preset, lines = apply_overrides(load_preset("paper"), gpu_check.PAPER_SLICE)
    assert len(lines) == len(gpu_check.PAPER_SLICE)
    assert preset["common"]["student"] == "smollm2-135m" and preset["common"]["train"]["max_steps"] >= 3
    assert preset["notebooks"]["01_teacher_distillation"]["teacher_backend"] == "replay"


# ------------------------------------------------------------------------------ on a GPU with vLLM
_real_vllm = importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and _real_vllm), reason="needs a CUDA GPU and vllm")
def test_vllm_equals_transformers_greedy(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nesylib.methods import prompts
    from nesylib.synth import SynthConfig, generate_benchmark, generate_world

    world = generate_world(SynthConfig())
    ps = [prompts.std(r) for r in generate_benchmark(world.config, world)["test"][:6]]
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).to("cuda")
    hf = generate.generate_batch(model, tok, ps, max_new_tokens=64, progress=False)
    del model
    torch.cuda.empty_cache()
    try:
        eng = get_engine("vllm", dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True)
        got = eng(ModelFiles.load(str(smollm2_dir)), tok, ps, max_new_tokens=64, progress=False)
    finally:
        vllm_engine.release_vllm_engines()
    assert [o.token_ids for o in got] == [o.token_ids for o in hf]
    assert got == hf
