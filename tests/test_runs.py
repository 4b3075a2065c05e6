"""Run orchestration: the run order (06 after 08, figures last) and caching shared by partial and full runs."""
from helpers import RUN_PARAMS, write_notebook
from nesylib.pipeline import runner, runs


def test_run_order_puts_ablations_after_08_and_figures_last(tmp_path):
    for stem in ("00_data", "05_baselines", "06_ablations", "07_flops_and_figures", "08_synthetic_benchmark",
                 "09_extra"):
        (tmp_path / f"{stem}.ipynb").write_text("{}")
    order = [p.stem for p in runner.list_notebooks(tmp_path)]
    assert order == ["00_data", "05_baselines", "08_synthetic_benchmark", "06_ablations", "09_extra",
                     "07_flops_and_figures"]
    (tmp_path / "08_synthetic_benchmark.ipynb").unlink()
    assert [p.stem for p in runner.list_notebooks(tmp_path)][-2:] == ["06_ablations", "07_flops_and_figures"]


def _notebook(path, body, extra_params=""):
    write_notebook(path, RUN_PARAMS + extra_params, body)


def test_only_runs_and_full_runs_share_the_cache(tmp_path):
    nbs = tmp_path / "nbs"
    for stem in ("00_first", "01_second", "02_third"):
        _notebook(nbs / f"{stem}.ipynb", "from nesylib.pipeline import runs\n"
                  f"ctx = runs.start({stem!r}, dict(preset=preset, run_root=run_root, seed=seed))\n"
                  "ctx.save_results({'seed': seed})")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    root = tmp_path / "run"
    kw = dict(run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    part = runner.run_preset(str(preset), only=["01_second"], **kw)
    assert [(o["notebook"], o["status"]) for o in part] == [("01_second", "ran")]
    full = runner.run_preset(str(preset), **kw)
    assert [o["status"] for o in full] == ["ran", "cached", "ran"]  # the partial run counts
    preset.write_text("name: p\ncommon: {seed: 4}\n")
    again = runner.run_preset(str(preset), only=["02_third"], **kw)
    assert [o["status"] for o in again] == ["ran"]  # a changed parameter is a new run
    assert runs.read_json(root / "02_third" / "results.json") == {"seed": 4}


def test_every_preset_names_only_declared_parameters_and_prices_its_budgets():
    """A typo or a budget without a price would fail at run time, hours in; catch it here."""
    import pytest

    for name in ("smoke", "cpu", "paper"):
        preset = runs.load_preset(name)
        stems = {p.stem: p for p in runner.list_notebooks()}
        assert set(preset["notebooks"]) <= set(stems), name
        for stem, nb in stems.items():
            params = runner._declared_params(nb, preset, stem)  # raises on an unknown parameter
            if params.get("budget_usd") is not None:
                assert params.get("price_in_out"), f"{name}/{stem}: budget_usd without price_in_out"
    with pytest.raises(Exception, match="unknown parameter"):
        bad = dict(runs.load_preset("cpu"))
        bad["notebooks"] = {"05_baselines": {"methodz": ["std"]}}
        runner._declared_params(stems["05_baselines"], bad, "05_baselines")


def test_a_relative_run_root_is_the_same_folder_for_the_runner_and_the_notebooks(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    _notebook(nbs / "00_first.ipynb", "from nesylib.pipeline import runs\n"
              "ctx = runs.start('00_first', dict(preset=preset, run_root=run_root, seed=seed))\n"
              "ctx.save_results({'seed': seed})")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    monkeypatch.chdir(tmp_path)
    out = runner.run_preset(str(preset), run_root="rel/run", notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    assert [o["status"] for o in out] == ["ran"]
    assert runs.read_json(tmp_path / "rel" / "run" / "00_first" / "results.json") == {"seed": 3}
    assert (tmp_path / "rel" / "run" / "00_first" / "done.json").is_file()
    assert not (nbs / "rel").exists()  # the notebook's working directory got nothing


_FLAKY_BODY = """from nesylib.pipeline import runs
ctx = runs.start('00_nb', dict(preset=preset, run_root=run_root, seed=seed, fail=fail))
ctx.path('artifact.txt').write_text(f'seed {seed} fail {fail}')
ctx.save_results({'seed': seed, 'fail': fail, 'artifact': str(ctx.path('artifact.txt'))})
if fail:
    raise RuntimeError('injected failure ' + str(seed))
"""


def _flaky_notebook(path, body=_FLAKY_BODY):
    _notebook(path, body, "\nfail = False")


def test_a_failed_forced_rerun_leaves_the_good_run_untouched_and_records_the_failure(tmp_path):
    import pytest

    nbs = tmp_path / "nbs"
    _flaky_notebook(nbs / "00_nb.ipynb")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    root = tmp_path / "run"
    kw = dict(run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["ran"]
    good = {p: p.read_bytes() for p in [root / "00_nb.ipynb"] + sorted((root / "00_nb").rglob("*")) if p.is_file()}
    names = {p.name for p in good}
    assert {"params.json", "env.json", "results.json", "done.json", "artifact.txt", "00_nb.ipynb"} <= names
    # paths the notebook saved point into the final folder, not the staging folder it ran in
    assert runs.read_json(root / "00_nb" / "results.json")["artifact"] == str(root / "00_nb" / "artifact.txt")

    preset.write_text("name: p\ncommon: {seed: 4, fail: true}\n")
    with pytest.raises(Exception, match="injected failure 4"):
        runner.run_preset(str(preset), force=True, **kw)
    now = {p: p.read_bytes() for p in [root / "00_nb.ipynb"] + sorted((root / "00_nb").rglob("*")) if p.is_file()}
    assert now == good  # byte for byte: params, env, results, done, artifacts and the executed notebook

    failed = root / "00_nb.failed"
    assert runs.read_json(failed / "params.json")["seed"] == 4 and (failed / "env.json").is_file()
    err = (failed / "error.txt").read_text()
    assert "RuntimeError" in err and "injected failure 4" in err
    assert "injected failure 4" in (failed / "00_nb.ipynb").read_text()  # the executed notebook, traceback and all
    assert not (failed / "done.json").exists()
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]  # no staging folder left behind
    assert ".tmp" not in (root / "00_nb.ipynb").read_text()  # it names where it is, not where it ran

    # an unchanged preset still finds the good run cached: the failure did not touch its done.json
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["cached"]
    # a later success replaces the folder and clears the stale failure record
    preset.write_text("name: p\ncommon: {seed: 5}\n")
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["ran"]
    assert runs.read_json(root / "00_nb" / "results.json")["seed"] == 5 and not failed.exists()
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["00_nb", "00_nb.ipynb"]


def test_a_failure_before_start_is_recorded_with_the_runners_parameters(tmp_path):
    import pytest

    nbs = tmp_path / "nbs"
    _flaky_notebook(nbs / "00_nb.ipynb", "raise ValueError('bad before start')")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 7}\n")
    root = tmp_path / "run"
    with pytest.raises(Exception, match="bad before start"):
        runner.run_preset(str(preset), run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    failed = root / "00_nb.failed"
    assert runs.read_json(failed / "params.json")["seed"] == 7
    assert "bad before start" in (failed / "error.txt").read_text()
    assert not (root / "00_nb").exists() and not (root / "00_nb.ipynb").exists()


def test_calls_stored_by_a_failed_run_are_found_by_the_next_run(tmp_path):
    """Call stores live outside the staging swap (ctx.store): what a failed run paid for is kept."""
    import pytest

    body = """from nesylib.pipeline import runs
ctx = runs.start('00_nb', dict(preset=preset, run_root=run_root, seed=seed, fail=fail))
store = ctx.store('calls.jsonl')
before = len(store.read_text().splitlines()) if store.is_file() else 0
with open(store, 'a') as f:
    f.write(f'call of seed {seed}\\n')
ctx.save_results({'calls_before': before, 'store': str(store)})
if fail:
    raise RuntimeError('injected failure')
"""
    nbs = tmp_path / "nbs"
    _flaky_notebook(nbs / "00_nb.ipynb", body)
    preset = tmp_path / "p.yaml"
    root = tmp_path / "run"
    kw = dict(run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
    preset.write_text("name: p\ncommon: {seed: 1}\n")
    runner.run_preset(str(preset), **kw)
    preset.write_text("name: p\ncommon: {seed: 2, fail: true}\n")
    with pytest.raises(Exception, match="injected failure"):
        runner.run_preset(str(preset), **kw)
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    runner.run_preset(str(preset), **kw)
    res = runs.read_json(root / "00_nb" / "results.json")
    assert res["calls_before"] == 2 and res["store"] == str(root / "stores" / "00_nb" / "calls.jsonl")


def test_a_store_left_in_the_run_folder_by_an_older_version_is_carried_over(tmp_path):
    old = tmp_path / "01_x"
    old.mkdir()
    (old / "teacher_store.jsonl").write_text('{"k": 1}\n')
    ctx = runs.start("01_x", dict(preset="p", run_root=str(tmp_path), seed=1))
    store = ctx.store("teacher_store.jsonl")
    assert store == tmp_path / "stores" / "01_x" / "teacher_store.jsonl"
    assert store.read_text() == '{"k": 1}\n' and (old / "teacher_store.jsonl").is_file()


def test_a_hand_edited_upstream_file_reruns_what_read_it_and_the_log_says_why(tmp_path):
    """The README invites editing kb.jsonl by hand: the notebooks that read that folder run again (the one that
    wrote it does not, which would overwrite the edit), and the log names the file; parameters likewise."""
    nbs = tmp_path / "nbs"
    _notebook(nbs / "00_first.ipynb", "from nesylib.pipeline import runs\n"
              "ctx = runs.start('00_first', dict(preset=preset, run_root=run_root, seed=seed))\n"
              "ctx.path('kb.jsonl').write_text('{\"k\": 1}\\n')\nctx.save_results({'seed': seed})")
    _notebook(nbs / "01_second.ipynb", "from nesylib.pipeline import runs\n"
              "ctx = runs.start('01_second', dict(preset=preset, run_root=run_root, seed=seed))\n"
              "ctx.save_results({'kb': (ctx.upstream('00_first') / 'kb.jsonl').read_text()})")
    _notebook(nbs / "02_third.ipynb", "from nesylib.pipeline import runs\n"
              "ctx = runs.start('02_third', dict(preset=preset, run_root=run_root, seed=seed))\n"
              "ctx.save_results({'seed': seed})")
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    root, logged = tmp_path / "run", []
    kw = dict(run_root=root, notebooks_dir=nbs, kernel="python3", log=logged.append)
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["ran", "ran", "ran"]
    assert runs.read_json(root / "01_second" / "reads.json") == ["00_first"]
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["cached"] * 3
    (root / "00_first" / "kb.jsonl").write_text('{"k": 2}\n')
    logged.clear()
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["cached", "ran", "cached"]
    assert logged[1].startswith("[2/3] 01_second: running ...")
    assert logged[1].endswith(" because what it read changed since it ran: 00_first/kb.jsonl")
    assert runs.read_json(root / "01_second" / "results.json") == {"kb": '{"k": 2}\n'}
    assert (root / "00_first" / "kb.jsonl").read_text() == '{"k": 2}\n'  # the edit is kept
    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["cached"] * 3
    preset.write_text("name: p\ncommon: {seed: 4}\n")
    logged.clear()
    runner.run_preset(str(preset), only=["00_first"], **kw)
    assert logged[0].endswith("because its parameters changed")
