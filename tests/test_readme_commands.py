"""The README's shell commands (its ```bash / ```sh blocks) are run by this test, or accounted for.

Every command of those blocks must have an entry in ``COMMANDS``, saying what is done with it:

* ``RUN``: executed as written, from the repository root with the test's environment first on PATH
  (``.venv/bin/X`` is that environment's ``X``); only the places it writes are moved into a temporary
  folder (``--run-root``, ``--out``, papermill's output notebook). It must exit 0.
* ``DRY``: a make target, run as ``make -n TARGET`` (make prints the recipe and runs nothing).
* ``CHECK``: too slow or costly to run here (the reason is given); the command line is checked instead:
  nesylib's own argument parser accepts it, its preset loads, every ``--set`` and ``--only`` is valid, its
  datasets and prices are readable, and papermill's ``-y`` values are parameters of the notebook, of
  the declared types (``papermill --help-notebook`` is run on it).
* ``SKIP``: not a command of this project to run in a test (the reason is given).

A command added to the README without an entry fails ``test_every_readme_command_has_an_entry``, and an
entry whose command left the README fails it too.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_run_output import _outer_make_free_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment the tests run in (.venv/bin under `make test`)
FENCE = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", re.M | re.S)

RUN, DRY, CHECK, SKIP = "run", "dry-run", "check", "skip"
SMOKE_RUN = "the whole smoke preset (every notebook, minutes): tests/test_notebooks.py runs it"
TRAINS = "trains every student of the cpu preset (hours on a CPU)"
COMMANDS = {
    # "Two commands"
    "make reproduce": (DRY, "every notebook on the cpu preset: about 2 h 40 min"),
    "make test": (DRY, "the test suite itself"),
    # "Running a preset or a single notebook"
    ".venv/bin/python -m nesylib run --preset smoke": (CHECK, SMOKE_RUN),
    ".venv/bin/python -m nesylib run --preset cpu --only 00_data": (
        CHECK, "notebook 00_data on all six benchmarks (about 20 s here); the same notebook is run by the "
               "my_qa command below"),
    ".venv/bin/python -m nesylib params 08_synthetic_benchmark --preset cpu": (RUN, ""),
    ".venv/bin/python -m nesylib run --preset cpu --run-root results/runs/cpu-lr5e-4 --set common.seed=1 "
    "--set 08_synthetic_benchmark.train.lr=5e-4 --set 05_baselines.methods='[std,kard]'": (CHECK, TRAINS),
    ".venv/bin/papermill notebooks/00_data.ipynb out.ipynb -y 'datasets: [bbh]'": (
        CHECK, "notebook 00_data by hand (about 20 s here); the same notebook is run by the my_qa command below"),
    # "Opening the notebooks"
    "make lab": (DRY, "starts a JupyterLab server, which runs until stopped"),
    # "Your own dataset"
    ".venv/bin/python -m nesylib run --preset examples/my_qa/preset.yaml --only 00_data": (
        CHECK, "notebook 00_data on the smoke preset's sets and my_qa (about 20 s here); the command after it "
               "runs the same notebook on my_qa alone"),
    ".venv/bin/python -m nesylib run --preset examples/my_qa/preset.yaml --only 00_data "
    "--set 00_data.datasets='[my_qa]'": (RUN, ""),
    ".venv/bin/python -m nesylib run --preset examples/my_qa/preset.yaml": (
        CHECK, "trains and evaluates the smoke students on my_qa (minutes); tests/test_own_dataset.py covers it"),
    ".venv/bin/python -m nesylib teach --backend openai --model gpt-4o-mini --datasets examples/my_qa/my_qa.yaml "
    "--store runs/teacher_store.jsonl --out runs/my_qa_rationales.jsonl": (
        CHECK, "paid calls to the OpenAI API (needs OPENAI_API_KEY); tests/test_teacher_progress.py runs the "
               "openai backend against a local server"),
    ".venv/bin/python -m nesylib teach --backend local --model tiny-llama --datasets examples/my_qa/my_qa.yaml "
    "--limit 2 --max-rounds 1 --max-tokens 32 --out /tmp/my_qa.jsonl": (RUN, ""),
    # "Training logs and exporting a student"
    ".venv/bin/pip install tensorboard": (SKIP, "installs a package outside the pinned stack (network)"),
    ".venv/bin/python -m nesylib run --preset cpu --set common.train.report_to=tensorboard": (CHECK, TRAINS),
    ".venv/bin/tensorboard --logdir results/runs/cpu/students": (
        SKIP, "a TensorBoard server (runs until stopped; tensorboard is not in the pinned stack)"),
    ".venv/bin/python -m nesylib export-model --adapter results/runs/cpu/students/std-<key>/adapter "
    "--out exported/std": (CHECK, "needs a trained student (<key> is a placeholder for one of a cpu run)"),
}


def _norm(command: str) -> str:
    return shlex.join(shlex.split(command, comments=True))


def readme_commands(text: str) -> list[str]:
    """The commands of the README's bash/sh blocks: backslash continuations joined, comments dropped."""
    found = []
    for block in FENCE.findall(text):
        line = ""
        for part in block.splitlines():
            if part.rstrip().endswith("\\"):
                line += part.rstrip()[:-1] + " "
                continue
            line += part
            if shlex.split(line, comments=True):
                found.append(_norm(line))
            line = ""
        assert not line, f"a README block ends inside a continued line: {line!r}"
    return found


ENTRIES = {_norm(c): v for c, v in COMMANDS.items()}


def test_every_readme_command_has_an_entry():
    cmds = readme_commands(README.read_text(encoding="utf-8"))
    assert len(cmds) >= 10, cmds  # the blocks were found
    new = [c for c in cmds if c not in ENTRIES]
    gone = [c for c in ENTRIES if c not in cmds]
    assert not new, ("README commands with no entry in COMMANDS: run them here (RUN/DRY), or list them with the "
                     f"reason they are not (CHECK/SKIP): {new}")
    assert not gone, f"COMMANDS entries no longer in the README: {gone}"
    for cmd, (how, why) in ENTRIES.items():
        assert how in (RUN, DRY, CHECK, SKIP) and (why or how == RUN), (cmd, how, why)


def _argv(cmd: str) -> list[str]:
    """The command's words, with ``.venv/bin/X`` as the test environment's ``X``."""
    return [str(BIN / w.removeprefix(".venv/bin/")) if w.startswith(".venv/bin/") else w for w in shlex.split(cmd)]


def _env() -> dict:
    env = _outer_make_free_env()  # under `make test` a child make must not see the outer one
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced by ``value`` (the flag appended when absent)."""
    if flag in argv:
        i = argv.index(flag)
        return argv[:i + 1] + [value] + argv[i + 2:]
    return argv + [flag, value]


def _run(argv, timeout=600) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (argv, res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    return res


def _of(how):
    return [c for c, (h, _) in ENTRIES.items() if h == how]


def _id(cmd: str) -> str:
    """A readable test id: the command without the environment's path, its words joined by '_'."""
    return "_".join(re.sub(r"[^\w.=,-]+", " ", cmd.replace(".venv/bin/", "")).split())[:90]


@pytest.mark.parametrize("cmd", _of(DRY), ids=_id)
def test_make_targets_of_the_readme_exist(cmd):
    argv = _argv(cmd)
    assert argv[0] == "make"
    res = _run(["make", "-n", *argv[1:]], timeout=120)
    assert res.stdout.strip(), f"{cmd}: make -n printed no recipe"


@pytest.mark.parametrize("cmd", _of(RUN), ids=_id)
def test_readme_command_runs(cmd, tmp_path, request):
    argv = _argv(cmd)
    sub = argv[3] if argv[1:3] == ["-m", "nesylib"] else None
    if sub == "run":
        argv = _flag(argv, "--run-root", str(tmp_path / "runs"))
    elif sub == "teach":
        argv = _flag(argv, "--out", str(tmp_path / Path(argv[argv.index("--out") + 1]).name))
        if "tiny-llama" in argv:
            request.getfixturevalue("tiny_model_dir")  # built once per machine, as `make test` does
    res = _run(argv)
    if sub == "run":  # it wrote where it was sent
        only = argv[argv.index("--only") + 1].split(",")
        assert all((tmp_path / "runs" / nb / "results.json").is_file() for nb in only), res.stdout
        assert "notebook(s) ran" in res.stdout
    elif sub == "teach":
        assert "wrote " in res.stdout and Path(argv[argv.index("--out") + 1]).is_file(), res.stdout
    elif sub == "params":
        assert "train" in res.stdout


def _check_nesylib(argv: list[str]) -> None:
    """What the nesylib command would check before doing anything, without doing it."""
    from nesylib.pipeline import params, runner, runs
    from nesylib.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"nesylib's parser refuses {argv}") from None
    if args.cmd == "run":
        preset = runs.load_preset(args.preset)
        params.apply_overrides(preset, args.set)
        known = {p.stem for p in runner.list_notebooks(runs.NOTEBOOKS_DIR)}
        only = [s for s in (args.only or "").split(",") if s]
        assert set(only) <= known, (only, known)
    elif args.cmd == "teach":
        from nesylib.teacher import cli as teach_cli

        assert teach_cli.dataset_names(args.datasets, args.backend)
        teach_cli._price_table(args)
    elif args.cmd == "export-model":
        assert args.adapter and args.out
    else:
        raise AssertionError(f"no check written for `nesylib {args.cmd}`")


def _check_papermill(argv: list[str]) -> None:
    """Its notebook exists, and each ``-y`` value names a declared parameter of the right type."""
    from nesylib.pipeline import params

    nb = ROOT / argv[1]
    assert nb.is_file(), nb
    given = {}
    words = iter(argv[3:])
    for w in words:
        if w in ("-y", "--parameters_yaml"):
            given.update(yaml.safe_load(next(words)))
        else:
            raise AssertionError(f"no check written for papermill's {w!r}")
    declared = params.notebook_parameters(nb)
    shown = _run([argv[0], "--help-notebook", str(nb)], timeout=120).stdout
    for name, value in given.items():
        assert name in declared and name in shown, (name, list(declared))
        assert declared[name].problem(value) is None, declared[name].problem(value)


@pytest.mark.parametrize("cmd", _of(CHECK), ids=_id)
def test_readme_command_is_well_formed(cmd, monkeypatch):
    from nesylib.data import custom_data

    monkeypatch.setattr(custom_data, "_LOCAL", {})  # datasets an entry file defines stay in this test
    argv = _argv(cmd)
    if argv[1:3] == ["-m", "nesylib"]:
        _check_nesylib(argv[3:])
    elif Path(argv[0]).name == "papermill":
        _check_papermill(argv)
    else:
        raise AssertionError(f"no check written for {cmd}")
