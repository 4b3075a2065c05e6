"""Data-parallel training on several processes (docs/multi-gpu.md): starting them with a launcher, joining their
process group, and the collective steps by which they agree. ``nesylib.training.engine`` calls it; it knows nothing
of the trainer itself."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import torch

from nesylib.errors import ModelError

LAUNCHER_ENV = "NESYLIB_LAUNCHER"  # command prefix that starts {n} processes; default: torchrun --standalone


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started this one among; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_process_group(cuda: bool) -> int:
    """Join the launcher's process group (NCCL on GPUs, or DeepSpeed's under accelerate's DeepSpeed config;
    gloo on CPUs) before anything else, as ``Trainer`` would; returns this process's rank."""
    from accelerate import PartialState

    return PartialState(cpu=not cuda).process_index


def from_main(obj):
    """``obj`` as the main process (rank 0) has it, in every process; a barrier as well."""
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def total_over_processes(accelerator, value: int, device) -> int:
    """``value`` summed over every process; a barrier as well."""
    return int(accelerator.reduce(torch.tensor(value, device=device), reduction="sum"))


def pool_over_processes(accelerator, device, sums: dict, counts: dict, n: int) -> tuple[dict, dict]:
    """Per key 0..n-1, the ``sums`` and ``counts`` of every process added up (keys no process has are left out);
    every process must call it at the same point."""
    both = torch.tensor([[float(sums.get(g, 0.0)), counts.get(g, 0)] for g in range(n)], device=device)
    both = accelerator.reduce(both, reduction="sum").tolist()
    return {g: s for g, (s, c) in enumerate(both) if c > 0}, {g: int(c) for g, (s, c) in enumerate(both) if c > 0}


def check_dealt_loader(loader, args, sampler) -> None:
    """Under n processes accelerate's ``prepare`` wraps the loader's batches of the whole stream in a
    ``BatchSamplerShard``: process r gets micro-batches r, r + n, r + 2n, ... of per_device_batch items, so the
    n x grad_accum micro-batches of one optimizer step are exactly the step's contiguous global batch of the
    stream (``sampler``), each item once. Any other wrapping would train on other batches: raise."""
    n = args.world_size
    shard = getattr(loader, "batch_sampler", None)
    inner = getattr(shard, "batch_sampler", None)
    if not (type(shard).__name__ == "BatchSamplerShard" and shard.num_processes == n
            and shard.process_index == args.process_index and not shard.split_batches
            and getattr(inner, "sampler", None) is sampler
            and getattr(inner, "batch_size", None) == args.per_device_train_batch_size):
        raise ModelError(f"the training data loader under {n} processes is not the stream cut into "
                         f"per-device micro-batches dealt round-robin ({type(shard).__name__}); the "
                         f"global batches would differ from one process's")


def load_optimizer_on_cpus(trainer, checkpoint) -> bool:
    """Several CPU processes: load the checkpoint's optimizer and scheduler state onto "cpu", since ``Trainer``
    maps the optimizer state to args.device, 'cpu:0', which torch.load does not know as a location (transformers
    5.17). False, loading nothing, in every other case (``Trainer``'s own loading applies)."""
    opt, sched = (Path(checkpoint) / "optimizer.pt", Path(checkpoint) / "scheduler.pt") if checkpoint \
        else (None, None)
    if (checkpoint is None or trainer.args.world_size == 1 or trainer.args.device.type != "cpu"
            or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or not (opt.is_file() and sched.is_file())):
        return False
    trainer.optimizer.load_state_dict(torch.load(opt, map_location="cpu", weights_only=True))
    trainer.lr_scheduler.load_state_dict(torch.load(sched, weights_only=True))
    return True


def missing_rng_states(ckpt: Path, world_size: int) -> list[int]:
    """The processes whose RNG state ``ckpt`` lacks: under several processes each writes its own
    (``rng_state_<rank>.pth``), possibly after the main one wrote the trainer state."""
    return [r for r in range(world_size) if world_size > 1 and not (ckpt / f"rng_state_{r}.pth").is_file()]


def launch_job(job_file: Path, world_size: int, log_file: Path) -> int:
    """Start ``$NESYLIB_LAUNCHER`` (``{n}``: the process count; default ``torchrun --standalone --nproc_per_node
    {n}``) on ``python -m nesylib train-job job_file``, its output to ``log_file``, and wait; returns its exit
    status. Interrupted, it stops the launcher and its workers."""
    template = os.environ.get(LAUNCHER_ENV) or \
        f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone --nproc_per_node {{n}}"
    cmd = shlex.split(template.replace("{n}", str(world_size))) + ["-m", "nesylib", "train-job", str(job_file)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # this process's cached blocks would crowd the workers on GPU 0
    print(f"training on {world_size} processes: {shlex.join(cmd)}  (output: {log_file})", flush=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait()
        except BaseException:  # interrupted: stop the launcher and its workers (their own process group)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
