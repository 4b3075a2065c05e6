"""Run orchestration: the run order (06 after 08, figures last) and caching shared by partial and full runs."""
import nbformat

from nesylib import runs


def test_run_order_puts_ablations_after_08_and_figures_last(tmp_path):
    for stem in ("00_data", "05_baselines", "06_ablations", "07_flops_and_figures", "08_synthetic_benchmark",
                 "09_extra"):
        (tmp_path / f"{stem}.ipynb").write_text("{}")
    order = [p.stem for p in runs.list_notebooks(tmp_path)]
    assert order == ["00_data", "05_baselines", "08_synthetic_benchmark", "06_ablations", "09_extra",
                     "07_flops_and_figures"]
    (tmp_path / "08_synthetic_benchmark.ipynb").unlink()
    assert [p.stem for p in runs.list_notebooks(tmp_path)][-2:] == ["06_ablations", "07_flops_and_figures"]


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('preset = "adhoc"\nrun_root = None\nseed = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def test_only_runs_and_full_runs_share_the_cache(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for stem in ("00_first", "01_second", "02_third"):
        _notebook(nbs / f"{stem}.ipynb", "from nesylib import runs\n"
                  f"ctx = runs.start({stem!r}, dict(preset=preset, run_root=run_root, seed=seed))\n"
                  "ctx.save_results({'seed': seed})")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    root = tmp_path / "run"
    kw = dict(run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    part = runs.run_preset(str(preset), only=["01_second"], **kw)
    assert [(o["notebook"], o["status"]) for o in part] == [("01_second", "ran")]
    full = runs.run_preset(str(preset), **kw)
    assert [o["status"] for o in full] == ["ran", "cached", "ran"]  # the partial run counts
    preset.write_text("name: p\ncommon: {seed: 4}\n")
    again = runs.run_preset(str(preset), only=["02_third"], **kw)
    assert [o["status"] for o in again] == ["ran"]  # a changed parameter is a new run
    assert runs.read_json(root / "02_third" / "results.json") == {"seed": 4}


def test_every_preset_names_only_declared_parameters_and_prices_its_budgets():
    """A typo or a budget without a price would fail at run time, hours in; catch it here."""
    import pytest

    for name in ("smoke", "cpu", "paper"):
        preset = runs.load_preset(name)
        stems = {p.stem: p for p in runs.list_notebooks()}
        assert set(preset["notebooks"]) <= set(stems), name
        for stem, nb in stems.items():
            params = runs._declared_params(nb, preset, stem)  # raises on an unknown parameter
            if params.get("budget_usd") is not None:
                assert params.get("price_in_out"), f"{name}/{stem}: budget_usd without price_in_out"
    with pytest.raises(Exception, match="unknown parameter"):
        bad = dict(runs.load_preset("cpu"))
        bad["notebooks"] = {"05_baselines": {"methodz": ["std"]}}
        runs._declared_params(stems["05_baselines"], bad, "05_baselines")


def test_a_relative_run_root_is_the_same_folder_for_the_runner_and_the_notebooks(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_first.ipynb", "from nesylib import runs\n"
              "ctx = runs.start('00_first', dict(preset=preset, run_root=run_root, seed=seed))\n"
              "ctx.save_results({'seed': seed})")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    monkeypatch.chdir(tmp_path)
    out = runs.run_preset(str(preset), run_root="rel/run", notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    assert [o["status"] for o in out] == ["ran"]
    assert runs.read_json(tmp_path / "rel" / "run" / "00_first" / "results.json") == {"seed": 3}
    assert (tmp_path / "rel" / "run" / "00_first" / "done.json").is_file()
    assert not (nbs / "rel").exists()  # the notebook's working directory got nothing
