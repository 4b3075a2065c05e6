"""Every notebook is committed without outputs and runs under papermill on the smoke preset."""
import json
import subprocess
from pathlib import Path

import pytest

from nesylib import runs
from nesylib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = runs.list_notebooks()


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
    from nesylib.experiment import select_train

    golds = [r["answer"] for r in select_train(["navigate"], 4, 0, 42)]
    assert res["accepted"] == golds.count("No")  # the server always answers "No": only those are right
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "teacher_store.jsonl" for p in written)
    for p in written:
        assert key not in p.read_text(errors="replace"), f"the API key leaked into {p}"


def test_smoke_preset_runs_every_notebook_and_caches(tmp_path):
    out = runs.run_preset("smoke", run_root=tmp_path, log=lambda *_: None)
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
    again = runs.run_preset("smoke", run_root=tmp_path, log=lambda *_: None)
    assert all(o["status"] == "cached" for o in again)


def test_bad_preset_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncommon: {seed: 1}\nnotebooks:\n  00_data: {datasetz: [bbh]}\n")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['datasetz'\]"):
        runs.run_preset(str(bad), only=["00_data"], run_root=tmp_path, log=lambda *_: None)
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
    files = runs.export_results("x", run, tmp_path / "out")
    assert sorted(p.name for p in files) == ["baselines.csv", "results.json"]
    assert not (tmp_path / "out" / "06_unfinished").exists()
    with pytest.raises(ConfigError, match="no run folder"):
        runs.export_results("x", tmp_path / "missing")


def test_committed_notebooks_equal_their_sources(tmp_path):
    """The notebooks are built from scripts/nb_*.py: a notebook edited by hand, or a source changed
    without rebuilding, fails here (rebuild with `.venv/bin/python scripts/nb_<name>.py`)."""
    import os
    import sys

    scripts = sorted((ROOT / "scripts").glob("nb_*.py"))
    assert len(scripts) == len(NOTEBOOKS)
    env = {**os.environ, "NESYLIB_NOTEBOOK_DIR": str(tmp_path)}
    for script in scripts:
        subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=ROOT, capture_output=True)
    for nb in NOTEBOOKS:
        built = tmp_path / nb.name
        assert built.is_file(), f"no script builds {nb.name}"
        assert built.read_bytes() == nb.read_bytes(), f"{nb.name} differs from its source in scripts/"
