"""vLLM behind ``generate_batch``'s signature, for GPU machines (``VLLMEngine``; the authors' engine, method.md
§6.1). vLLM is imported only when asked for; one engine per base model is kept for the process, LoRA adapters
are served on it unmerged, and the stop rules of ``nesylib.generation.stopping`` are replayed over the token ids
it returns.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nesylib.errors import ConfigError, ModelError
from nesylib.generation.generate import Sampling, prepare_requests
from nesylib.generation.stopping import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_STOP_STRINGS, GenOutput, StopRule,
                                         apply_stop_rules, eos_token_ids)

# vLLM's own settings that the engine passes to ``vllm.LLM`` unless told otherwise. LoRA is on from the
# start, so the base model and every adapter share one engine (an adapter never rebuilds it).
VLLM_DEFAULTS = {"enable_lora": True, "max_lora_rank": 64, "max_loras": 1, "seed": 0}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for max_lora_rank
# Linear layers of the LLaMA / Qwen2 / Mistral families that vLLM applies LoRA to (it fuses q/k/v and
# gate/up itself). An adapter on anything else (lm_head, embed_tokens, another architecture) is merged.
VLLM_LORA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_LORA_KEYS = ("enable_lora", "max_lora_rank", "max_loras")
_VLLM = {"engines": {}, "lora_ids": {}, "saved": {}, "no_lora": {}}  # module state: kept across calls


@dataclass(frozen=True)
class ModelFiles:
    """A student named by its files, for the vLLM engine: ``base`` (a student name, folder or hub id) and
    an optional LoRA ``adapter`` folder, served as a LoRA on the base's engine. ``config`` and
    ``generation_config`` (read without the weights, ``ModelFiles.load``) give an evaluation its FLOPs
    and EOS ids, as a loaded model's would."""
    base: str
    adapter: str | None = None
    config: object = field(default=None, repr=False, compare=False)
    generation_config: object = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, base: str, adapter=None) -> "ModelFiles":
        from transformers import AutoConfig, GenerationConfig

        from nesylib.models import resolve_model

        path = resolve_model(str(base))
        config = AutoConfig.from_pretrained(path)
        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the model config's ids
            gen = GenerationConfig.from_model_config(config)
        return cls(path, str(adapter) if adapter is not None else None, config, gen)


def _vllm_installed() -> bool:
    if "vllm" in sys.modules:  # imported already (or blocked with None)
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def lora_support(adapter_dir, max_lora_rank: int = VLLM_DEFAULTS["max_lora_rank"]) -> str | None:
    """Why vLLM cannot serve the adapter in ``adapter_dir`` as a LoRA (None: it can). vLLM refuses DoRA,
    ``modules_to_save``, adapter biases and ranks above ``max_lora_rank``; per-layer ranks and layers
    outside ``VLLM_LORA_MODULES`` are not served here either. Such an adapter is merged instead."""
    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{adapter_dir}: no adapter_config.json (not a saved LoRA adapter)")
    cfg = json.loads(cfg_file.read_text())
    targets = cfg.get("target_modules") or []
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"peft_type {cfg.get('peft_type')!r} is not LoRA"
    if int(cfg.get("r", 0)) > max_lora_rank:
        return f"rank r={cfg.get('r')} is above the engine's max_lora_rank={max_lora_rank}"
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        return "it has per-layer ranks (rank_pattern / alpha_pattern)"
    if cfg.get("use_dora"):
        return "vLLM does not serve DoRA adapters"
    if cfg.get("modules_to_save"):
        return f"vLLM does not serve modules_to_save ({cfg['modules_to_save']})"
    if cfg.get("bias", "none") != "none":
        return f"vLLM does not serve adapter biases (bias={cfg['bias']!r})"
    if isinstance(targets, str):
        return f"target_modules is a pattern ({targets!r}), not a list of layers"
    other = sorted({t.rsplit(".", 1)[-1] for t in targets} - VLLM_LORA_MODULES)  # peft may save full paths
    if other:
        return f"it adapts layers vLLM does not serve as LoRA here: {other}"
    return None


def release_vllm_engines() -> None:
    """Drop the kept vLLM engine(s) and free their GPU memory (they are kept for the whole process)."""
    had = bool(_VLLM["engines"])
    _VLLM["engines"].clear()
    gc.collect()
    if had and _cuda_available():
        import torch

        torch.cuda.empty_cache()


def _vllm_engine(model: str, tokenizer: str, settings: dict):
    """The ``vllm.LLM`` for (model, tokenizer, settings), built once per process. One engine sits on the
    GPU at a time: asking for another one releases the kept one first."""
    key = (model, tokenizer, tuple(sorted((k, repr(v)) for k, v in settings.items())))
    if key not in _VLLM["engines"]:
        release_vllm_engines()
        from vllm import LLM

        _VLLM["engines"][key] = LLM(model=model, tokenizer=tokenizer, **settings)
    return _VLLM["engines"][key]


def _lora_request(adapter_dir: str):
    """``LoRARequest`` for an adapter folder. Its id is stable per folder while the folder's weights stay
    the same; rewritten weights get a new id, so vLLM never serves a stale copy from its adapter cache."""
    from vllm.lora.request import LoRARequest

    ids = _VLLM["lora_ids"]
    key = _adapter_stamp(adapter_dir)
    if key not in ids:
        ids[key] = len(ids) + 1  # vLLM wants ids >= 1, unique per adapter
    return LoRARequest(f"nesylib-{ids[key]}", ids[key], key[0])


def _adapter_stamp(adapter_dir) -> tuple:
    """(resolved folder, (name, size, mtime) of its weight files): changes when the weights are rewritten."""
    path = Path(adapter_dir).resolve()
    return str(path), tuple((w.name, w.stat().st_size, w.stat().st_mtime_ns)
                            for w in sorted(path.glob("adapter_model.*")) if w.is_file())


def _scratch(slot: str, key) -> tuple[str, bool]:
    """A temporary folder for ``slot`` (one per slot: a new key replaces the old folder); (path, is_new)."""
    held = _VLLM["saved"].get(slot)
    if held is not None and held[0] == key:
        return held[1].name, False
    tmp = tempfile.TemporaryDirectory(prefix=f"nesylib-vllm-{slot}-")
    _VLLM["saved"][slot] = (key, tmp)  # the replaced folder is deleted with its TemporaryDirectory
    return tmp.name, True


def _weights_key(params) -> tuple:
    import torch

    with torch.no_grad():
        return tuple(float(p.detach().double().sum()) for p in params)


class VLLMEngine:
    """vLLM behind the ``generate_batch`` signature (GPU only; the authors' engine, method.md §6.1).

    One ``vllm.LLM`` per base model and settings is built on first use and kept for the whole process
    (module state shared by every ``VLLMEngine``; ``release_vllm_engines`` frees it). ``model`` is

    * ``ModelFiles(base, adapter)``: the adapter is served with vLLM's LoRA support on the base's engine
      (``LoRARequest``, one id per adapter folder): a new adapter does not rebuild the engine;
    * a ``PeftModel``: its adapter is saved (small) and served the same way; the model is left unmerged;
    * a model folder (str) or a plain transformers model (saved to a temporary folder first).

    An adapter vLLM cannot serve as a LoRA (``lora_support``: rank above ``max_lora_rank``, DoRA,
    ``modules_to_save``, biases, per-layer ranks, layers outside ``VLLM_LORA_MODULES``, or a model whose
    vLLM implementation has no LoRA support) is merged into a temporary copy of the base (written in
    ``dtype`` when that setting names one, else float32), which needs an engine of its own. ``last_served``
    says how the last call was served.

    Decoding matches the transformers engine: the prompts' token ids (``encode_prompts``), per-prompt
    ``max_tokens`` caps, greedy = temperature 0, per-prompt seeds ``seed * 1_000_003 + i``; vLLM stops on
    exactly the EOS ids of ``eos_token_ids`` (``ignore_eos`` + ``stop_token_ids``) and, to save time, on
    the stop strings; the project's ``StopRule`` (``apply_stop_rules``) is then replayed over the token ids
    it returns. A completion vLLM ended on a stop string that the replay does not find (a detokenisation
    difference) is generated again without stop strings, so the result is always what the replay of the
    full greedy token stream gives. Its kernels (and a LoRA applied beside the base weights rather than
    merged into them) round differently from the transformers engine, so a near-tie can still flip a greedy
    token: evaluations are keyed by engine (``evaluation.cache.numeric_setting``) and ``make gpu-check``
    counts the differences. ``batch_size`` and ``sort_by_length`` are ignored (vLLM schedules
    itself). Settings (``VLLM_DEFAULTS`` plus keyword arguments, e.g. ``gpu_memory_utilization=0.5``,
    ``dtype="float32"``, ``enforce_eager=True``) go to ``vllm.LLM``. Not exercised by the CPU suite
    except against a stand-in ``vllm`` module (tests/test_vllm_engine.py).
    """

    def __init__(self, **settings):
        if not _vllm_installed():
            raise ConfigError("engine='vllm' needs the vllm package, which is not installed (pip install vllm, "
                              "on a CUDA machine); leave the engine parameter at 'hf' for the transformers engine")
        if not _cuda_available():
            raise ConfigError("engine='vllm' needs a CUDA GPU; leave the engine parameter at 'hf' on a CPU machine")
        self.settings = {**VLLM_DEFAULTS, **settings}
        if self.settings["enable_lora"] and self.settings["max_lora_rank"] not in VLLM_LORA_RANKS:
            raise ConfigError(f"max_lora_rank={self.settings['max_lora_rank']!r}: vLLM accepts {VLLM_LORA_RANKS}")
        self.last_served: dict | None = None

    # ---------------------------------------------------------------- what to serve
    def _files(self, model, tokenizer) -> tuple[str, str | None]:
        """(model folder or hub id, adapter folder or None) for any accepted ``model``."""
        from nesylib.training.adapters import is_peft

        if isinstance(model, ModelFiles):
            from nesylib.models import resolve_model

            return resolve_model(model.base), model.adapter
        if isinstance(model, str):
            return model, None
        if is_peft(model):
            cfg = model.peft_config[model.active_adapter]
            if not cfg.base_model_name_or_path:
                raise ModelError("the PeftModel's adapter config names no base_model_name_or_path; pass "
                                 "ModelFiles(base, adapter_dir) to the vLLM engine instead")
            lora = [p for n, p in model.named_parameters() if "lora_" in n]
            path, new = _scratch(f"adapter{id(model)}", _weights_key(lora))
            if new:
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)
            return cfg.base_model_name_or_path, path
        path, new = _scratch("model", (id(model), _weights_key(model.parameters())))
        if new:
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        return path, None

    def _merged(self, base: str, adapter: str) -> str:
        from nesylib.training.engine import merge_adapter

        path, new = _scratch("merged", (base, _adapter_stamp(adapter)))
        out = Path(path) / "model"
        if new or not out.is_dir():
            dtype = self.settings.get("dtype")
            merge_adapter(base, adapter, out, dtype if dtype in ("float32", "bfloat16", "float16") else "float32")
        return str(out)

    def _build(self, model: str, tokenizer: str, settings: dict):
        """The engine; with LoRA on, a model whose vLLM class refuses LoRA is remembered (and re-raised)."""
        try:
            return _vllm_engine(model, tokenizer, settings)
        except Exception as e:  # noqa: BLE001 - only LoRA refusals are handled, everything else re-raised
            if settings.get("enable_lora") and "lora" in str(e).lower():
                _VLLM["no_lora"][model] = f"vLLM has no LoRA support for it ({str(e)[:200]})"
            raise

    def _serve(self, model, tokenizer):
        """(llm, LoRARequest or None, what was served)."""
        base, adapter = self._files(model, tokenizer)
        no_lora = {k: v for k, v in self.settings.items() if k not in _LORA_KEYS}
        settings = self.settings if self.settings["enable_lora"] else no_lora
        reason = None
        if adapter is not None:
            reason = (_VLLM["no_lora"].get(base) or lora_support(adapter, self.settings["max_lora_rank"])
                      if self.settings["enable_lora"] else "the engine setting enable_lora is False")
        if base not in _VLLM["no_lora"] and (adapter is None or reason is None):
            try:
                llm = self._build(base, base, settings)
            except Exception:  # noqa: BLE001
                if base not in _VLLM["no_lora"]:
                    raise
                reason = _VLLM["no_lora"][base]
            else:
                if adapter is None:
                    return llm, None, {"mode": "base", "model": base}
                return llm, _lora_request(adapter), {"mode": "lora", "model": base, "adapter": adapter}
        if adapter is None:
            return self._build(base, base, no_lora), None, {"mode": "base", "model": base}
        merged = self._merged(base, adapter)
        return (self._build(merged, merged, no_lora), None,
                {"mode": "merged", "model": base, "adapter": adapter, "reason": reason})

    # ---------------------------------------------------------------- decoding
    def _generate(self, llm, lora, encoded, caps, idx, eos, stop_strings, sampling, seed, progress):
        """vLLM's generated token ids for ``encoded[j]`` (prompt number ``idx[j]``), in that order."""
        from vllm import SamplingParams

        s = sampling
        params = [SamplingParams(n=1, temperature=s.temperature if s else 0.0, top_p=s.top_p if s else 1.0,
                                 top_k=(s.top_k or -1) if s else -1, max_tokens=cap, stop=list(stop_strings),
                                 stop_token_ids=list(eos), ignore_eos=True, seed=seed * 1_000_003 + i,
                                 skip_special_tokens=True)
                  for cap, i in zip(caps, idx)]
        kw = {"use_tqdm": progress} if lora is None else {"use_tqdm": progress, "lora_request": lora}
        outs = llm.generate([{"prompt_token_ids": list(ids)} for ids in encoded], params, **kw)
        if len(outs) != len(encoded):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(encoded)} prompts")
        return [list(o.outputs[0].token_ids) for o in outs]

    def __call__(self, model, tokenizer, prompts, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, batch_size=16,
                 stop_strings=DEFAULT_STOP_STRINGS, stop_on_repetition=True, sort_by_length=True, progress=True,
                 sampling: Sampling | None = None, seed: int = 42, add_bos: bool = False) -> list[GenOutput]:
        rep, encoded, caps = prepare_requests(tokenizer, prompts, max_new_tokens, stop_on_repetition, sampling,
                                              add_bos)
        StopRule(tokenizer, [], stop_strings, max(caps, default=1), rep)  # the same argument checks as "hf"
        if not encoded:
            return []
        eos = eos_token_ids(model, tokenizer)
        llm, lora, served = self._serve(model, tokenizer)

        def replay(ids, i):
            return apply_stop_rules(ids, tokenizer, eos_ids=eos, prompt_tokens=len(encoded[i]), max_new_tokens=caps[i],
                                    stop_strings=stop_strings, repetition=rep)

        idx = list(range(len(encoded)))
        outs = [replay(ids, i) for i, ids in zip(idx, self._generate(llm, lora, encoded, caps, idx, eos, stop_strings,
                                                                     sampling, seed, progress))]
        short = [i for i, o in enumerate(outs) if o.stopped_by == "length" and o.generated_tokens < caps[i]]
        if short:  # vLLM stopped where the replay finds no reason to: decode those again without stop strings
            again = self._generate(llm, lora, [encoded[i] for i in short], [caps[i] for i in short], short, eos, (),
                                   sampling, seed, progress)
            for i, ids in zip(short, again):
                outs[i] = replay(ids, i)
                if outs[i].stopped_by == "length" and outs[i].generated_tokens < caps[i]:
                    raise ModelError(f"vLLM returned {outs[i].generated_tokens} tokens for prompt {i} (cap "
                                     f"{caps[i]}, {len(encoded[i])} prompt tokens) without an EOS: is the engine's "
                                     "max_model_len shorter than prompt + cap?")
        self.last_served = {**served, "regenerated": len(short)}
        return outs


def vllm_available() -> bool:
    return _vllm_installed() and _cuda_available()
