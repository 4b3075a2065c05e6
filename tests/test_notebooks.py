"""Every notebook is committed without outputs and runs under papermill on the smoke preset; the smoke
run's numbers match the stored ones (tests/expected/smoke_metrics.json), and notebook 07 redraws the
committed results/cpu tables and figures byte for byte."""
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nesylib import report
from nesylib.pipeline import runner, runs
from nesylib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = runner.list_notebooks()
EXPECTED = ROOT / "tests" / "expected" / "smoke_metrics.json"
UPDATE_ENV = "NESYLIB_UPDATE_EXPECTED"
UPDATE_COMMAND = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/test_notebooks.py -k smoke"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One run of the smoke preset, shared by every test of this module that reads it.

    The notebooks' kernels run on one thread (OMP/MKL), whatever the machine's core count: the stored
    metrics were recorded that way, and a float sum split over another number of threads may round
    differently."""
    root = tmp_path_factory.mktemp("smoke")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        out = runner.run_preset("smoke", run_root=root, log=lambda *_: None)
    return root, out


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(nb):
    doc = json.loads(nb.read_text())
    code = [c for c in doc["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), "no parameters cell"


def test_teacher_notebook_with_an_api_teacher_never_writes_the_key(tmp_path, monkeypatch, data_dir):
    """01 against a local OpenAI-compatible server: the key reaches the server, never a file."""
    import papermill as pm

    from fake_openai_server import FakeOpenAIServer

    key = "sk-test-" + "q7" * 16
    monkeypatch.setenv("NESYLIB_TEST_KEY", key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    right = lambda body: "We reason. Therefore, the answer is No."  # noqa: E731
    with FakeOpenAIServer(api_key=key, fault_rate=0.3, seed=3, faults=("429", "500"), reply_fn=right) as s:
        pm.execute_notebook(str(ROOT / "notebooks/01_teacher_distillation.ipynb"), str(tmp_path / "01.ipynb"),
                            parameters=dict(preset="t", run_root=str(tmp_path), bbh_tasks=["navigate"],
                                            train_per_task=4, gsm8k_train=0, teacher_backend="openai",
                                            teacher_model="fake", teacher_base_url=s.base_url,
                                            api_key_env="NESYLIB_TEST_KEY", max_rounds=1, price_in_out=[1.0, 2.0]),
                            progress_bar=False, cwd=str(ROOT / "notebooks"))
        assert s.total_paid == 4 * 2  # 4 questions x 2 samples, each paid once despite the faults
    res = json.loads((tmp_path / "01_teacher_distillation" / "results.json").read_text())
    assert res["items"] == 4 and res["calls"]["succeeded"] == 8
    from nesylib.pipeline.experiment import select_train

    golds = [r["answer"] for r in select_train(["navigate"], 4, 0, 42)]
    assert res["accepted"] == golds.count("No")  # the server always answers "No": only those are right
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "teacher_store.jsonl" for p in written)
    for p in written:
        assert key not in p.read_text(errors="replace"), f"the API key leaked into {p}"


def test_smoke_preset_runs_every_notebook_and_caches(smoke_run):
    tmp_path, out = smoke_run
    assert [o["notebook"] for o in out] == [p.stem for p in NOTEBOOKS]
    assert all(o["status"] == "ran" for o in out)
    res = json.loads((tmp_path / "00_data" / "results.json").read_text())
    assert res["bbh_train"] == 5209 and res["bbh_test"] == 1302
    env = json.loads((tmp_path / "00_data" / "env.json").read_text())
    assert env["packages"]["transformers"] == "5.17.0"
    assert (tmp_path / "00_data.ipynb").is_file() and (tmp_path / "00_data" / "bbh_split.png").is_file()
    teach = json.loads((tmp_path / "01_teacher_distillation" / "results.json").read_text())
    assert 0 < teach["accepted"] <= teach["items"] == 2 * 6 + 4
    # figures show inline in the executed notebooks (and are still saved beside the tables)
    for name in ("00_data", "05_baselines", "08_synthetic_benchmark"):
        doc = json.loads((tmp_path / f"{name}.ipynb").read_text())
        shown = [o for c in doc["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {})]
        assert shown, f"{name}: no figure in the executed notebook"
    syn = json.loads((tmp_path / "08_synthetic_benchmark" / "results.json").read_text())
    ids = [r["method_id"] for r in syn["rows"]]
    assert {"std", "oracle", "kard", "nesycd", "skintern"} <= set(ids)
    for r in syn["rows"]:
        if r["method_id"] in ("kard", "nesycd", "oracle"):
            assert r["facts_in_knowledge"] is not None and r["train_facts_in_knowledge"] is not None
        if r["method_id"] not in ("chance", "cooccurrence"):
            assert "test_derives" in r and r["prefill_vs_std"] > 0
    again = runner.run_preset("smoke", run_root=tmp_path, log=lambda *_: None)
    assert all(o["status"] == "cached" for o in again)


def test_bad_preset_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncommon: {seed: 1}\nnotebooks:\n  00_data: {datasetz: [bbh]}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: notebooks\.00_data\.datasetz: 00_data has no parameter 'datasetz'"):
        runner.run_preset(str(bad), only=["00_data"], run_root=tmp_path, log=lambda *_: None)
    secret = tmp_path / "secret.yaml"
    secret.write_text("name: s\ncommon: {api_key: abc}\n")
    with pytest.raises(ConfigError, match="looks like a secret"):
        runs.load_preset(str(secret))
    with pytest.raises(ConfigError, match="known presets"):
        runs.load_preset("nope")


def test_cli_help():
    out = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "nesylib", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "run" in out.stdout and "provision" in out.stdout


def test_export_copies_tables_and_figures_only(tmp_path):
    run = tmp_path / "run"
    (run / "05_baselines" / "eval").mkdir(parents=True)
    (run / "05_baselines" / "results.json").write_text("{}")
    (run / "05_baselines" / "baselines.csv").write_text("method,acc\n")
    (run / "05_baselines" / "eval" / "samples.jsonl").write_text("{}\n")
    (run / "06_unfinished").mkdir()
    files = runner.export_results("x", run, tmp_path / "out")
    assert sorted(p.name for p in files) == ["baselines.csv", "results.json"]
    assert not (tmp_path / "out" / "06_unfinished").exists()
    with pytest.raises(ConfigError, match="no run folder"):
        runner.export_results("x", tmp_path / "missing")


def test_committed_notebooks_equal_their_sources(tmp_path):
    """Each notebook is built from notebooks/<name>.py (percent format) by scripts/nbtool.py: a notebook edited
    by hand, or a source changed without rebuilding, fails here (rebuild: `.venv/bin/python scripts/nbtool.py`)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import nbtool

    sources = nbtool.sources()
    assert [p.stem for p in sources] == sorted(nb.stem for nb in NOTEBOOKS)
    for src in sources:
        built = nbtool.build(src, tmp_path)
        assert built.read_bytes() == (ROOT / "notebooks" / built.name).read_bytes(), \
            f"{built.name} differs from its source {src.name}"
    stale = subprocess.run([sys.executable, "scripts/nbtool.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert stale.returncode == 0, stale.stderr


def test_the_sources_read_as_jupytext_reads_them(tmp_path):
    """The .py sources are jupytext's percent format (notebooks/jupytext.toml pairs them in JupyterLab): jupytext
    finds the same cells, kinds, sources and tags as nbtool; and a changed source makes --check fail."""
    import sys

    import jupytext

    sys.path.insert(0, str(ROOT / "scripts"))
    import nbtool

    odd = tmp_path / "99_odd.py"  # blank lines at a cell's start and end, a tag, an empty markdown line
    odd.write_text('# %% [markdown]\n# # Title\n#\n# text\n\n# %% tags=["parameters"]\nx: int = 1\n\n# %%\n\n'
                   'import os\n\n\nprint(os.sep)\n\n\n')
    for src in [*nbtool.sources(), odd]:
        theirs = [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in jupytext.read(src, fmt="py:percent").cells]
        assert theirs == nbtool.read_percent(src), src.name
    changed = tmp_path / "00_data.py"
    changed.write_text((ROOT / "notebooks" / "00_data.py").read_text().replace("seed: int = 42", "seed: int = 43"))
    (tmp_path / "00_data.ipynb").write_bytes((ROOT / "notebooks" / "00_data.ipynb").read_bytes())
    assert nbtool.main(["--check", str(changed)]) == 1


def test_a_parameters_cell_edited_by_hand_fails_check_and_is_rewritten_from_the_model(tmp_path, capsys):
    """The parameters cells are written from nesylib/pipeline/param_model.py: a hand edit in the .py source (even
    with the .ipynb rebuilt from it) fails --check, and nbtool writes the model's cell back."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import nbtool

    edited = tmp_path / "05_baselines.py"
    edited.write_text((ROOT / "notebooks/05_baselines.py").read_text().replace("kard_k: int = 3", "kard_k: int = 5"))
    nbtool.build(edited, tmp_path)
    assert nbtool.main(["--check", str(edited)]) == 1
    assert ("05_baselines.py (its parameters cell differs from nesylib/pipeline/param_model.py)"
            in capsys.readouterr().err)
    assert nbtool.with_model_parameters(edited) == (ROOT / "notebooks/05_baselines.py").read_text()


# ------------------------------------------------------------------ the smoke run's numbers, stored
# Three runs of the smoke preset on this machine (two by `nesylib run`, one by this module) gave the same
# results.json numbers to the last bit, except durations (112 of the 2,898 numbers: seconds, tokens per
# second). So the stored values are compared with a tight tolerance: relative 1e-6 leaves room only for
# last-digit rounding (fp32 carries ~7 digits), while the regressions this test is for move numbers by far
# more. A changed prompt changes the prefill and inference FLOPs, counted from token numbers (one token more
# in one of 20 ~250-token prompts is +2e-4), the prompt-length and compression statistics and the training
# losses; a broken retrieval changes the retrieval shares, hit ids and BM25 scores and the share of needed
# facts in the knowledge (steps of 1/288 or more); a changed scorer or bootstrap changes the accuracies and
# their intervals (steps of 1/n, n <= 12 items per set). The tiny random model answers almost nothing right,
# so accuracies alone would catch little: the FLOPs, losses and knowledge statistics carry this test.
# The values are this machine's (tests/expected/smoke_metrics.json: "recorded_on"); a CPU that rounds
# differently may differ in the losses or in a greedy token: there, regenerate the file and review it.
REL_TOL, ABS_TOL = 1e-6, 1e-9
# Numbers that are not results: how long something took (differs on every run) ...
_DURATION = re.compile(r"(^|_)(s|seconds)$")
# ... the parameters a notebook echoes back (params.json and the cache key hold them) ...
_INPUT_ECHOES = {"train_config", "base_config", "synth_config"}
# ... and notebook 08's re-groupings of the per-item scores whose totals are in its rows and
# paired_vs_std (by task, hops, exposure); they would make the file four times the size.
_BREAKDOWNS = {"08_synthetic_benchmark": {"by_task", "by_hops", "by_exposure", "by_split_exposure",
                                          "paired_by_group"}}
# 07 computes nothing of its own from a model: every number in its results.json is copied or averaged
# from 03-06/08 by nesylib.report (tested in test_report.py and by the byte-for-byte redraw below).
_NOT_COMPARED = {"07_flops_and_figures"}
_LABEL_FIELDS = ("method_id", "variant", "task", "dataset", "stage", "sweep", "split", "method", "uid", "name")


def _labels(items: list) -> list[str]:
    """Keys for a list's elements: its dicts' identifying field(s) when they tell them apart (rows[kb],
    sweeps.k[k=0/test]), else the positions; a reordered list then still compares row by row."""
    if items and all(isinstance(x, dict) for x in items):
        for n in (1, 2):
            for fields in itertools.combinations(_LABEL_FIELDS, n):
                values = [[x.get(f) for f in fields] for x in items]
                if all(isinstance(v, (str, int)) and not isinstance(v, bool) for vs in values for v in vs):
                    labels = ["/".join(map(str, vs)) for vs in values]
                    if len(set(labels)) == len(labels):
                        return labels
    return [str(i) for i in range(len(items))]


def _numbers(obj, key: str = "", skip=frozenset()):
    """(flat key, number) for every number in a results.json tree, without durations and skipped blocks."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not key and k in skip:
                continue
            yield from _numbers(v, f"{key}.{k}" if key else str(k), skip)
    elif isinstance(obj, list):
        for label, v in zip(_labels(obj), obj):
            yield from _numbers(v, f"{key}[{label}]", skip)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if not _DURATION.search(key.rsplit(".", 1)[-1]):
            yield key, obj


def smoke_metrics(run_root: Path) -> dict[str, dict[str, float]]:
    """{notebook: {metric: value}} of a smoke run folder, as stored in tests/expected/smoke_metrics.json."""
    out = {}
    for res in sorted(Path(run_root).glob("[0-9][0-9]_*/results.json")):
        stem = res.parent.name
        if stem in _NOT_COMPARED:
            continue
        skip = _INPUT_ECHOES | _BREAKDOWNS.get(stem, set())
        out[stem] = dict(_numbers(runs.read_json(res), skip=frozenset(skip)))
    return out


def write_expected(run_root: Path, path: Path = EXPECTED) -> Path:
    env = runs.read_json(Path(run_root) / "00_data" / "env.json")
    doc = {"about": "Numbers of the smoke preset's results.json files (tests/test_notebooks.py::"
                    "test_smoke_metrics_match_the_stored_values); durations, echoed parameters, 08's per-group "
                    "breakdowns and 07 are left out. Generated, not edited: " + UPDATE_COMMAND,
           "recorded_on": {k: env.get(k) for k in ("python", "platform", "device")}
           | {"torch": env.get("packages", {}).get("torch"), "kernel_threads": 1},
           "rel_tol": REL_TOL, "abs_tol": ABS_TOL, "metrics": smoke_metrics(run_root)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


def test_smoke_metrics_match_the_stored_values(smoke_run):
    """Every number stored in tests/expected/smoke_metrics.json is in the smoke run's results within
    REL_TOL/ABS_TOL. After a change that is meant to move them, regenerate the file (UPDATE_COMMAND) and
    review its diff."""
    root, _ = smoke_run
    if os.environ.get(UPDATE_ENV) == "1":
        print(f"wrote {write_expected(root)}")
    assert EXPECTED.is_file(), f"no {EXPECTED.relative_to(ROOT)}; create it with `{UPDATE_COMMAND}`"
    expected = json.loads(EXPECTED.read_text())["metrics"]
    got = smoke_metrics(root)
    problems, new = [], []
    for stem, metrics in expected.items():
        if stem not in got:
            problems.append(f"{stem}: no results.json in the smoke run (expected {len(metrics)} metrics)")
            continue
        for name, want in metrics.items():
            have = got[stem].get(name)
            if have is None:
                problems.append(f"{stem}: {name}: expected {want!r}, got nothing (no longer in results.json)")
            elif not math.isclose(have, want, rel_tol=REL_TOL, abs_tol=ABS_TOL):
                problems.append(f"{stem}: {name}: expected {want!r}, got {have!r}")
        new += [f"{stem}: {name}" for name in got[stem] if name not in metrics]
    new += [f"{stem} (all {len(got[stem])})" for stem in got if stem not in expected]
    if new:
        warnings.warn(f"{len(new)} smoke metric(s) not in {EXPECTED.name} (add them with `{UPDATE_COMMAND}`): "
                      + "; ".join(new[:10]) + ("; ..." if len(new) > 10 else ""))
    assert not problems, (f"{len(problems)} smoke metric(s) differ from {EXPECTED.relative_to(ROOT)} beyond "
                          f"rel {REL_TOL:g} / abs {ABS_TOL:g}:\n  " + "\n  ".join(problems[:40])
                          + ("\n  ..." if len(problems) > 40 else "")
                          + f"\nIf the change is intended, regenerate it with `{UPDATE_COMMAND}` and review the diff.")


# ------------------------------------------------------------------------- CSV cells: plain numbers
_NUMBER = r"\s*(?:np\.float\d*\(|np\.int\d*\()?\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*\)?\s*"
_NUMBER_OR_LIST = re.compile(rf"^(?:{_NUMBER}|[\[(](?:{_NUMBER},)*{_NUMBER}[\])]|nan|inf|-inf)$")


def csv_problems(path: Path) -> list[str]:
    """Columns of a CSV that hold numbers (or lists of numbers) in every filled cell but that pandas does
    not read as a numeric column: e.g. "[np.float64(0.15), np.float64(0.425)]"."""
    df = pd.read_csv(path)
    out = []
    for col in df.columns:
        if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            continue
        cells = [str(c) for c in df[col].dropna()]
        if cells and all(_NUMBER_OR_LIST.match(c) for c in cells):
            out.append(f"{path}: column {col!r} holds numbers that pandas reads as text, e.g. {cells[0]!r}")
    return out


def test_smoke_csv_tables_hold_plain_numbers(smoke_run):
    root, _ = smoke_run
    files = sorted(p for p in root.glob("[0-9][0-9]_*/*.csv"))
    assert any(p.parent.name == "07_flops_and_figures" for p in files)
    assert {"03_nesycd_training", "04_skintern_curriculum", "05_baselines", "08_synthetic_benchmark"} <= \
        {p.parent.name for p in files}  # the notebooks that write interval columns are among them
    problems = [problem for p in files for problem in csv_problems(p)]
    assert not problems, "\n".join(problems)


def test_write_csv_splits_intervals_into_plain_numbers(tmp_path):
    """nesylib.report.write_csv: [low, high] cells (numpy scalars or not, some missing) become two numeric
    columns in place; numpy scalars are written as numbers; text and mixed columns stay as they are."""
    table = pd.DataFrame([
        {"method": "Std-CoT", "test": np.float64(0.275), "test_ci": [np.float64(0.15), np.float64(0.425)],
         "n": 40, "value": "bm25", "diff_ci": None},
        {"method": "Chance", "test": 0.2, "test_ci": None, "n": None, "value": 3, "diff_ci": (-0.1, 0.2)},
    ])
    raw = tmp_path / "raw.csv"
    table.to_csv(raw, index=False)
    assert csv_problems(raw) and "np.float64" in raw.read_text()  # what to_csv alone writes
    path = report.write_csv(table, tmp_path / "t.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == ["method", "test", "test_ci_low", "test_ci_high", "n", "value", "diff_ci_low",
                                  "diff_ci_high"]
    assert csv_problems(path) == [] and "np." not in path.read_text()
    for col in ("test", "test_ci_low", "test_ci_high", "n", "diff_ci_low", "diff_ci_high"):
        assert pd.api.types.is_numeric_dtype(back[col]), col
    assert back.test_ci_low.tolist()[0] == 0.15 and math.isnan(back.test_ci_high[1])
    assert back.diff_ci_high.tolist()[1] == 0.2 and back.value.tolist() == ["bm25", "3"]
    with pytest.raises(ValueError, match="repeat the column"):
        report.flat_table(pd.DataFrame({"x": [[0.1, 0.2]], "x_low": [0.1]}))


# ------------------------------------------------- notebook 07 redraws results/cpu byte for byte
COMMITTED = ROOT / "results" / "cpu"
REDRAW = "07_flops_and_figures"
# Fields of the redraw's own metadata that name where and when it ran, not what it drew. Every other
# field, and every table (.md, .csv) and figure (.png), must equal the committed file.
RUN_SPECIFIC = {
    "params.json": {"run_root", "results_dir"},  # the folders it wrote to and read (as given)
    "results.json": {"results_dir", "inputs"},   # absolute paths of the folder read and its results.json files
    "env.json": "every value",                   # python, platform, packages, git_commit, cpu_count, time,
                                                 # torch_threads, device...: the machine and moment (keys compared)
}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _first_difference(ours: Path, theirs: Path) -> str:
    if ours.suffix == ".png":
        return f"{ours.stat().st_size} bytes redrawn, {theirs.stat().st_size} committed"
    diff = difflib.unified_diff(theirs.read_text().splitlines(), ours.read_text().splitlines(), "committed",
                                "redrawn", n=0, lineterm="")
    return "\n".join(itertools.islice(diff, 8))


@pytest.mark.skipif(not (COMMITTED / REDRAW / "params.json").is_file(), reason="no committed results/cpu redraw")
def test_notebook_07_redraws_the_committed_results_byte_for_byte(tmp_path):
    """The README's command redraws results/cpu/07_flops_and_figures from results/cpu alone:
    `papermill notebooks/07_flops_and_figures.ipynb out.ipynb --cwd notebooks -p results_dir ../results/cpu`.

    It reads the committed folder where it is (its tables name the folder they came from, so a copy
    elsewhere would title main_table.md differently) and writes into tmp_path only; the committed
    files are checked unchanged afterwards. After a change to nesylib/report/ or notebook 07 that is
    meant to change them, redraw the committed folder with the same command and `-p run_root`, and copy
    its tables, figures and json files over results/cpu/07_flops_and_figures."""
    import papermill as pm

    committed = COMMITTED / REDRAW
    before = _digests(COMMITTED)
    ran_with = runs.read_json(committed / "params.json")
    params = {k: v for k, v in ran_with.items() if k not in RUN_SPECIFIC["params.json"]}
    source = os.path.relpath(COMMITTED, ROOT / "notebooks")  # ../results/cpu, as in the README
    pm.execute_notebook(str(ROOT / "notebooks" / f"{REDRAW}.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={**params, "results_dir": source, "run_root": str(tmp_path / "run")},
                        kernel_name="python3", progress_bar=False, cwd=str(ROOT / "notebooks"))
    redrawn = tmp_path / "run" / REDRAW
    assert _digests(COMMITTED) == before, "the redraw changed files under results/cpu"
    names = sorted(p.name for p in redrawn.iterdir())
    assert names == sorted(p.name for p in committed.iterdir()), \
        f"redrawn files {names} differ from the committed {sorted(p.name for p in committed.iterdir())}"
    differ = [f"{n}:\n{_first_difference(redrawn / n, committed / n)}" for n in names
              if n not in RUN_SPECIFIC and (redrawn / n).read_bytes() != (committed / n).read_bytes()]
    assert not differ, (f"redrawn files differ from {committed.relative_to(ROOT)} (were they drawn by other code? "
                        f"see this test's docstring to redraw them):\n" + "\n".join(differ))
    for name in ("params.json", "results.json"):
        ours, theirs = (runs.read_json(d / name) for d in (redrawn, committed))
        keep = lambda d: {k: v for k, v in d.items() if k not in RUN_SPECIFIC[name]}  # noqa: E731
        bad = sorted(k for k in set(ours) | set(theirs) if keep(ours).get(k) != keep(theirs).get(k))
        assert not bad, f"{name}: field(s) {bad} differ from the committed file"
    assert set(runs.read_json(redrawn / "env.json")) == set(runs.read_json(committed / "env.json"))
    problems = [p for n in names if n.endswith(".csv") for p in csv_problems(redrawn / n)]
    assert not problems, "\n".join(problems)
