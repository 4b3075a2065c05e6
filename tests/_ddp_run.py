"""One instrumented ``train_lora`` run for tests/test_ddp.py: started by ``python`` (one process) or by
``torchrun --nproc_per_node 2`` (two). Each process records, per micro-batch, the optimizer step, the item
indices it trained on and its loss; every file nesylib or the Trainer's model save writes; the run's item
order; and the result it returned. It writes them to ``<log_dir>/rank<r>.json``.

    python tests/_ddp_run.py MODEL_DIR OUT_DIR LOG_DIR WORLD_SIZE PER_DEVICE_BATCH
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import nesylib.training.checkpoints as C
import nesylib.training.engine as T
from nesylib.methods.prompts import Example

rank = int(os.environ.get("RANK", "0"))
rec = {"rank": rank, "micro": [], "writes": [], "order": None}


def examples():
    """Multi-task records (a rationale and an answer sequence per item, two loss groups) of varied length."""
    out = []
    for i in range(12):
        words = " ".join(["step"] * (i % 5))
        out += [Example(f"Q{i}: add {i} and {i}.\n[Explanation Generation]: ",
                        f"Adding {i} to itself {words} doubles it. Therefore, the answer is {2 * i}.", "rationale",
                        f"t/m/{i}"),
                Example(f"Q{i}: add {i} and {i}.\n[Answer Prediction]: ", f"{2 * i}.", "answer", f"t/m/{i}")]
    return out


def config(world_size: int, per_device: int) -> T.TrainConfig:
    return T.TrainConfig(lora_r=4, lora_alpha=8, max_steps=4, per_device_batch=per_device, grad_accum=2,
                         world_size=world_size, warmup_ratio=0.0, lr=5e-3, cutoff_len=128, logging_steps=1,
                         save_steps=2, seed=7, bf16_autocast=False)


class Tagged(list):
    """An item that remembers its index in the dataset."""
    idx = -1


class TaggingDataset(T.ItemDataset):
    def __getitem__(self, i):
        item = Tagged(self.items[i])
        item.idx = i
        return item


class TaggingCollator(T.ItemCollator):
    def __call__(self, batch):
        out = super().__call__(batch)
        out["item_idx"] = torch.tensor([it.idx for it in batch])
        return out


class RecordingSampler(T.StreamSampler):
    def __init__(self, order):
        super().__init__(order)
        rec["order"] = list(order)


_original_trainer_class = T._trainer_class


def recording_trainer_class():
    base = _original_trainer_class()

    class Recording(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            idx = inputs.pop("item_idx").tolist()
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                rec["micro"].append({"step": self.state.global_step, "items": idx,
                                     "loss": float((loss[0] if return_outputs else loss).detach())})
            return loss

        def _save(self, output_dir=None, state_dict=None):
            rec["writes"].append(f"Trainer._save {Path(output_dir).name}")
            return super()._save(output_dir, state_dict)

    return Recording


def recording(fn, label):
    def wrapped(path, *a, **k):
        rec["writes"].append(f"{label} {Path(path).name}")
        return fn(path, *a, **k)
    return wrapped


class KeepStep2(TrainerCallback):
    """Copy checkpoint-2 aside once step 3 has ended: its all-reduce means every process finished saving it
    (the checkpoint rotation of save_total_limit=1 deletes it at step 4)."""

    def __init__(self, out_dir, log_dir):
        self.out_dir, self.log_dir = Path(out_dir), Path(log_dir)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3 and rank == 0:
            shutil.copytree(self.out_dir / "checkpoint-2", self.log_dir / "checkpoint-2")


def instrumented_run(model_dir, out_dir, log_dir, world_size: int, per_device: int) -> dict:
    """``train_lora`` with the recording stand-ins in place (restored afterwards); returns and writes the record."""
    rec.update(micro=[], writes=[], order=None)
    names = ("ItemDataset", "ItemCollator", "StreamSampler", "_trainer_class", "write_json", "atomic_dir")
    saved = {n: getattr(T, n) for n in names}
    saved_run_file_writer = C.write_json  # the run folder's run.json is written by nesylib.training.checkpoints
    T.ItemDataset, T.ItemCollator, T.StreamSampler = TaggingDataset, TaggingCollator, RecordingSampler
    T._trainer_class = recording_trainer_class
    T.write_json = recording(saved["write_json"], "write_json")
    C.write_json = recording(saved_run_file_writer, "write_json")
    T.atomic_dir = recording(saved["atomic_dir"], "atomic_dir")
    try:
        res = T.train_lora(model_dir, examples(), config(world_size, per_device), out_dir, resume=False,
                           callbacks=[KeepStep2(out_dir, log_dir)], keep_checkpoints=True)
    finally:
        for n, v in saved.items():
            setattr(T, n, v)
        C.write_json = saved_run_file_writer
    rec["result"] = {"adapter_dir": str(res.adapter_dir), "metrics": res.metrics, "cached": res.cached}
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps(rec, default=str))
    return json.loads(json.dumps(rec, default=str))


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes share a 2-core machine
    model_dir, out_dir, log_dir, world_size, per_device = sys.argv[1:6]
    instrumented_run(model_dir, out_dir, log_dir, int(world_size), int(per_device))
