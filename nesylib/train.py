"""LoRA SFT engine for every student (method.md §2.2, §2.3, D10, D11, D17, D18).

Runs on ``transformers.Trainer`` (trl's SFTTrainer breaks on CPU torch, stack.md gotcha 2):
response-only token cross-entropy, the multi-task weighted loss, seeded data order, resumable
checkpoints, and the unsloth or transformers+peft backend.

    from nesylib.train import pick_backend  # importing nesylib.train does not import transformers
    backend = pick_backend()  # first cell: unsloth must patch transformers before anyone imports it
    from nesylib.formats import examples_for
    from nesylib.train import TrainConfig, train_lora, merge_adapter
    res = train_lora("smollm2-135m", examples_for("std", recs), TrainConfig(epochs=2), "runs/x/std")
    merged = merge_adapter("smollm2-135m", res.adapter_dir, "runs/x/std/merged")

Staged training (SKIntern, D17): pass a list of ``Stage``s instead of Examples. One adapter, one
optimizer and one cosine schedule (with warmup) span all stages; stage t's examples (rendered by
the caller for stage t) are used for exactly its ``steps`` optimizer steps:

    total = steps_for(len(train_records), 10, cfg)          # the Std-CoT 10-epoch budget
    stages = [Stage(examples_t, steps=n, name=f"t{t}") for t, n in enumerate(split_steps(total, 7))]
    train_lora("smollm2-135m", stages, cfg, out_dir)

``init_adapter=`` starts from a saved adapter instead (a fresh optimizer and schedule).

Several GPUs (data parallel, docs/multi-gpu.md): ``TrainConfig(world_size=N)`` trains one student on N
processes; the global batch is per_device_batch x grad_accum x world_size. Called from one process (a
notebook), ``train_lora`` launches ``torchrun`` (or ``$NESYLIB_LAUNCHER``, e.g. ``accelerate launch`` with
configs/accelerate/zero2.yaml) on ``python -m nesylib train-job`` and waits; under a launcher it trains its share.
The process handling itself is ``nesylib.distributed``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nesylib.files import atomic_dir, sha256_file, write_json
from nesylib.distributed import (check_dealt_loader, from_main, init_process_group, launch_job,
                                 launched_world_size, load_optimizer_on_cpus, missing_rng_states,
                                 pool_over_processes, total_over_processes)
from nesylib.errors import ConfigError, ModelError
from nesylib.prompts import Example
from nesylib.sft_data import (ItemCollator, ItemDataset, StreamSampler, TruncationStats, encode_items,
                              item_order)

ENGINE_VERSION = "e3"  # bump when a change alters what a run with the same inputs produces
BACKENDS = ("auto", "hf", "unsloth")
_RESULT_FILE = "train_result.json"
_RUN_FILE = "run.json"
# tracking only: never changes the weights, so it stays out of every key (existing students stay cached)
TRACKING_ONLY = ("report_to",)
_NOT_IN_FINGERPRINT = ("save_steps", "logging_steps") + TRACKING_ONLY  # bookkeeping: may change across a resume
# fields added after students were trained: left out of every key at this value, so existing keys stay as they were
KEYED_UNLESS_DEFAULT = {"world_size": 1}
_JOB_FILE = "job.json"
# transformers' reporting integrations (INTEGRATION_TO_CALLBACK) -> {module it needs: pip name}. Spelled out here so
# that validating a preset does not import transformers; tests/test_export_model.py checks that they still agree.
REPORT_TO_PACKAGES = {
    "azure_ml": {"azureml": "azureml-core"}, "clearml": {"clearml": "clearml"},
    "codecarbon": {"codecarbon": "codecarbon"}, "comet_ml": {"comet_ml": "comet-ml"},
    "dagshub": {"dagshub": "dagshub", "mlflow": "mlflow"}, "dvclive": {"dvclive": "dvclive"},
    "flyte": {"flytekit": "flytekit"}, "kubeflow": {}, "mlflow": {"mlflow": "mlflow"},
    "neptune": {"neptune": "neptune"}, "swanlab": {"swanlab": "swanlab"},
    "tensorboard": {"tensorboard": "tensorboard"}, "trackio": {"trackio": "trackio"}, "wandb": {"wandb": "wandb"},
}
_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters; defaults are the authors' recipe (§2.2) at global batch 32 (D10).

    ``per_device_batch`` counts items: an MT item brings its rationale and its answer sequence.
    ``max_steps`` (optimizer steps) overrides ``epochs``. Every step sees a full global batch; the
    last one is filled from the next shuffled pass.

    ``world_size``: data-parallel processes (GPUs) that train the student together. The global batch
    is per_device_batch x grad_accum x world_size (D10: the authors' 16 x 1 x 2 GPUs = 32); it alone
    fixes the data order, the step budget and the schedule, so 8 x 2 x 2 trains on the same items per
    step as 16 x 2 x 1. At 1 it is left out of the run's keys (students trained before it existed stay cached).
    """
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    lr: float = 2e-4
    epochs: float = 10.0
    max_steps: int | None = None
    per_device_batch: int = 16
    grad_accum: int = 2
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    cutoff_len: int = 2048
    seed: int = 42
    bf16_autocast: bool | str = "auto"  # "auto": on where the hardware has native bf16 (see cpu_has_native_bf16)
    model_dtype: str = "auto"           # base weights: bfloat16 on CUDA, float32 on CPU (D10)
    group_weights: dict = field(default_factory=lambda: {"main": 1.0, "rationale": 0.7, "answer": 0.3})
    save_steps: int = 100
    logging_steps: int = 10
    backend: str = "auto"
    group_by_length: bool = False
    add_bos: bool = False               # D11: no BOS by default, as the authors' template
    gradient_checkpointing: bool = False
    report_to: str | list[str] = "none"  # transformers integrations ("tensorboard", ["wandb", "mlflow"], "all")
    world_size: int = 1                 # data-parallel processes; global batch = per_device x accum x world_size

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.grad_accum * self.world_size

    def validate(self) -> "TrainConfig":
        def need(ok: bool, name: str, rule: str):
            if not ok:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {rule}")
        for name in ("lora_r", "lora_alpha", "per_device_batch", "grad_accum", "cutoff_len", "save_steps",
                     "logging_steps", "world_size"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "must be a positive int")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.max_steps is not None or self.epochs > 0, "epochs", "must be > 0 (or set max_steps)")
        need(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps > 0), "max_steps",
             "must be None or a positive int")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        need(self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}")
        need(self.world_size == 1 or self.backend != "unsloth", "backend",
             "'unsloth' trains on one GPU only; use 'hf' or 'auto' with world_size > 1")
        need(self.bf16_autocast in (True, False, "auto"), "bf16_autocast", "must be true, false or auto")
        need(self.model_dtype in ("auto", "float32", "bfloat16", "float16"), "model_dtype",
             "must be auto, float32, bfloat16 or float16")
        need(isinstance(self.group_weights, dict) and all(w >= 0 for w in self.group_weights.values()),
             "group_weights", "must map group names to weights >= 0")
        rt = self.report_to
        known = ("none", "all", *REPORT_TO_PACKAGES)
        if not (rt in known if isinstance(rt, str) else isinstance(rt, (list, tuple)) and len(rt) > 0
                and all(isinstance(n, str) and n in REPORT_TO_PACKAGES for n in rt)):
            raise ConfigError(f"train.report_to={rt!r}: must be 'none', 'all', or one integration or a list of "
                              f"them, from {sorted(REPORT_TO_PACKAGES)}")
        return self


def check_report_to(report_to) -> None:
    """Fail before training, not at its first log, when a named integration's package is not installed."""
    for name in [report_to] if isinstance(report_to, str) else report_to:
        for module, pip_name in REPORT_TO_PACKAGES.get(name, {}).items():
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"train.report_to={report_to!r}: the {name} integration needs the {module!r} "
                                  f"package, which is not installed; pip install {pip_name}")


@dataclass
class Stage:
    """One curriculum stage: its examples are trained on for exactly ``steps`` optimizer steps."""
    examples: list[Example]
    steps: int
    name: str = ""


@dataclass
class TrainResult:
    adapter_dir: Path
    metrics: dict
    cached: bool = False  # True when a finished run with identical inputs was found in out_dir


def steps_for(n_items: int, epochs: float, config: TrainConfig) -> int:
    """Optimizer steps that cover ``epochs`` passes over ``n_items`` items at the global batch."""
    return max(1, math.ceil(n_items * epochs / config.global_batch))


def split_steps(total: int, n_stages: int) -> list[int]:
    """D17: an even split of ``total`` steps over the stages, the remainder to the last stage."""
    if n_stages < 1 or total < n_stages:
        raise ConfigError(f"cannot split {total} steps over n_stages={n_stages} (each stage needs >= 1 step)")
    base = total // n_stages
    return [base] * (n_stages - 1) + [total - base * (n_stages - 1)]


# ------------------------------------------------------------------------------------ backends
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


# ------------------------------------------------------------------------------------ the loss
def group_weighted_ce(logits: torch.Tensor, targets: torch.Tensor, group_ids: torch.Tensor,
                      weights: torch.Tensor, norms: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The training loss: sum over groups g in the batch of weights[g] * CE_g.

    ``logits[b, k]`` predicts ``targets[b, k]`` (-100 = no loss); ``group_ids[b]`` is sequence b's
    group. Without ``norms``, CE_g is the token mean over g's tokens in this batch. With ``norms``
    (per group: the run's mean number of g's target tokens per micro-batch), CE_g is the token
    *sum* divided by that constant, so every target token of the run weighs the same whichever
    batch it lands in: one cross-entropy over the concatenated data, where each format counts by
    its share of target tokens (D14), and a batch of short answer-only targets no longer weighs as
    much as a batch of long rationales. Returns the loss and each group's token-mean CE (for logs).
    """
    ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                           ignore_index=-100, reduction="none").view_as(targets)
    valid = targets != -100
    loss = logits.new_zeros((), dtype=torch.float32)
    parts = {}
    for g in group_ids.unique().tolist():
        m = valid & (group_ids == g)[:, None]
        total = ce[m].sum()
        parts[g] = total.detach() / m.sum().clamp(min=1)
        loss = loss + weights[g] * (total / norms[g] if norms is not None else total / m.sum().clamp(min=1))
    return loss, parts


def target_token_norms(items: list, order: list[int], batch_size: int, n_groups: int) -> list[float]:
    """Per group, the mean number of its target tokens in one micro-batch of the run's stream
    (``order``: item indices, consecutive ``batch_size`` items form a micro-batch)."""
    n_batches = max(1, math.ceil(len(order) / batch_size))
    totals = [0] * n_groups
    for i in order:
        for seq in items[i]:
            totals[seq.group] += seq.n_target
    return [max(t / n_batches, 1.0) for t in totals]


def _trainer_class():
    from transformers import Trainer

    class GroupWeightedTrainer(Trainer):
        """Trainer whose loss is ``group_weighted_ce`` over response tokens only."""

        def setup(self, sampler, names: list[str], weights: list[float], slice_logits: bool,
                  norms: list[float] | None = None):
            self.stream_sampler = sampler
            self.group_names = names
            self.group_weights = torch.tensor(weights, dtype=torch.float32)
            self.group_norms = torch.tensor(norms, dtype=torch.float32) if norms is not None else None
            self.slice_logits = slice_logits
            self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean: Trainer divides by GA
            self.tokens_processed = 0  # non-pad tokens trained on in this process (a device tensor once used)
            self._part_sum: dict[int, float] = {}
            self._part_n: dict[int, int] = {}

        def _get_train_sampler(self, train_dataset=None):
            return self.stream_sampler  # the run's fixed item order (exact resume, stage boundaries)

        def get_train_dataloader(self):
            """The stream's loader; under several processes, checked to deal out each step's global batch."""
            loader = super().get_train_dataloader()
            if self.args.world_size > 1:
                check_dealt_loader(loader, self.args, self.stream_sampler)
            return loader

        def _load_optimizer_and_scheduler(self, checkpoint):
            if not load_optimizer_on_cpus(self, checkpoint):
                return super()._load_optimizer_and_scheduler(checkpoint)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, groups = inputs.pop("labels"), inputs.pop("group_ids")
            targets = labels[:, 1:]
            kwargs = {}
            if self.slice_logits:
                # logits only over the columns that carry a target: the vocabulary projection and
                # softmax are a large share of a small model's step, and prompt columns need neither
                cols = (targets != -100).any(0).nonzero().squeeze(1)
                first, last = int(cols[0]), int(cols[-1]) + 1
                kwargs["logits_to_keep"] = torch.arange(first, last, device=labels.device)
                targets = targets[:, first:last]
            outputs = model(**inputs, **kwargs)
            logits = outputs.logits if self.slice_logits else outputs.logits[:, :-1]
            norms = self.group_norms.to(logits.device) if self.group_norms is not None else None
            loss, parts = group_weighted_ce(logits, targets, groups, self.group_weights.to(logits.device), norms)
            if model.training:
                self.tokens_processed = self.tokens_processed + inputs["attention_mask"].sum()  # no sync
                for g, v in parts.items():
                    self._part_sum[g] = self._part_sum.get(g, 0.0) + v.detach()
                    self._part_n[g] = self._part_n.get(g, 0) + 1
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            if "loss" in logs and len(self.group_names) > 1 and self.args.world_size > 1:
                # every process logs together (the loss itself is gathered): pool the group means of all
                self._part_sum, self._part_n = pool_over_processes(self.accelerator, self.args.device, self._part_sum,
                                                                   self._part_n, len(self.group_names))
            if "loss" in logs and self._part_n and len(self.group_names) > 1:
                for g, s in self._part_sum.items():
                    logs[f"loss_{self.group_names[g]}"] = round(float(s) / self._part_n[g], 4)
            if "loss" in logs:
                self._part_sum, self._part_n = {}, {}
            super().log(logs, start_time)

    return GroupWeightedTrainer


def _step_clock():
    """A callback recording (wall time, tokens trained on so far) at each optimizer step's end."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        trainer = None  # set once the trainer exists

        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def _mark(self):
            self.marks.append((time.perf_counter(), int(self.trainer.tokens_processed)))  # syncs the device

        def on_train_begin(self, args, state, control, **kw):
            self._mark()

        def on_step_end(self, args, state, control, **kw):
            self._mark()

    return StepClock()


# ------------------------------------------------------------------------------------ the run
def config_key(config: TrainConfig, leave_out=()) -> dict:
    """The config's fields for a key (the run's fingerprint, the student's folder): all but ``leave_out``, and
    those of KEYED_UNLESS_DEFAULT only where they differ from that value."""
    return {k: v for k, v in dataclasses.asdict(config).items()
            if k not in leave_out and not (k in KEYED_UNLESS_DEFAULT and v == KEYED_UNLESS_DEFAULT[k])}


def _fingerprint(model_path: str, stages: list[Stage], config: TrainConfig, init_adapter: str | None) -> str:
    cfg = config_key(config, _NOT_IN_FINGERPRINT)
    init = None
    if init_adapter:
        w = Path(init_adapter) / "adapter_model.safetensors"
        init = sha256_file(w) if w.is_file() else str(init_adapter)
    h = hashlib.sha256(json.dumps({"engine": ENGINE_VERSION, "model": model_path, "config": cfg, "init": init},
                                  sort_keys=True, default=str).encode())
    for s in stages:
        h.update(f"\x00stage {s.steps}\x00".encode())
        for e in s.examples:
            h.update(json.dumps([e.prompt, e.target, e.group, e.uid, e.kind]).encode())
    return h.hexdigest()[:16]


_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _checkpoints(out_dir: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder, complete or not, by step."""
    found = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _checkpoint_problem(ckpt: Path, world_size: int = 1) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None when it can): a kill during a save leaves it without
    its trainer state, which ``Trainer`` writes last, or without the adapter weights, or (several
    processes) without some process's RNG state (``missing_rng_states``)."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable trainer_state.json ({type(e).__name__})"
    if not any((ckpt / w).is_file() for w in _ADAPTER_WEIGHTS):
        return f"no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)})"
    missing = missing_rng_states(ckpt, world_size)
    if missing:
        return f"no RNG state of process(es) {missing}"
    return None


def _resumable_checkpoint(out_dir: Path, world_size: int = 1) -> Path | None:
    """The newest complete checkpoint; incomplete ones are reported and deleted (they can never be
    resumed from, and ``Trainer``'s checkpoint rotation would keep them over a good one)."""
    last = None
    for ckpt in _checkpoints(out_dir):
        problem = _checkpoint_problem(ckpt, world_size)
        if problem is None:
            last = ckpt
        else:
            _log.warning("ignoring incomplete checkpoint %s (%s); deleting it", ckpt, problem)
            shutil.rmtree(ckpt, ignore_errors=True)
    if last is not None:
        _log.warning("resuming the training in %s from its newest complete checkpoint, %s", out_dir, last.name)
    return last


def _as_stages(examples) -> list[Stage]:
    if not examples:
        raise ConfigError("train_lora: `examples` is empty")
    if all(isinstance(s, Stage) for s in examples):
        for i, s in enumerate(examples):
            if not s.examples or not isinstance(s.steps, int) or s.steps < 1:
                raise ConfigError(f"stages[{i}] ({s.name!r}): needs examples and steps >= 1")
        return list(examples)
    if not all(isinstance(e, Example) for e in examples):
        raise ConfigError("train_lora: `examples` must be a list of prompts.Example or a list of train.Stage")
    return [Stage(list(examples), steps=0, name="main")]  # 0: from max_steps or epochs once items are paired


def _finished_run(out_dir: Path, fp: str) -> TrainResult | None:
    """The finished run with fingerprint ``fp`` in ``out_dir``, if there is one."""
    done = out_dir / _RESULT_FILE
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("fingerprint") == fp and (out_dir / "adapter").is_dir():
            return TrainResult(out_dir / "adapter", prev, cached=True)
    return None


def _prepare_out_dir(out_dir: Path, fp: str, resume: bool, meta: dict,
                     world_size: int = 1) -> tuple[TrainResult | None, Path | None]:
    """(a finished identical run to return, or None; the checkpoint to resume from, or None)."""
    done, run_file = out_dir / _RESULT_FILE, out_dir / _RUN_FILE
    finished = _finished_run(out_dir, fp) if resume else None
    if finished is not None:
        return finished, None
    last = _resumable_checkpoint(out_dir, world_size) if resume else None
    if last is not None:
        prev_fp = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
        if prev_fp != fp:
            raise ConfigError(f"{out_dir} holds checkpoints of a run with different inputs (fingerprint {prev_fp} "
                              f"!= {fp}); delete it, pass resume=False, or choose another out_dir")
    else:
        for p in _checkpoints(out_dir):
            shutil.rmtree(p)
    done.unlink(missing_ok=True)
    write_json(run_file, {"fingerprint": fp, **meta})
    return None, last


def _build_stream(tok, stages: list[Stage], groups: list[str], config: TrainConfig):
    """All stages' items in one dataset, the run's item order over it, per-stage info, truncation,
    and each example kind's share of the run's target tokens."""
    all_items, order, info = [], [], []
    trunc = TruncationStats()
    kinds = sorted({e.kind for st in stages for e in st.examples})
    for si, st in enumerate(stages):
        items, stats = encode_items(tok, st.examples, groups, config.cutoff_len, config.add_bos, kinds)
        for k in ("sequences", "target_truncated", "prompt_truncated"):
            setattr(trunc, k, getattr(trunc, k) + getattr(stats, k))
        steps = st.steps or (config.max_steps or steps_for(len(items), config.epochs, config))
        lengths = [sum(len(s.input_ids) for s in it) for it in items] if config.group_by_length else None
        item_kinds = [it[0].kind for it in items]
        local = item_order(len(items), steps * config.global_batch, config.seed, si, lengths, config.global_batch,
                           item_kinds)
        order += [len(all_items) + j for j in local]
        all_items += items
        info.append({"name": st.name, "steps": steps, "items": len(items), "sequences": stats.sequences})
    share = [0] * len(kinds)
    for i in order:
        for seq in all_items[i]:
            share[seq.kind] += seq.n_target
    total = sum(share) or 1
    kind_share = {k or "main": round(n / total, 4) for k, n in zip(kinds, share)}
    return all_items, order, info, trunc, kind_share


def _training_args(config: TrainConfig, out_dir: Path, total_steps: int, backend: str, cuda: bool, bf16: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=config.per_device_batch,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, max_steps=total_steps,
        lr_scheduler_type=config.scheduler, warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, optim="adamw_torch",
        logging_steps=config.logging_steps, logging_first_step=True, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=1, seed=config.seed, data_seed=config.seed,
        bf16=bf16, use_cpu=not cuda, remove_unused_columns=False,
        # TensorBoard writes to <out_dir>/runs/<date>_<host>, beside the adapter (transformers 5 has no logging_dir)
        report_to=config.report_to if isinstance(config.report_to, str) else list(config.report_to),
        dataloader_num_workers=0, dataloader_pin_memory=cuda,
        gradient_checkpointing=config.gradient_checkpointing and backend == "hf",
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        # several processes: every LoRA weight takes part in every forward, so DDP need not search the graph
        ddp_find_unused_parameters=False,
    )


def train_lora(model_name_or_path: str, examples: list[Example] | list[Stage], config: TrainConfig,
               out_dir: str | Path, resume: bool = True, init_adapter: str | Path | None = None,
               callbacks: list | None = None, keep_checkpoints: bool = False) -> TrainResult:
    """Train a LoRA adapter and save it to ``out_dir/adapter`` (with the tokenizer).

    ``examples``: Examples (one stage of ``config.max_steps`` or ``config.epochs``) or Stages.
    resume=True: a finished run with identical inputs in ``out_dir`` is returned as is; an
    interrupted one continues from its last checkpoint (same data order, optimizer, schedule and
    RNG, so it ends with the adapter an uninterrupted run gives). resume=False starts afresh.
    ``callbacks`` are extra ``transformers.TrainerCallback``s. Checkpoints are deleted at the end
    unless ``keep_checkpoints``.

    ``config.world_size > 1``: called from one process, it launches that many (``_launch``) and waits;
    started by ``torchrun``/``accelerate launch`` with WORLD_SIZE == world_size, every process trains its
    share of each global batch, the main one alone writes ``out_dir``, and all return the same result.
    """
    from nesylib.models import resolve_model

    config.validate()
    check_report_to(config.report_to)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = _as_stages(examples)
    launched = launched_world_size()
    if launched > 1 and launched != config.world_size:
        raise ConfigError(f"started as {launched} processes but TrainConfig.world_size={config.world_size}: set "
                          f"world_size={launched} (the global batch is per_device_batch x grad_accum x world_size, "
                          f"{config.per_device_batch} x {config.grad_accum} x {launched} here)")
    distributed = config.world_size > 1
    # unsloth trains on one GPU; before anything below imports transformers
    backend = "hf" if distributed else pick_backend(config.backend)
    model_path = resolve_model(str(model_name_or_path))
    groups = sorted({e.group for s in stages for e in s.examples})
    unknown = [g for g in groups if g not in config.group_weights]
    if unknown:
        raise ConfigError(f"TrainConfig.group_weights={config.group_weights} has no weight for group(s) {unknown}")
    init = str(init_adapter) if init_adapter else None
    fp = _fingerprint(model_path, stages, config, init)
    if distributed and launched == 1:
        if callbacks:
            raise ConfigError("train_lora: callbacks cannot be passed to launched processes; start your script "
                              "with torchrun or accelerate launch yourself (docs/multi-gpu.md)")
        return _launch(model_path, examples, config, out_dir, resume, init, keep_checkpoints, fp)

    cuda = torch.cuda.is_available()
    rank = init_process_group(cuda) if distributed else 0
    cached = last = None
    if rank == 0:  # the main process alone reads and tidies out_dir; the others follow its decision
        cached, last = _prepare_out_dir(out_dir, fp, resume, {"model": model_path, "init_adapter": init,
                                                              "config": dataclasses.asdict(config)},
                                        config.world_size)
    if distributed:
        cached, last = from_main((cached, last))
    if cached is not None:
        return cached

    model, tok = _load_trainable(model_path, config, backend, init)
    all_items, order, stage_info, trunc, kind_share = _build_stream(tok, stages, groups, config)
    total_steps = sum(s["steps"] for s in stage_info)
    bf16 = use_bf16_autocast(config.bf16_autocast, cuda)
    clock = _step_clock()
    trainer = _trainer_class()(model=model, args=_training_args(config, out_dir, total_steps, backend, cuda, bf16),
                               train_dataset=ItemDataset(all_items), processing_class=tok,
                               data_collator=ItemCollator(tok.pad_token_id, 8 if cuda else None),
                               callbacks=[clock] + list(callbacks or []))
    clock.trainer = trainer
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    slice_ok = backend == "hf" and "logits_to_keep" in inspect.signature(base.forward).parameters
    # per micro-batch of per_device_batch items of the whole stream: under n processes each one's loss is n
    # times its share of the global batch's, and DDP's mean over the n gradients gives one process's sum
    norms = target_token_norms(all_items, order, config.per_device_batch, len(groups))
    trainer.setup(StreamSampler(order), groups, [float(config.group_weights[g]) for g in groups], slice_ok, norms)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    seconds = time.perf_counter() - t0

    hist, marks = trainer.state.log_history, clock.marks
    processed = int(trainer.tokens_processed)
    processed_all = processed
    if distributed:  # also a barrier: every process has written its part of the last checkpoint
        processed_all = total_over_processes(trainer.accelerator, processed, trainer.args.device)
    metrics = None
    adapter = out_dir / "adapter"
    if rank == 0:
        with atomic_dir(adapter) as tmp:  # a unique temporary name: concurrent runs never share it
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        # steady state: from the end of this process's first step (warm-up, allocation) to the last
        span = (marks[-1][0] - marks[1][0]) if len(marks) > 2 else 0.0
        metrics = {
            "fingerprint": fp, "engine": ENGINE_VERSION, "backend": backend, "model": model_path,
            "device": "cuda" if cuda else "cpu", "bf16_autocast": bf16, "steps": total_steps,
            "global_batch": config.global_batch, "world_size": config.world_size,
            "warmup_steps": math.ceil(config.warmup_ratio * total_steps),
            "stages": stage_info,
            "stage_ends": [sum(s["steps"] for s in stage_info[:i + 1]) for i in range(len(stages))],
            "groups": groups, "truncation": trunc.as_dict(), "target_token_share": kind_share,
            "loss_curve": [[h["step"], h["loss"]] for h in hist if "loss" in h],
            "lr_curve": [[h["step"], h["learning_rate"]] for h in hist if "learning_rate" in h],
            "group_loss_curves": {g: [[h["step"], h[f"loss_{g}"]] for h in hist if f"loss_{g}" in h]
                                  for g in groups if len(groups) > 1},
            "tokens_seen": sum(sum(len(s.input_ids) for s in all_items[j]) for j in order),
            "target_tokens_seen": sum(sum(s.n_target for s in all_items[j]) for j in order),
            "resumed_from_step": int(last.name.split("-")[-1]) if last else None,
            "tokens_processed_this_process": processed, "seconds": round(seconds, 2),
            "tokens_per_s": round(processed / seconds, 1) if seconds > 0 else None,
            "tokens_per_s_steady": round((marks[-1][1] - marks[1][1]) / span, 1) if span > 0 else None,
            "seconds_per_step_steady": round(span / (len(marks) - 2), 3) if span > 0 else None,
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        }
        if distributed:
            metrics["tokens_per_s_all_processes"] = round(processed_all / seconds, 1) if seconds > 0 else None
        metrics["final_loss"] = metrics["loss_curve"][-1][1] if metrics["loss_curve"] else None
        write_json(out_dir / _RESULT_FILE, metrics)
        if not keep_checkpoints:
            for p in _checkpoints(out_dir):
                shutil.rmtree(p)
    if distributed:  # the others wait for the main process's files and return its result
        metrics = from_main(metrics)
    return TrainResult(adapter, metrics)


# ------------------------------------------------------------------------------------ several processes: the job
def _launch(model_path: str, examples, config: TrainConfig, out_dir: Path, resume: bool, init: str | None,
            keep_checkpoints: bool, fp: str) -> TrainResult:
    """Train on ``config.world_size`` processes and wait: write the run as ``out_dir/job.json``, start them on it
    (``launch_job``, output to ``out_dir/launch.log``), and return the main process's result. A finished identical
    run is returned without launching anything."""
    finished = _finished_run(out_dir, fp) if resume else None
    if finished is not None:
        return finished
    staged = all(isinstance(s, Stage) for s in examples)
    job = {"model": model_path, "config": dataclasses.asdict(config), "out_dir": str(out_dir), "resume": resume,
           "init_adapter": init, "keep_checkpoints": keep_checkpoints, "fingerprint": fp}
    if staged:
        job["stages"] = [{"name": s.name, "steps": s.steps, "examples": [dataclasses.asdict(e) for e in s.examples]}
                         for s in examples]
    else:
        job["examples"] = [dataclasses.asdict(e) for e in examples]
    job_file = out_dir / _JOB_FILE
    write_json(job_file, job)
    log_file = out_dir / "launch.log"
    rc = launch_job(job_file, config.world_size, log_file)
    result = _finished_run(out_dir, fp)
    if rc != 0 or result is None:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise ModelError(f"training on {config.world_size} processes failed (exit status {rc}"
                         f"{'' if rc else ', no finished run with this fingerprint'}); the end of {log_file}:\n{tail}")
    result.cached = False
    return result


def run_job(job_file: str | Path) -> TrainResult:
    """``train_lora`` on the run a job file describes (``python -m nesylib train-job``, one per process)."""
    job = json.loads(Path(job_file).read_text())
    config = TrainConfig(**job["config"])
    if "stages" in job:
        examples = [Stage([Example(**e) for e in st["examples"]], st["steps"], st["name"]) for st in job["stages"]]
    else:
        examples = [Example(**e) for e in job["examples"]]
    return train_lora(job["model"], examples, config, job["out_dir"], resume=job.get("resume", True),
                      init_adapter=job.get("init_adapter"), keep_checkpoints=job.get("keep_checkpoints", False))


# ------------------------------------------------------------------------------------ after training
def _tokenizer_dir(base_path: str, adapter_dir: Path) -> str:
    return str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base_path


def merge_adapter(base: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Merge a LoRA adapter into its base model and save a plain transformers folder (D20)."""
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
