"""Parameters on the first day: a hand-run notebook that names a preset gets its values or stops, `run --set`
overrides are checked before anything runs and reach params.json and the cache key, and `params` lists a
notebook's parameters."""
from pathlib import Path

import pytest

from helpers import RUN_PARAMS, write_notebook
from nesylib import cli
from nesylib.pipeline import params, runs
from nesylib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATASETS = ["bbh", "gsm8k", "agieval", "arc-e", "arc-c", "gsm8k_plus"]


# ------------------------------------------------------------------ 1. -p preset NAME alone is refused
def _data_params(tmp_path, **kw):
    return dict(dict(preset="smoke", run_root=str(tmp_path), data_dir=None, seed=42, datasets=SMOKE_DATASETS), **kw)


def test_start_refuses_a_preset_name_without_the_presets_values(tmp_path):
    with pytest.raises(ConfigError) as e:
        runs.start("00_data", _data_params(tmp_path, datasets=["bbh"], seed=7))
    msg = str(e.value)
    assert "preset 'smoke'" in msg
    assert "seed = 7 here, the preset gives 42" in msg and "datasets = ['bbh'] here" in msg
    assert "python -m nesylib run --preset smoke --only 00_data" in msg
    assert "-p preset smoke -y '{seed: 42, datasets: [bbh, gsm8k, agieval, arc-e, arc-c, gsm8k_plus]}'" in msg
    assert not (tmp_path / "00_data").exists()  # refused before anything was written


def test_start_accepts_the_presets_values_its_own_defaults_a_label_and_the_runner(tmp_path, monkeypatch):
    ctx = runs.start("00_data", _data_params(tmp_path))  # exactly what smoke gives: accepted
    assert runs.read_json(ctx.dir / "params.json")["preset"] == "smoke"
    runs.start("00_data", _data_params(tmp_path, preset="adhoc", datasets=["bbh"]))  # the notebook's default
    runs.start("00_data", _data_params(tmp_path, preset="my-try", datasets=["bbh"]))  # not a preset file: a label
    stage = tmp_path / ".00_data.stage"
    monkeypatch.setenv(runs.STAGE_NAME_ENV, "00_data")
    monkeypatch.setenv(runs.STAGE_DIR_ENV, str(stage))
    ctx = runs.start("00_data", _data_params(tmp_path, datasets=["bbh"]))  # the runner passed them (--set)
    assert ctx.dir == stage and runs.read_json(stage / "params.json")["datasets"] == ["bbh"]


def test_papermill_with_only_preset_smoke_stops_with_the_two_ways_to_run_it(tmp_path):
    """The issue's case, through papermill: the notebook's defaults are not run under smoke's name."""
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "notebooks/07_flops_and_figures.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=dict(preset="smoke", run_root=str(tmp_path)), progress_bar=False,
                            cwd=str(ROOT / "notebooks"))
    assert e.value.ename == "ConfigError"
    assert "student = 'smollm2-135m' here, the preset gives 'tiny-llama'" in e.value.evalue
    assert "python -m nesylib run --preset smoke --only 07_flops_and_figures" in e.value.evalue
    assert not (tmp_path / "07_flops_and_figures").exists()


# --------------------------------------------------------------------------------- 2. run --set
def test_set_values_are_yaml_and_land_in_common_a_notebook_or_inside_a_dict():
    smoke = runs.load_preset("smoke")
    new, lines = params.apply_overrides(smoke, ["common.seed=1", "05_baselines.methods=[std,kard]",
                                              "08_synthetic_benchmark.train.lr=5e-4",
                                              "08_synthetic_benchmark.train.max_steps=3"])
    assert new["common"]["seed"] == 1
    assert runs.notebook_params(new, "05_baselines")["methods"] == ["std", "kard"]
    train = runs.notebook_params(new, "08_synthetic_benchmark")["train"]
    assert train == {**smoke["common"]["train"], "lr": 0.0005, "max_steps": 3}  # 5e-4 is a float
    assert runs.notebook_params(new, "05_baselines")["train"] == smoke["common"]["train"]  # 08 only
    assert smoke == runs.load_preset("smoke")  # the loaded preset is not changed
    assert lines == ["--set common.seed = 1", '--set 05_baselines.methods = ["std", "kard"]',
                     "--set 08_synthetic_benchmark.train.lr = 0.0005",
                     "--set 08_synthetic_benchmark.train.max_steps = 3"]
    _, lines = params.apply_overrides(smoke, ["common.k_insert=3"])  # smoke's 08 section sets its own k_insert
    assert lines == ["--set common.k_insert = 3 (not for 08_synthetic_benchmark, whose preset section sets k_insert)"]


@pytest.mark.parametrize("arg, expected", [
    ("common.seed", r"--set 'common.seed': expected SECTION.PARAMETER=VALUE"),
    ("seed=1", r"--set 'seed=1': expected SECTION.PARAMETER=VALUE"),
    ("09_nope.seed=1", r"'09_nope' is neither 'common' nor a notebook; known: common, 00_data, "),
    ("common.sed=1", r"--set 'common.sed=1': no notebook declares a parameter 'sed'"),
    ("05_baselines.methodz=[std]", r"notebook 05_baselines has no parameter 'methodz'; it declares .*methods"),
    ("common.seed=abc", r"--set 'common.seed=abc': parameter 'seed' of 00_data expects int, got 'abc'"),
    ("common.seed=true", r"parameter 'seed' of 00_data expects int, got True"),
    ("05_baselines.methods=std", r"parameter 'methods' of 05_baselines expects list, got 'std'"),
    ("08_synthetic_benchmark.compressor=zip", r"expects one of \['auto', 'self-info', 'llmlingua2', 'truncate'\]"),
    ("02_kb_construction.train_per_task=[1]", r"train_per_task' of 02_kb_construction expects int \| None"),
    ("07_flops_and_figures.results_dir=3", r"results_dir' of 07_flops_and_figures expects str \| None, got 3"),
    ("08_synthetic_benchmark.train.lr=fast", r"TrainConfig.lr = 'fast', which expects float \(default 0\.0002\)"),
    ("08_synthetic_benchmark.eval_per_task_synth.test=all", r"expects int like the current value 2, got 'all'"),
    ("08_synthetic_benchmark.train.lrate=1", r"'lrate', which is not a TrainConfig field; allowed: \[.*'lr'"),
    ("common.train.lr=-1", r"--set 'common.train.lr=-1': parameter 'train' of \S+ is not a valid TrainConfig: TrainConfig.lr=-1: must be > 0"),
    ("00_data.datasets.bbh=1", r"'bbh' cannot be set inside \[.*\], which is not a dict"),
    ("common.run_root=/tmp/x", r"'run_root' is set by the runner; use --run-root"),
    ("common.seed=[1", r"--set 'common.seed=\[1': the value is not valid YAML"),
])
def test_a_bad_set_names_the_argument_and_what_was_expected(arg, expected):
    with pytest.raises(ConfigError, match=expected):
        params.apply_overrides(runs.load_preset("smoke"), [arg])


def test_a_bad_set_stops_the_cli_before_any_notebook_runs(tmp_path, capsys):
    assert cli.main(["run", "--preset", "smoke", "--run-root", str(tmp_path / "run"),
                     "--set", "common.seed=1", "--set", "common.sed=1"]) == 2
    assert "error: --set 'common.sed=1': no notebook declares a parameter 'sed'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # not even locked


def _notebook(path, stem):
    body = (f"from nesylib.pipeline import runs\nctx = runs.start({stem!r}, dict(preset=preset, run_root=run_root, "
            f"seed=seed, lr=lr))\nctx.save_results({{'lr': lr}})")
    write_notebook(path, RUN_PARAMS + "\nlr = 0.1  # step size", body)


def test_set_values_reach_params_json_the_log_and_the_cache_key(tmp_path):
    nbs = tmp_path / "nbs"
    _notebook(nbs / "00_first.ipynb", "00_first")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    logged = []
    kw = dict(run_root=tmp_path / "run", notebooks_dir=nbs, kernel="python3", log=logged.append)
    out = params.run_with_overrides(str(preset), ["00_first.lr=5e-4", "common.seed=9"], **kw)
    assert [o["status"] for o in out] == ["ran"]
    assert "--set 00_first.lr = 0.0005" in logged and "--set common.seed = 9" in logged
    recorded = runs.read_json(tmp_path / "run" / "00_first" / "params.json")
    assert recorded["lr"] == 0.0005 and recorded["seed"] == 9
    again = params.run_with_overrides(str(preset), ["00_first.lr=5e-4", "common.seed=9"], **kw)
    assert [o["status"] for o in again] == ["cached"]
    changed = params.run_with_overrides(str(preset), ["00_first.lr=7e-4", "common.seed=9"], **kw)
    assert [o["status"] for o in changed] == ["ran"]  # a changed --set value is a new run
    assert runs.read_json(tmp_path / "run" / "00_first" / "results.json") == {"lr": 0.0007}


def test_cli_run_takes_repeated_set():
    args = cli.build_parser().parse_args(["run", "--set", "common.seed=1", "--set", "05_baselines.methods=[std]"])
    assert args.set == ["common.seed=1", "05_baselines.methods=[std]"]


# ------------------------------------------------------------------------------ 3. params NOTEBOOK
def _row(text, name):
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [name])


def test_params_lists_type_default_help_and_the_presets_value(capsys):
    assert cli.main(["params", "08_synthetic_benchmark", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "08_synthetic_benchmark (notebooks/08_synthetic_benchmark.ipynb): 24 parameters"
    assert out.splitlines()[1].split() == ["parameter", "type", "default", "preset", "smoke", "help"]
    assert _row(out, "k_insert") == ["k_insert", "int", "1", "2", *"NesyCD: hits inserted into the prompt".split()]
    assert _row(out, "stages_T")[:4] == ["stages_T", "int", "6", "2"]
    assert _row(out, "kard_k")[:4] == ["kard_k", "int", "3", "(default)"]  # smoke leaves it
    assert _row(out, "max_new_tokens")[:5] == ["max_new_tokens", "int", "|", "None", "None"]  # from the schema
    assert "one of ['auto', 'self-info', 'llmlingua2', 'truncate']" in out
    plain = params.describe_parameters("02_kb_construction.ipynb")
    assert _row(plain, "train_per_task") == ["train_per_task", "int", "|", "None", "None"]  # the shared selection section
    assert _row(plain, "gate") == ["gate", "bool", "False",
                                   *"True: S_P's confidence margins on the demonstrations, to judge 03's gate".split()]
    assert "preset" not in plain.splitlines()[1]


def test_params_of_an_unknown_notebook_lists_the_valid_ones(capsys):
    assert cli.main(["params", "09_nope"]) == 2
    err = capsys.readouterr().err
    assert "error: no notebook '09_nope'; known notebooks: 00_data, 01_teacher_distillation, " in err
    assert "07_flops_and_figures" in err
    with pytest.raises(ConfigError, match="known presets"):
        params.describe_parameters("00_data", "nope")
