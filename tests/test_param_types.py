"""Every notebook parameter is declared with a type annotation papermill understands
(``name: type = default  # help``): ``papermill --help-notebook`` and ``nesylib params`` show its type, the
annotation agrees with the notebook's ``runs.start`` schema, and ``--set`` checks a parameter without a
schema rule against its annotation."""
import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from nesylib import params, runner, runs
from nesylib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = runner.list_notebooks()


def _parameters_cell(nb: Path) -> str:
    return next(c.source for c in nbformat.read(str(nb), as_version=4).cells
                if "parameters" in c.get("metadata", {}).get("tags", []))


def test_there_are_notebooks():
    assert sorted(nb.stem[:2] for nb in NOTEBOOKS) == [f"{i:02d}" for i in range(9)]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_infers_a_known_type_for_every_parameter(nb):
    inferred = pm.inspect_notebook(str(nb))
    assigned = [line.split("=")[0].split(":")[0].strip() for line in _parameters_cell(nb).splitlines()
                if "=" in line and not line.lstrip().startswith("#")]
    assert list(inferred) == assigned, "papermill skipped a parameter line (an annotation its pattern refuses?)"
    for name, p in inferred.items():
        assert p["inferred_type_name"] not in ("None", "Unknown type", ""), f"{nb.stem}.{name} has no annotation"
        assert params.annotation_types(p["inferred_type_name"]) is not None, \
            f"{nb.stem}.{name}: annotation {p['inferred_type_name']!r} is not one nesylib.params understands"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_runs_and_each_default_has_its_annotated_type(nb):
    """The annotations are evaluated when the cell runs (Optional must be imported there)."""
    namespace = {}
    exec(compile(_parameters_cell(nb), f"{nb.stem}:parameters", "exec"), namespace)  # noqa: S102
    declared = params.notebook_parameters(nb)
    assert set(namespace["__annotations__"]) == set(declared)
    for name, p in declared.items():
        assert p.default is not params.NOT_LITERAL and p.default == namespace[name]
        assert params.allowed(p.default, p.annotated), f"{nb.stem}.{name}: default {p.source} is not {p.annotation}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_annotation_agrees_with_the_runs_start_schema(nb):
    declared = params.notebook_parameters(nb)
    schema = params.static_schema(nb)
    assert schema, nb.stem
    for name, rule in schema.items():
        p = declared[name]
        assert params.agrees_with_rule(p.annotated, rule), \
            f"{nb.stem}.{name}: annotation {p.annotation} but runs.start's schema says {params.rule_text(rule)}"


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


def test_agrees_with_rule():
    assert params.agrees_with_rule((float,), (int, float))
    assert params.agrees_with_rule((float, type(None)), (int, float, type(None)))
    assert params.agrees_with_rule((str,), ["bm25", "dense"])
    assert not params.agrees_with_rule((int,), (int, type(None)))
    assert not params.agrees_with_rule((str,), (str, dict))


def test_a_parameter_without_a_schema_rule_is_typed_by_its_annotation():
    declared = params.notebook_parameters(ROOT / "notebooks/05_baselines.ipynb")
    assert declared["max_new_tokens"].rule is None  # 05's runs.start schema leaves it out
    assert declared["max_new_tokens"].type_text() == "int | None"
    assert declared["max_new_tokens"].problem(1024) is None and declared["max_new_tokens"].problem(None) is None
    rows = [line.split() for line in params.describe_parameters("05_baselines").splitlines()[2:]]
    assert ["max_new_tokens", "int", "|", "None", "None"] in [r[:5] for r in rows]
    assert ["run_root", "str", "|", "None", "None"] in [r[:5] for r in rows]  # was "any": its default is None
    assert not [r for r in rows if r[1] == "any"]
    budget = params.notebook_parameters(ROOT / "notebooks/01_teacher_distillation.ipynb")["budget_usd"]
    assert budget.rule is None and budget.problem(50) is None and budget.problem(1.5) is None  # an int is a float
    smoke = runs.load_preset("smoke")
    with pytest.raises(ConfigError, match=r"'max_new_tokens' of 05_baselines expects int \| None, got 'lots'"):
        params.apply_overrides(smoke, ["05_baselines.max_new_tokens=lots"])
    with pytest.raises(ConfigError, match=r"'budget_usd' of 01_teacher_distillation expects float \| None, got True"):
        params.apply_overrides(smoke, ["01_teacher_distillation.budget_usd=true"])
    new, _ = params.apply_overrides(smoke, ["05_baselines.max_new_tokens=64", "01_teacher_distillation.budget_usd=5"])
    assert runs.notebook_params(new, "05_baselines")["max_new_tokens"] == 64


def test_the_notebooks_parameter_cells_are_valid_python():
    for nb in NOTEBOOKS:
        ast.parse(_parameters_cell(nb))
