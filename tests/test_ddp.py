"""Data-parallel training of one student (docs/multi-gpu.md): two gloo processes on this CPU train what one
process with the same global batch trains (same items per step, same loss curve, same adapter); only the main
process writes; an interrupted two-process run resumes when ``train_lora`` launches the processes itself."""
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from nesylib.errors import ConfigError
from nesylib.methods.prompts import Example
from nesylib.training.sft_data import StreamSampler, item_order
from nesylib.methods.students import student_dir
from nesylib.training.loss import group_weighted_ce, target_token_norms
from nesylib.training.engine import Stage, TrainConfig, fingerprint, load_student, steps_for, train_lora

HERE = Path(__file__).resolve().parent
# measured: loss curves agree to 1e-7 relative (float32 rounding: other padding widths, the gradient all-reduce);
# the adapters after 4 Adam steps to 2e-6 absolute on weights of size ~0.1
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4


def _ex(n):
    return [Example(f"Q{i}? ", f"A{i}.", "main", f"u/{i}") for i in range(n)]


def test_global_batch_counts_processes_and_world_size_1_keeps_every_key():
    one, two = TrainConfig(per_device_batch=16, grad_accum=2), TrainConfig(per_device_batch=16, grad_accum=1,
                                                                          world_size=2)
    assert one.global_batch == two.global_batch == 32  # D10: the authors' 16 per device x 2 GPUs
    assert steps_for(100, 2, two) == steps_for(100, 2, one) == 7
    assert TrainConfig(per_device_batch=8, grad_accum=2, world_size=4).global_batch == 64
    stages = [Stage(_ex(4), 0, "main")]
    # computed before world_size existed: trained students keep their fingerprint and their folder
    assert fingerprint("m", stages, TrainConfig(), None) == "c43d72f8b62fc70a"
    assert fingerprint("m", stages, TrainConfig(world_size=1), None) == "c43d72f8b62fc70a"
    # the student folder's key: the examples as JSON (was their repr() until the one content-key change)
    assert student_dir("/r", "std", _ex(4), TrainConfig(world_size=1), "m").name == "std-78a4042d5189ef87"
    assert fingerprint("m", stages, TrainConfig(world_size=2), None) != "c43d72f8b62fc70a"
    assert student_dir("/r", "std", _ex(4), TrainConfig(world_size=2), "m").name != "std-78a4042d5189ef87"
    with pytest.raises(ConfigError, match="world_size"):
        TrainConfig(world_size=0).validate()
    with pytest.raises(ConfigError, match="unsloth"):
        TrainConfig(world_size=2, backend="unsloth").validate()


def test_launched_world_size_must_match_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="world_size=2"):
        train_lora("tiny-llama", _ex(4), TrainConfig(max_steps=1), tmp_path)


def test_accelerate_deals_the_stream_so_each_step_is_one_global_batch():
    """What ``accelerator.prepare`` makes of the StreamSampler's loader under 2 processes (BatchSamplerShard):
    process r gets micro-batches r, r+2, ...; the 2 x grad_accum micro-batches of step s are exactly
    order[s*G:(s+1)*G], each item once, and micro-batch j of both processes is one process's j-th at 2x size."""
    from accelerate.data_loader import prepare_data_loader

    per_device, accum, world, steps = 3, 2, 2, 4
    g = per_device * accum * world
    order = item_order(40, g * steps, seed=0, stage=0)  # two passes: a step holds the end of one and start of next
    dealt = []
    for r in range(world):
        loader = DataLoader(list(range(40)), batch_size=per_device, sampler=StreamSampler(order))
        dealt.append([b.tolist() for b in prepare_data_loader(loader, num_processes=world, process_index=r,
                                                              put_on_device=False)])
    single = [b.tolist() for b in DataLoader(list(range(40)), batch_size=per_device * world,
                                             sampler=StreamSampler(order))]
    for s in range(steps):
        micro = [dealt[r][s * accum + j] for r in range(world) for j in range(accum)]
        assert Counter(i for b in micro for i in b) == Counter(order[s * g:(s + 1) * g])
        for j in range(accum):
            assert dealt[0][s * accum + j] + dealt[1][s * accum + j] == single[s * accum + j]


def test_loss_normalisation_gives_one_process_gradient_under_ddp_averaging():
    """Per micro-batch losses with the stream's norms at per_device_batch items, divided by grad_accum and
    averaged over processes (what Trainer + DDP do), give the gradient of one process at twice the batch."""
    torch.manual_seed(0)
    n_items, length, vocab, accum, per_device = 16, 5, 7, 2, 2
    logits = torch.randn(n_items, length, vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n_items, length))
    targets[torch.rand(n_items, length) < 0.4] = -100
    groups = torch.tensor([i % 2 for i in range(n_items)])
    weights = torch.tensor([0.7, 0.3])

    items = []
    for i in range(n_items):
        seq = type("S", (), {"group": int(groups[i]), "n_target": int((targets[i] != -100).sum())})()
        items.append([seq])
    order = list(range(n_items))

    def grad(batch, world):
        norms = torch.tensor(target_token_norms(items, order, batch, 2))
        grads = []
        for r in range(world):  # process r: micro-batches r, r + world, ...
            logits.grad = None
            loss = 0
            for k in range(r, n_items // batch, world):
                sl = slice(k * batch, (k + 1) * batch)
                loss = loss + group_weighted_ce(logits[sl], targets[sl], groups[sl], weights, norms)[0] / accum
            loss.backward()
            grads.append(logits.grad.clone())
        return sum(grads) / world  # DDP's all-reduce mean

    torch.testing.assert_close(grad(per_device, 2), grad(2 * per_device, 1), rtol=1e-6, atol=1e-7)


def test_zero2_config_is_valid_for_accelerate(monkeypatch):
    """configs/accelerate/zero2.yaml passes ``accelerate launch``'s own checks and gives a ZeRO-2 DeepSpeed plugin
    whose batch, accumulation, clipping and precision are left to the Trainer ("auto"); DeepSpeed itself need not
    be installed for this."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    monkeypatch.chdir(HERE.parent)  # the yaml names the json relative to the repository root
    assert load_config_from_file("configs/accelerate/zero2.yaml").distributed_type == "DEEPSPEED"
    assert load_config_from_file("configs/accelerate/ddp.yaml").distributed_type == "MULTI_GPU"
    args = launch_command_parser().parse_args(["--config_file", "configs/accelerate/zero2.yaml", "--num_processes",
                                               "4", "-m", "nesylib", "train-job", "job.json"])
    args, defaults, from_config = _validate_launch_command(args)
    assert args.use_deepspeed and args.num_processes == 4 and args.module and not from_config
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    for k, v in env.items():
        if k.startswith("ACCELERATE_"):
            monkeypatch.setenv(k, v)
    plugin = DeepSpeedPlugin()  # what every launched process builds from that environment
    cfg = plugin.hf_ds_config.config
    assert plugin.zero_stage == 2 and cfg["zero_optimization"]["stage"] == 2
    assert all(cfg[k] == "auto" for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                         "gradient_accumulation_steps", "gradient_clipping"))
    assert cfg["bf16"]["enabled"] == "auto" and cfg["zero_allow_untested_optimizer"] is True


def _run(cmd, env, timeout=240):
    t0 = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return time.time() - t0


def _step_loss(recs, step):
    """A step's loss as Trainer logs it: the mean over processes of each one's micro-batch losses / grad_accum."""
    per_rank = [sum(m["loss"] for m in r["micro"] if m["step"] == step) / 2 for r in recs]
    return sum(per_rank) / len(per_rank)


def test_two_processes_train_what_one_process_trains(tiny_model_dir, tmp_path, monkeypatch):
    import _ddp_run
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = str(HERE / "_ddp_run.py")
    one, two = tmp_path / "one", tmp_path / "two"
    # one process, 4 items per micro-batch x 2 accumulation = global 8; two processes, 2 items each x 2 x 2 = 8
    t0 = time.time()
    single = _ddp_run.instrumented_run(str(tiny_model_dir), one, tmp_path / "log1", 1, 4)  # in this process
    single_s = time.time() - t0
    two_s = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
                  str(tiny_model_dir), str(two), str(tmp_path / "log2"), "2", "2"], env)
    ranks = [json.loads((tmp_path / "log2" / f"rank{r}.json").read_text()) for r in range(2)]

    # the same stream, and per optimizer step the same global batch: each item once over both processes
    order = single["order"]
    assert ranks[0]["order"] == ranks[1]["order"] == order and len(order) == 4 * 8
    for s in range(4):
        seen_one = Counter(i for m in single["micro"] if m["step"] == s for i in m["items"])
        seen_two = Counter(i for r in ranks for m in r["micro"] if m["step"] == s for i in m["items"])
        assert seen_one == seen_two == Counter(order[s * 8:(s + 1) * 8])
        for r, rec in enumerate(ranks):  # process r's j-th micro-batch: the stream's micro-batch 2 * (2s + j) + r
            micro = [m["items"] for m in rec["micro"] if m["step"] == s]
            assert micro == [order[(2 * (2 * s + j) + r) * 2:(2 * (2 * s + j) + r + 1) * 2] for j in range(2)]

    # the same loss per step (recorded per micro-batch, and as Trainer logged it) and the same adapter
    m1, m2 = single["result"]["metrics"], ranks[0]["result"]["metrics"]
    for s in range(4):
        assert _step_loss(ranks, s) == pytest.approx(_step_loss([single], s), rel=LOSS_RTOL)
    assert [s for s, _ in m2["loss_curve"]] == [1, 2, 3, 4]
    for (s1, l1), (s2, l2) in zip(m1["loss_curve"], m2["loss_curve"]):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=LOSS_RTOL)
    assert set(m2["group_loss_curves"]) == {"answer", "rationale"}  # pooled over both processes
    assert m2["world_size"] == 2 and m2["global_batch"] == m1["global_batch"] == 8 and m2["steps"] == 4
    w1, w2 = load_file(one / "adapter" / "adapter_model.safetensors"), load_file(two / "adapter" /
                                                                                 "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=WEIGHT_ATOL)

    # only the main process wrote (the Trainer's checkpoints too), both returned the same result
    assert ranks[1]["writes"] == []
    assert ranks[0]["writes"] == single["writes"] == ["write_json run.json", "Trainer._save checkpoint-2",
                                                      "Trainer._save checkpoint-4", "atomic_dir adapter",
                                                      "write_json train_result.json"]
    assert ranks[0]["result"] == ranks[1]["result"]
    assert json.loads((two / "train_result.json").read_text()) == m2
    # each process keeps its own RNG state in a checkpoint (exact resume); rank 0 writes everything else
    assert {p.name for p in (two / "checkpoint-4").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}

    # resume: a run interrupted after step 2, continued by train_lora launching 2 processes itself
    three = tmp_path / "three"
    three.mkdir()
    shutil.copy(two / "run.json", three / "run.json")
    shutil.copytree(tmp_path / "log2" / "checkpoint-2", three / "checkpoint-2")
    for k in ("PYTHONPATH", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(k, env[k])
    t0 = time.time()
    res = train_lora(str(tiny_model_dir), _ddp_run.examples(), _ddp_run.config(2, 2), three)
    launched_s = time.time() - t0
    assert not res.cached and res.metrics["resumed_from_step"] == 2 and res.metrics["fingerprint"] == m2["fingerprint"]
    job = json.loads((three / "job.json").read_text())
    assert job["config"]["world_size"] == 2 and len(job["examples"]) == 24 and (three / "launch.log").is_file()
    assert not list(three.glob("checkpoint-*"))  # deleted at the end (keep_checkpoints=False)
    for (s1, l1), (s3, l3) in zip(m2["loss_curve"], res.metrics["loss_curve"]):
        assert s1 == s3 and l3 == pytest.approx(l1, rel=LOSS_RTOL)
    w3 = load_file(three / "adapter" / "adapter_model.safetensors")
    for k in w2:
        torch.testing.assert_close(w3[k], w2[k], rtol=0, atol=WEIGHT_ATOL)
    again = train_lora(str(tiny_model_dir), _ddp_run.examples(), _ddp_run.config(2, 2), three)
    assert again.cached  # found without launching anything

    # the adapter loads and generates
    model, tok = load_student(str(tiny_model_dir), res.adapter_dir)
    enc = tok(["Q3: add 3 and 3.\n[Answer Prediction]: "], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    print(f"one process {single_s:.1f} s, torchrun 2 processes {two_s:.1f} s, self-launched resume {launched_s:.1f} s")
