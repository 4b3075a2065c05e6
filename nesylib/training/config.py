"""What a training run is: its hyper-parameters (``TrainConfig``), stages, result, step budget and content key.

Kept apart from the engine (``nesylib.training.engine``) so that presets, notebooks and caches can read and validate a
recipe without importing torch or transformers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nesylib.errors import ConfigError
from nesylib.files import sha256_file
from nesylib.methods.prompts import Example

ENGINE_VERSION = "e3"  # bump when a change alters what a run with the same inputs produces
BACKENDS = ("auto", "hf", "unsloth")
# tracking only: never changes the weights, so it stays out of every key (existing students stay cached)
TRACKING_ONLY = ("report_to",)
NOT_IN_FINGERPRINT = ("save_steps", "logging_steps") + TRACKING_ONLY  # bookkeeping: may change across a resume
# fields added after students were trained: left out of every key at this value, so existing keys stay as they were
KEYED_UNLESS_DEFAULT = {"world_size": 1}
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


def run_steps(n_items: int, config: TrainConfig) -> int:
    """The optimizer steps a run on ``n_items`` items trains: ``config.max_steps`` when set, else
    ``config.epochs`` passes (the Std-CoT budget that S_E's "std" budget and SKIntern's stages share)."""
    return config.max_steps or steps_for(n_items, config.epochs, config)


# ------------------------------------------------------------------------------------ keys
def config_key(config: TrainConfig, leave_out=()) -> dict:
    """The config's fields for a key (the run's fingerprint, the student's folder): all but ``leave_out``, and
    those of KEYED_UNLESS_DEFAULT only where they differ from that value."""
    return {k: v for k, v in dataclasses.asdict(config).items()
            if k not in leave_out and not (k in KEYED_UNLESS_DEFAULT and v == KEYED_UNLESS_DEFAULT[k])}


def fingerprint(model_path: str, stages: list[Stage], config: TrainConfig, init_adapter: str | None) -> str:
    """A training run's content key: engine version, base model, keyed config, initial adapter, and every
    stage's steps and examples. A finished run with the same key is reused; a checkpoint resumes only under it."""
    cfg = config_key(config, NOT_IN_FINGERPRINT)
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
