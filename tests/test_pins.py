"""pyproject.toml, requirements/*.txt and environment.yml must pin the same versions."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^;\s]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_three_pin_lists_agree():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _pins(py["dependencies"]) | _pins(py["optional-dependencies"]["dev"])
    req = _pins((ROOT / "requirements/cpu.txt").read_text().splitlines()
                + (ROOT / "requirements/dev.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = _pins(pip_list)
    assert core == req, set(core.items()) ^ set(req.items())
    assert core == conda, set(core.items()) ^ set(conda.items())


def test_gpu_extra_is_optional_and_pinned():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("unsloth") for d in py["dependencies"])
    assert any(d.startswith("unsloth==2026.10.7") for d in py["optional-dependencies"]["gpu"])
