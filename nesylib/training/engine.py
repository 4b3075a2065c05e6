"""LoRA SFT engine for every student (method.md §2.2, §2.3, D10, D11, D17, D18).

Runs on ``transformers.Trainer`` (trl's SFTTrainer breaks on CPU torch, stack.md gotcha 2):
response-only token cross-entropy, the multi-task weighted loss, seeded data order, resumable
checkpoints, and the unsloth or transformers+peft backend.

    from nesylib.training.backends import pick_backend  # importing it does not import transformers
    backend = pick_backend()  # first cell: unsloth must patch transformers before anyone imports it
    from nesylib.methods.formats import examples_for
    from nesylib.training.engine import TrainConfig, train_lora, merge_adapter  # merge_adapter: training.adapters
    res = train_lora("smollm2-135m", examples_for("std", recs), TrainConfig(epochs=2), "runs/x/std")
    merged = merge_adapter("smollm2-135m", res.adapter_dir, "runs/x/std/merged")

Staged training (SKIntern, D17): pass a list of ``Stage``s instead of Examples. One adapter, one
optimizer and one cosine schedule (with warmup) span all stages; stage t's examples (rendered by
the caller for stage t) are used for exactly its ``steps`` optimizer steps:

    total = steps_for(len(train_records), 10, cfg)          # the Std-CoT 10-epoch budget
    stages = [Stage(examples_t, steps=n, name=f"t{t}") for t, n in enumerate(steps_per_stage(total, T=6))]  # curriculum
    train_lora("smollm2-135m", stages, cfg, out_dir)

``init_adapter=`` starts from a saved adapter instead (a fresh optimizer and schedule).

Several GPUs (data parallel, docs/multi-gpu.md): ``TrainConfig(world_size=N)`` trains one student on N
processes; the global batch is per_device_batch x grad_accum x world_size. Called from one process (a
notebook), ``train_lora`` launches ``torchrun`` (or ``$NESYLIB_LAUNCHER``, e.g. ``accelerate launch`` with
configs/accelerate/zero2.yaml) on ``python -m nesylib train-job`` and waits; under a launcher it trains its share.
The process handling itself is ``nesylib.training.distributed``; the recipe and run key are
``nesylib.training.config``; the backend, dtype and model loading ``nesylib.training.backends``; the loss
``nesylib.training.loss``; the run folder and its checkpoints ``nesylib.training.checkpoints``; saved adapters
(merge, export, load) ``nesylib.training.adapters``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from nesylib.training.adapters import export_model, load_student, merge_adapter  # noqa: F401 (this module's API)
from nesylib.training.backends import _load_trainable, pick_backend, use_bf16_autocast
from nesylib.training.checkpoints import RESULT_FILE, checkpoints, finished_run, prepare_out_dir
from nesylib.files import atomic_dir, write_json
from nesylib.training.distributed import (check_dealt_loader, from_main, init_process_group, launch_job,
                                          launched_world_size, load_optimizer_on_cpus, pool_over_processes,
                                          total_over_processes)
from nesylib.errors import ConfigError, ModelError
from nesylib.training.loss import group_weighted_ce, target_token_norms
from nesylib.methods.prompts import Example
from nesylib.training.sft_data import (ItemCollator, ItemDataset, StreamSampler, TruncationStats, encode_items,
                                       item_order)
from nesylib.training.config import (BACKENDS, ENGINE_VERSION, KEYED_UNLESS_DEFAULT, REPORT_TO_PACKAGES,  # noqa: F401
                                     TRACKING_ONLY, Stage, TrainConfig, TrainResult, check_report_to, config_key,
                                     fingerprint, run_steps, steps_for)

_JOB_FILE = "job.json"

_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ the trainer
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
        steps = st.steps or run_steps(len(items), config)
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
    fp = fingerprint(model_path, stages, config, init)
    if distributed and launched == 1:
        if callbacks:
            raise ConfigError("train_lora: callbacks cannot be passed to launched processes; start your script "
                              "with torchrun or accelerate launch yourself (docs/multi-gpu.md)")
        return _launch(model_path, examples, config, out_dir, resume, init, keep_checkpoints, fp)

    cuda = torch.cuda.is_available()
    rank = init_process_group(cuda) if distributed else 0
    cached = last = None
    if rank == 0:  # the main process alone reads and tidies out_dir; the others follow its decision
        cached, last = prepare_out_dir(out_dir, fp, resume, {"model": model_path, "init_adapter": init,
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
        write_json(out_dir / RESULT_FILE, metrics)
        if not keep_checkpoints:
            for p in checkpoints(out_dir):
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
    finished = finished_run(out_dir, fp) if resume else None
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
    result = finished_run(out_dir, fp)
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
