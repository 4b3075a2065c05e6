"""Tracking and export: ``train.report_to`` (validation, a missing package named before training, fingerprints
unchanged, passed to TrainingArguments) and ``python -m nesylib export-model`` (a merged folder that generates
exactly what base + adapter generates; its error cases)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from nesylib.cli import main
from nesylib.errors import ConfigError
from nesylib.generation.generate import generate_batch
from nesylib.methods.prompts import Example
from nesylib.methods.students import student_dir, train_config
from nesylib.training.engine import (REPORT_TO_PACKAGES, Stage, TrainConfig, fingerprint, _training_args,
                                     check_report_to, load_student, train_lora)

PROMPTS = ["Question 3: what is 3 plus 3?\nAnswer: ", "Question 11: what is 11 plus 11?\nAnswer: ",
           "Q: Is the sky green?\nA: ", "Hello"]


def _std(n):
    return [Example(f"Question {i}: what is {i} plus {i}?\nAnswer: Let's think step by step. ",
                    f"{i} plus {i} is {2 * i}. Therefore, the answer is {2 * i}.", "main", f"t/x/{i}")
            for i in range(n)]


def _greedy(model, tok):
    outs = generate_batch(model, tok, PROMPTS, max_new_tokens=16, batch_size=len(PROMPTS), stop_strings=(),
                          stop_on_repetition=False, progress=False)
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    # 2 steps at a high rate: the adapter must change what the random tiny model generates
    cfg = TrainConfig(lora_r=4, lora_alpha=8, max_steps=2, per_device_batch=2, grad_accum=1, warmup_ratio=0.0,
                      lr=5e-2, cutoff_len=128, logging_steps=1, save_steps=100)
    return train_lora(str(tiny_model_dir), _std(4), cfg, tmp_path_factory.mktemp("student")).adapter_dir


def _cli(capsys, *args):
    rc = main(["export-model", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err.strip()


# ---------------------------------------------------------------------------------------- export-model
def test_exported_model_generates_what_base_plus_adapter_does(tiny_model_dir, adapter, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    rc, stdout, _ = _cli(capsys, "--adapter", adapter, "--out", out)  # base: from adapter_config.json
    assert rc == 0 and str(out) in stdout and "MiB" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names and "adapter_config.json" not in names
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temporary sibling was renamed

    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    tok = AutoTokenizer.from_pretrained(out)
    tok.padding_side = "left"
    exported = _greedy(model, tok)
    peft_model, peft_tok = load_student(str(tiny_model_dir), adapter, merged=False)
    assert _greedy(peft_model, peft_tok) == exported
    base, base_tok = load_student(str(tiny_model_dir))
    assert _greedy(base, base_tok) != exported  # the adapter was merged in, not just the base copied


def test_export_force_base_name_and_dtype(adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("x")
    rc, _, err = _cli(capsys, "--adapter", adapter, "--out", out, "--base", "tiny-llama", "--dtype", "bfloat16")
    assert rc == 2 and (out / "old.txt").is_file()  # refused: not empty, left as it was
    rc, stdout, _ = _cli(capsys, "--adapter", adapter, "--out", out, "--base", "tiny-llama", "--dtype", "bfloat16",
                         "--force")
    assert rc == 0 and str(out) in stdout and not (out / "old.txt").exists()
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_export_errors_name_the_path(adapter, tmp_path, capsys):
    missing = tmp_path / "nope"
    rc, _, err = _cli(capsys, "--adapter", missing, "--out", tmp_path / "o1")
    assert rc == 2 and str(missing) in err and "not found" in err and "\n" not in err

    not_adapter = tmp_path / "not_adapter"
    not_adapter.mkdir()
    (not_adapter / "README").write_text("x")
    rc, _, err = _cli(capsys, "--adapter", not_adapter, "--out", tmp_path / "o2")
    assert rc == 2 and str(not_adapter) in err and "adapter_config.json" in err and "\n" not in err

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    rc, _, err = _cli(capsys, "--adapter", adapter, "--out", full)
    assert rc == 2 and str(full) in err and "not empty" in err and "--force" in err and "\n" not in err
    assert (full / "keep.txt").read_text() == "mine" and [p.name for p in full.iterdir()] == ["keep.txt"]

    moved = tmp_path / "moved_adapter"  # an adapter whose recorded base folder is not on this machine
    moved.mkdir()
    for p in adapter.iterdir():
        (moved / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    rc, _, err = _cli(capsys, "--adapter", moved, "--out", tmp_path / "o3")
    assert rc == 2 and str(tmp_path / "gone" / "base") in err and "--base" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_export_model_command_exits_nonzero(tmp_path):
    missing = tmp_path / "nope"
    p = subprocess.run([sys.executable, "-m", "nesylib", "export-model", "--adapter", str(missing), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and str(missing) in p.stderr and "not found" in p.stderr


# ---------------------------------------------------------------------------------------- report_to
@pytest.mark.parametrize("bad", ["tensorbord", "None", "", [], ["none"], ["all"], ["wandb", "nope"], 3, None])
def test_report_to_bad_values_name_the_parameter(bad):
    with pytest.raises(ConfigError, match=r"train\.report_to"):
        TrainConfig(report_to=bad).validate()


def test_report_to_good_values_and_preset_parsing():
    for good in ("none", "all", "tensorboard", "wandb", ["wandb", "mlflow"], ("tensorboard",)):
        assert TrainConfig(report_to=good).validate().report_to == good
    assert TrainConfig().report_to == "none"
    common = yaml.safe_load("train: {max_steps: 2, report_to: tensorboard}")
    assert train_config(common["train"]).report_to == "tensorboard"
    common = yaml.safe_load("train: {report_to: [wandb, mlflow]}")
    assert train_config(common["train"]).report_to == ["wandb", "mlflow"]
    with pytest.raises(ConfigError, match=r"train\.report_to"):
        train_config({"report_to": "tensorbord"})


def test_report_to_names_match_transformers():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(REPORT_TO_PACKAGES) == set(INTEGRATION_TO_CALLBACK)


def _hide(monkeypatch, *modules):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in modules else real(name, *a, **k))


def test_missing_integration_package_fails_before_training(tiny_model_dir, tmp_path, monkeypatch):
    _hide(monkeypatch, "tensorboard")
    out = tmp_path / "run"
    cfg = TrainConfig(report_to="tensorboard", max_steps=1, per_device_batch=1, grad_accum=1, lora_r=4)
    with pytest.raises(ConfigError, match=r"train\.report_to.*'tensorboard' package.*pip install tensorboard"):
        train_lora(str(tiny_model_dir), _std(2), cfg, out)
    assert not out.exists()  # nothing loaded or written: it failed before the run began
    # dagshub is "installed" but mlflow, which it also needs, is not
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "mlflow" else object())
    with pytest.raises(ConfigError, match="pip install mlflow"):
        check_report_to(["dagshub"])


def test_installed_integration_packages_pass(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object())
    for rt in ("tensorboard", ["wandb", "mlflow", "dagshub"], "all", "none"):
        check_report_to(rt)


def test_report_to_leaves_fingerprint_and_student_folder_unchanged():
    stages = [Stage(_std(4), 0, "main")]
    default = fingerprint("base-model", stages, TrainConfig(), None)
    for rt in ("tensorboard", ["wandb", "mlflow"]):
        assert fingerprint("base-model", stages, TrainConfig(report_to=rt), None) == default
    # computed with the code before report_to existed: already-trained students keep their fingerprint and folder
    assert default == "5846379e308f2cc6"
    folder = student_dir("/r", "std", _std(4), TrainConfig(report_to="tensorboard"), "base-model")
    assert folder == student_dir("/r", "std", _std(4), TrainConfig(), "base-model")
    assert folder.name == "std-5389bc66b7b4040b"  # the examples keyed as JSON (they were repr() before)
    assert fingerprint("base-model", stages, TrainConfig(lr=1e-3), None) != default  # weights settings still count


def test_training_arguments_receive_report_to(tmp_path):
    def args(rt):
        return _training_args(TrainConfig(report_to=rt), tmp_path, 2, "hf", False, False)
    assert args("none").report_to == []
    assert args("tensorboard").report_to == ["tensorboard"]
    assert args(["wandb", "mlflow"]).report_to == ["wandb", "mlflow"]
    assert args(("tensorboard",)).report_to == ["tensorboard"]
    assert args("tensorboard").output_dir == str(tmp_path)  # TensorBoard's default: <output_dir>/runs/...
