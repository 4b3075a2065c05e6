"""One parameter model (nesylib/pipeline/param_model.py) declares every notebook's parameters, composed from shared
sections: the notebooks' papermill cells are written from it (typed, so ``papermill --help-notebook`` shows
types), a notebook checks its values against it before any work, and a whole preset is checked against it
before the runner starts anything, errors naming the file, the key and what was expected."""
import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from helpers import write_notebook
from nesylib.pipeline import param_model, params, runner, runs
from nesylib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = runner.list_notebooks()


def _parameters_cell(nb: Path) -> str:
    return next(c.source for c in nbformat.read(str(nb), as_version=4).cells
                if "parameters" in c.get("metadata", {}).get("tags", []))


def test_the_model_declares_exactly_the_notebooks():
    assert sorted(nb.stem for nb in NOTEBOOKS) == sorted(param_model.NOTEBOOKS)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_cell_is_the_models_and_papermill_reads_every_type(nb):
    assert _parameters_cell(nb) == param_model.parameters_cell(nb.stem)
    inferred = pm.inspect_notebook(str(nb))
    model = param_model.declared(nb.stem)
    assert list(inferred) == list(model), "papermill skipped a parameter line (an annotation its pattern refuses?)"
    for name, p in inferred.items():
        assert p["inferred_type_name"] == model[name].annotation(), f"{nb.stem}.{name}"
        assert params.annotation_types(p["inferred_type_name"]) == model[name].types, f"{nb.stem}.{name}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_cell_runs_and_each_default_obeys_its_own_rule(nb):
    namespace = {}
    exec(compile(_parameters_cell(nb), f"{nb.stem}:parameters", "exec"), namespace)  # noqa: S102
    for name, p in param_model.declared(nb.stem).items():
        assert namespace[name] == p.default, f"{nb.stem}.{name}"
        assert p.problem(p.default) is None, f"{nb.stem}.{name}: default {p.default!r} breaks its own rule"


def test_shared_sections_have_the_same_fields_for_every_role():
    """01's teacher, 02's tutor and 04's knowledge writer: the same endpoint fields, prefixed by the role."""
    def endpoint(nb, role):
        names = list(param_model.declared(nb))
        return [n.replace(f"{role}_", "ROLE_") for n in names if n.startswith(f"{role}_")] + \
            [n for n in ("api_key_env", "store_path", "concurrency", "budget_usd", "price_in_out") if n in names]
    assert endpoint("01_teacher_distillation", "teacher") == endpoint("02_kb_construction", "tutor") \
        == endpoint("04_skintern_curriculum", "knowledge")
    for nb in ("02_kb_construction", "03_nesycd_training", "04_skintern_curriculum", "05_baselines"):
        for p in param_model.SELECTION:
            assert param_model.declared(nb)[p.name] is p, nb  # the one declaration, not a copy


def test_help_notebook_shows_type_default_and_help():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook",
                          str(ROOT / "notebooks/07_flops_and_figures.ipynb")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "Unknown type" not in out
    assert "  seed: int (default 42)" in out
    assert "  results_dir: Optional[str] (default None)" in out
    assert "None: this preset's run folder; or a folder such as ../results/cpu" in out


@pytest.mark.parametrize("text, types", [
    ("int", (int,)), ("float", (float,)), ("Optional[int]", (int, type(None))), ("list[str]", (list,)),
    ("Union[int, dict, None]", (int, dict, type(None))), ("'Optional[str]'", (str, type(None))),
    ("int | None", (int, type(None))), ("None", None), ("Any", None), ("Optional[Any]", None), ("", None),
])
def test_annotation_types(text, types):
    assert params.annotation_types(text) == types


def test_a_notebook_of_ones_own_is_typed_by_its_annotations(tmp_path):
    path = tmp_path / "00_mine.ipynb"
    write_notebook(path, "from typing import Optional\nk: Optional[int] = None  # how many\nrate = 0.5\n"
                         "name = make_name()")
    found = params.notebook_parameters(path)
    assert found["k"].types == (int, type(None)) and found["k"].help == "how many"
    assert found["rate"].problem(1) is None and found["rate"].problem("fast") == "expects float, got 'fast'"
    assert found["name"].type_text() == "any" and found["name"].problem([1]) is None


def test_rules_of_the_model():
    max_new = param_model.declared("05_baselines")["max_new_tokens"]
    assert max_new.type_text() == "int | None" and max_new.problem(1024) is None and max_new.problem(None) is None
    assert max_new.problem(True) == "expects int | None, got True"
    budget = param_model.declared("01_teacher_distillation")["budget_usd"]
    assert budget.problem(50) is None and budget.problem(1.5) is None  # an int is a float
    kind = param_model.declared("04_skintern_curriculum")["schedule_kind"]
    assert kind.problem("cosine") == "expects one of ['linear', 'exponential', 'step'], got 'cosine'"
    train = param_model.declared("03_nesycd_training")["train"]
    assert "'lrate', which is not a TrainConfig field" in train.problem({"lrate": 1})
    assert "TrainConfig.lr = 'fast', which expects float" in train.problem({"lr": "fast"})
    smoke = runs.load_preset("smoke")
    with pytest.raises(ConfigError, match=r"'max_new_tokens' of 05_baselines expects int \| None, got 'lots'"):
        params.apply_overrides(smoke, ["05_baselines.max_new_tokens=lots"])
    new, _ = params.apply_overrides(smoke, ["05_baselines.max_new_tokens=64", "01_teacher_distillation.budget_usd=5"])
    assert runs.notebook_params(new, "05_baselines")["max_new_tokens"] == 64


def test_a_notebook_checks_its_values_before_any_work(tmp_path):
    values = dict(preset="adhoc", run_root=str(tmp_path), data_dir=None, seed="7", datasets=["bbh"])
    with pytest.raises(ConfigError, match=r"^00_data: parameter 'seed' expects int, got '7'$"):
        param_model.start("00_data", values)
    assert not (tmp_path / "00_data").exists()
    ctx = param_model.start("00_data", {**values, "seed": 7, "unrelated": object()})  # a notebook's globals()
    assert runs.read_json(ctx.dir / "params.json") == {**values, "seed": 7}


@pytest.mark.parametrize("yaml_text, expected", [
    ("common: {train_per_task: '6'}", r"bad\.yaml: common\.train_per_task \(a parameter of 01_teacher_distillation\) "
                                      r"expects int \| None, got '6'"),
    ("common: {trian_per_task: 6}", r"bad\.yaml: common\.trian_per_task: no notebook declares a parameter"),
    ("notebooks: {05_baselines: {kard_kk: 2}}", r"bad\.yaml: notebooks\.05_baselines\.kard_kk: 05_baselines has no "
                                                r"parameter 'kard_kk'; it declares preset, run_root"),
    ("notebooks: {05_baseline: {kard_k: 2}}", r"bad\.yaml: notebooks\.05_baseline: no such notebook"),
    ("notebooks: {04_skintern_curriculum: {schedule_kind: cosine}}",
     r"notebooks\.04_skintern_curriculum\.schedule_kind expects one of \['linear', 'exponential', 'step'\]"),
    ("common: {train: {lr: fast}}", r"common\.train \(a parameter of 02_kb_construction\) has TrainConfig\.lr = 'fast'"),
])
def test_a_whole_preset_is_checked_before_anything_runs(tmp_path, yaml_text, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: bad\n{yaml_text}\n" if yaml_text.startswith("common") else f"name: bad\ncommon: {{}}\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=expected):
        runner.run_preset(str(bad), only=["00_data"], run_root=tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run" / "00_data").exists()


def test_a_notebooks_own_value_replaces_a_bad_common_one_and_the_shipped_presets_pass():
    own = {"04_skintern_curriculum": {"stages_T": 3}, "08_synthetic_benchmark": {"stages_T": 3}}
    param_model.check_preset({"common": {"stages_T": "x"}, "notebooks": own}, "p.yaml")  # no notebook gets "x"
    with pytest.raises(ConfigError, match=r"p\.yaml: common\.stages_T \(a parameter of 08_synthetic_benchmark\)"):
        param_model.check_preset({"common": {"stages_T": "x"}, "notebooks": {"04_skintern_curriculum": {"stages_T": 3}}},
                                 "p.yaml")
    for name in ("smoke", "cpu", "paper"):
        preset = runs.load_preset(name)
        param_model.check_preset(preset, preset["_file"])


def test_the_notebooks_parameter_cells_are_valid_python():
    for nb in NOTEBOOKS:
        ast.parse(_parameters_cell(nb))
