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


def test_data_notebook_runs_and_caches(tmp_path):
    out = runs.run_preset("smoke", only=["00_data"], run_root=tmp_path, log=lambda *_: None)
    assert out == [{"notebook": "00_data", "status": "ran", "seconds": out[0]["seconds"]}]
    res = json.loads((tmp_path / "00_data" / "results.json").read_text())
    assert res["bbh_train"] == 5209 and res["bbh_test"] == 1302
    env = json.loads((tmp_path / "00_data" / "env.json").read_text())
    assert env["packages"]["transformers"] == "5.17.0"
    assert (tmp_path / "00_data.ipynb").is_file() and (tmp_path / "00_data" / "bbh_split.png").is_file()
    again = runs.run_preset("smoke", only=["00_data"], run_root=tmp_path, log=lambda *_: None)
    assert again[0]["status"] == "cached"


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
