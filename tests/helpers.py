"""Builders shared by several test files (imported as ``helpers``: pytest puts tests/ on sys.path).

Heavy imports stay inside the functions so that importing this module costs a test file nothing."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# the parameters every `runs.start` notebook needs; tests append their own lines
RUN_PARAMS = 'preset = "adhoc"\nrun_root = None\nseed = 1'


def bow_embed(texts, dim=1024):
    """Deterministic hashed bag-of-words vectors: enough to make 'similar' testable without a model."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9]+", t.lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % dim] += 1.0
    return out


def codex_records(tasks, per_task=None):
    """BBH train records of ``tasks`` whose "rationale" is the item's Codex CoT up to its "So the answer is"
    sentence; ``per_task`` keeps a seeded subsample of that many items per task."""
    from nesylib.data.benchmarks import load_bbh, load_codex_rationales, subsample

    recs = []
    for task in tasks:
        cots = load_codex_rationales(task)
        for r in subsample(load_bbh("train", tasks=[task]), per_task=per_task):
            r["rationale"] = cots[int(r["uid"].rsplit("/", 1)[1])].split("So the answer is")[0].strip()
            recs.append(r)
    return recs


def synth_fixtures(config):
    """Module-scoped ``world``, ``bench`` and ``teacher`` fixtures for one SynthConfig; a test module binds
    them with ``world, bench, teacher = synth_fixtures(CONFIG)``."""
    from nesylib.synth import SynthTeacher, generate_benchmark, generate_world

    @pytest.fixture(scope="module")
    def world():
        return generate_world(config)

    @pytest.fixture(scope="module")
    def bench(world):
        return generate_benchmark(config, world)

    @pytest.fixture(scope="module")
    def teacher(world):
        return SynthTeacher(world)

    return world, bench, teacher


def write_notebook(path, params, *cells):
    """Write a python3 notebook for papermill (creating its folder): a code cell tagged "parameters" holding
    ``params``, then one code cell per string in ``cells``."""
    import nbformat

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    head = nbformat.v4.new_code_cell(params)
    head.metadata["tags"] = ["parameters"]
    nb.cells = [head, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def notebook_runner(run_root, student, **params):
    """``run(nb, **more)``: execute notebooks/<nb> with papermill on a tiny navigate-only setup (preset "t",
    one BBH eval item, seed 42, ``params`` on top, ``more`` on top of that), writing the executed copy and the
    run's outputs under ``run_root``. Papermill's errors propagate (PapermillExecutionError)."""
    import papermill as pm

    common = dict(preset="t", run_root=str(run_root), student=str(student), bbh_tasks=["navigate"],
                  eval_per_task={"bbh": 1}, seed=42) | params

    def run(nb, **more):
        return pm.execute_notebook(str(ROOT / "notebooks" / nb), str(Path(run_root) / nb),
                                   parameters=common | more, progress_bar=False, cwd=str(ROOT / "notebooks"))

    return run
