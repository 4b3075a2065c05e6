"""What a researcher sees on the first day: `nesylib run` says which notebook is running and for how long
(and how long it took last time), a successful run's log has no kernel start-up and shutdown noise while
a notebook's real error is still reported, notebooks get the text progress bar without an "IProgress not
found" warning, and `make lab` installs JupyterLab and starts it on the notebooks with their kernel."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import RUN_PARAMS, write_notebook
from nesylib import progress
from nesylib.pipeline import runner, runs

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("KeyboardInterrupt caught in kernel", "running over TCP without encryption")


# ------------------------------------------------------------------------------- progress bars
def test_progress_picks_the_text_bar_in_a_kernel_without_ipywidgets(monkeypatch):
    from tqdm.auto import tqdm as auto_bar
    from tqdm.std import tqdm as std_bar

    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", sys.modules.get("ipykernel.zmqshell") or object())
    monkeypatch.setattr(progress, "widgets_available", lambda: False)
    assert progress.tqdm_class() is std_bar
    bar = progress.tqdm(total=3, disable=True)
    assert type(bar) is std_bar
    bar.close()
    monkeypatch.setattr(progress, "widgets_available", lambda: True)  # a front-end that can draw widgets
    assert progress.tqdm_class() is auto_bar


# ------------------------------------------------------------------- a tiny preset, run for real
_NOISY_SHUTDOWN = '''import os, time
k = get_ipython().kernel
_info = k.kernel_info_request

async def _slow_info(*args):  # papermill's last request; an interrupt now is logged by ipykernel
    await _info(*args)
    time.sleep(1.5)

k.shell_handlers["kernel_info_request"] = _slow_info
os.write(2, b"kernel stderr is kept\\n")'''


def _notebook(path: Path, stem: str, body: str) -> None:
    start = (f"import time\nimport nesylib\nfrom nesylib.pipeline import runs\n"
             f"ctx = runs.start({stem!r}, dict(preset=preset, run_root=run_root, seed=seed, nap=nap))")
    write_notebook(path, RUN_PARAMS + "\nnap = 0.0", start, body)


def _outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    return json.dumps([o for c in nb["cells"] for o in c.get("outputs", [])])


def test_a_run_shows_a_heartbeat_and_last_time_without_kernel_noise_and_errors_still_show(tmp_path, capfd):
    nbs = tmp_path / "nbs"
    body = (_NOISY_SHUTDOWN + "\nfrom tqdm.auto import tqdm as auto_bar\nfrom nesylib.progress import tqdm_class\n"
            "print('bars:', auto_bar.__module__, tqdm_class().__module__)\ntime.sleep(nap)\n"
            "ctx.save_results({'nap': nap})")
    _notebook(nbs / "00_first.ipynb", "00_first", body)
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\nnotebooks: {00_first: {nap: 1.5}}\n")
    logged = []
    kw = dict(run_root=tmp_path / "run", notebooks_dir=nbs, kernel="python3", log=logged.append, heartbeat_s=0.4)

    assert [o["status"] for o in runner.run_preset(str(preset), **kw)] == ["ran"]
    beats = [line for line in logged if re.fullmatch(r"00_first: running, \d+ s", line)]
    assert len(beats) >= 2, logged
    assert "[1/1] 00_first: running ..." in logged
    err = capfd.readouterr().err
    assert "kernel stderr is kept" in err  # the kernel's own stderr still reaches the terminal
    for noise in NOISE:
        assert noise not in err
    executed = _outputs(tmp_path / "run" / "00_first.ipynb")
    assert "IProgress" not in executed
    if not progress.widgets_available():
        assert "bars: tqdm.asyncio tqdm.std" in executed  # tqdm.auto and nesylib's helper: the text bar

    first = runs.read_json(tmp_path / "run" / "00_first" / "done.json")["seconds"]
    logged.clear()
    runner.run_preset(str(preset), force=True, **kw)
    last = f"(last time {first:.0f} s)"
    assert f"[1/1] 00_first: running ... {last}" in logged
    assert any(re.fullmatch(rf"00_first: running, \d+ s {re.escape(last)}", line) for line in logged), logged

    # a notebook's own error: raised with its name and message, recorded, and the run says it failed
    _notebook(nbs / "00_first.ipynb", "00_first", "raise ValueError('the data is wrong')")
    logged.clear()
    with pytest.raises(Exception) as e:
        runner.run_preset(str(preset), **kw)
    assert getattr(e.value, "ename", None) == "ValueError" and "the data is wrong" in e.value.evalue
    assert any("00_first: failed" in line for line in logged)
    assert "ValueError: the data is wrong" in (tmp_path / "run" / "00_first.failed" / "error.txt").read_text()
    err = capfd.readouterr().err
    for noise in NOISE:
        assert noise not in err


def test_duration_reads_like_a_clock():
    assert [runner._duration(s) for s in (7, 59.4, 59.6, 125, 41 * 60, 3599, 2 * 3600 + 5 * 60)] == \
        ["7 s", "59 s", "1 min", "2 min", "41 min", "1 h 00 min", "2 h 05 min"]


# -------------------------------------------------------------------------------------- make lab
def _outer_make_free_env() -> dict:
    # Under `make test` the outer make exports MAKELEVEL/MAKEFLAGS, and the inner make then prints
    # "make[1]: Entering/Leaving directory" lines around its dry run; a clean environment reads as a user's shell.
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}


def _make_n(*args) -> list[str]:
    out = subprocess.run(["make", "-n", "USE_CONDA=", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=_outer_make_free_env())
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_make_lab_installs_jupyterlab_registers_the_notebooks_kernel_and_starts_on_notebooks(tmp_path):
    venv = tmp_path / "venv"  # a fresh environment: every step shows
    lines = _make_n("lab", f"VENV={venv}")
    kernels = {json.loads(p.read_text())["metadata"]["kernelspec"]["name"] for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert len(kernels) == 1
    kernel = kernels.pop()
    install = lines.index(f"{venv}/bin/pip install -q -r requirements/lab.txt -c requirements/cpu.txt "
                          "-c requirements/dev.txt")
    register = [i for i, line in enumerate(lines)
                if line.startswith(f"{venv}/bin/python -m ipykernel install --sys-prefix --name {kernel} ")]
    provision = lines.index(f"{venv}/bin/python -m nesylib provision")
    launch = lines[-1].split()
    assert launch[:4] == [f"{venv}/bin/jupyter", "lab", "--notebook-dir=notebooks",
                          f"--MappingKernelManager.default_kernel_name={kernel}"]
    assert set(launch[4:]) <= {"--allow-root"}  # the fresh environment has no python yet to ask about zmq
    assert register and max(register) < len(lines) - 1 and provision < len(lines) - 1 and install < len(lines) - 1
    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements/lab.txt").read_text().splitlines()]
    assert "jupyterlab==4.6.6" in pins
    # the main stack does not pay for it
    assert not any("lab.txt" in line for line in _make_n("test", f"VENV={venv}"))


def test_make_lab_gives_the_kernels_encrypted_transport_where_zmq_can():
    import zmq

    launch = _make_n("lab")[-1].split()  # this checkout's environment (dry run: nothing is installed)
    assert launch[0].endswith("/bin/jupyter") and launch[1] == "lab"
    assert ("--KernelManager.transport_encryption=auto" in launch) == zmq.has("curve")


def test_use_conda_runs_every_step_in_the_active_conda_env(tmp_path):
    env = tmp_path / "conda"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    lines = _make_n("lab", "USE_CONDA=1", f"CONDA_PREFIX={env}")
    assert not any("-m venv" in line for line in lines)
    assert f"{env}/bin/pip install -q -r requirements/cpu.txt -r requirements/dev.txt" in lines
    assert lines[-1].startswith(f"{env}/bin/jupyter lab --notebook-dir=notebooks")
    refused = subprocess.run(["make", "-n", "model", "USE_CONDA=1", "CONDA_PREFIX="], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env=_outer_make_free_env())
    assert refused.returncode != 0 and "conda activate nesylib" in refused.stderr
