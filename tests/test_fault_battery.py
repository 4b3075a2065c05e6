"""Faults that must fail fast, name their cause and lose nothing (issue 17): an unreachable or hung
teacher endpoint, a teacher whose replies never parse, two runs on one run root, concurrent writers
of one file, a half-written training checkpoint, and the modes of the files the project writes.

Each case states its input, the exit code or exception it must give, and words its message must hold.
"""
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer
from helpers import RUN_PARAMS, notebook_runner, write_notebook
from nesylib.teacher import CachedTeacher, CallStore, TeacherError, TeacherReply, TeacherRequest
from nesylib.teacher.openai_backend import OpenAIBackend

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "NESYLIB_TEST_BATTERY_KEY"


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def dead_url():
    """A port on 127.0.0.1 that is bound but not listening: every connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()


@pytest.fixture
def hung_url():
    """A server that accepts connections (kernel backlog) but never answers: every call times out."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    s.close()


def _requests(n):
    return [TeacherRequest(prompt=f"Question {i}: what is {i} + {i}?", uid=f"b/{i}") for i in range(n)]


# --------------------------------------------------------------------------- circuit breaker
@pytest.mark.parametrize("endpoint, timeout, concurrency, words", [
    ("dead", 5.0, 1, ["unreachable", "3 calls in a row", "connection failed", "refused"]),
    ("dead", 5.0, 4, ["unreachable", "connection failed", "refused"]),
    ("hung", 0.3, 2, ["unreachable", "timed out"]),
])
def test_unreachable_endpoint_stops_after_a_few_calls_and_names_it(endpoint, timeout, concurrency, words,
                                                                    dead_url, hung_url, tmp_path):
    url = dead_url if endpoint == "dead" else hung_url
    backend = OpenAIBackend("fake-model", base_url=url, api_key_env=KEY_ENV, timeout=timeout, max_retries=1)
    t = CachedTeacher(backend, CallStore(tmp_path / "s.jsonl"), concurrency=concurrency, retry_backoff_s=0.01)
    with pytest.raises(TeacherError) as err:
        t.complete(_requests(12))
    msg = str(err.value)
    assert type(err.value).__name__ == "TeacherUnreachable" and url in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    # 3 failures in a row trip it; calls already in flight (at most concurrency - 1) still finish.
    # Without a breaker: 12 requests x 2 attempts.
    assert 3 <= t.summary.calls <= 3 + concurrency - 1, t.summary
    assert t.summary.unresolved == 12 and t.summary.succeeded == 0


def test_breaker_trips_on_two_silent_calls_a_window_apart():
    from nesylib.teacher import TeacherUnreachable

    class Silent:
        name, model, backend, parallel, endpoint = "slow:m", "m", "slow", False, "http://127.0.0.1:9/v1"

        def __init__(self):
            self.calls = 0

        def complete(self, reqs):
            self.calls += 1
            time.sleep(0.06)
            return [TeacherReply(text=None, ok=False, error="timed out", unreachable=True) for _ in reqs]

    b = Silent()
    t = CachedTeacher(b, retry_backoff_s=0.0, breaker_failures=100, breaker_window_s=0.05)
    with pytest.raises(TeacherUnreachable, match=r"http://127\.0\.0\.1:9/v1.*2 calls in a row"):
        t.complete(_requests(5))
    assert b.calls == 2


@pytest.mark.parametrize("faults, max_faults", [
    (("malformed",), 3),                      # three malformed 200 replies, then a good one
    (("empty", "empty_content"), 4),
    (("429", "500", "malformed", "empty_content"), 5),
])
def test_every_retryable_fault_shares_one_retry_policy(faults, max_faults):
    with FakeOpenAIServer(fault_rate=1.0, faults=faults, max_faults=max_faults, seed=3) as s:
        backend = OpenAIBackend("fake-model", base_url=s.base_url, api_key_env=KEY_ENV, timeout=5.0)
        t = CachedTeacher(backend, concurrency=2, retry_backoff_s=0.01)  # default: 6 retries for every fault
        got = t.complete(_requests(4))
    assert all(r.ok for r in got), [r.error for r in got]
    assert t.summary.unresolved == 0 and t.summary.failures == 4 * max_faults
    assert s.total_paid == 4


# --------------------------------------------------------------------------- teach exit codes
def _teach(url, out: Path, *extra):
    cmd = [sys.executable, "-m", "nesylib", "teach", "--backend", "openai", "--model", "fake-model",
           "--base-url", url, "--api-key-env", KEY_ENV, "--datasets", "gsm8k", "--limit", "4", "--samples", "2",
           "--max-rounds", "1", "--concurrency", "2", "--timeout", "5", "--store", str(out / "store.jsonl"),
           "--out", str(out / "r.jsonl"), *extra]
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


TEACH_CASES = [
    # name, server (None = nothing listens), extra flags, exit code, words in stderr
    ("healthy", {}, [], 0, []),
    ("unreachable", None, [], 2, ["unreachable", "{url}", "refused"]),
    ("replies never parse", {"fault_rate": 1.0, "faults": ("malformed",), "max_faults": 10**6},
     ["--max-retries", "1", "--policy-retries", "1"], 1,
     ["8 of 8 teacher requests are unresolved", "4 of 4 items failed", "rerun"]),
    ("some replies never parse", {"fault_rate": 0.5, "faults": ("malformed",), "max_faults": 10**6, "seed": 1},
     ["--max-retries", "0"], 1, ["teacher requests are unresolved", "rerun"]),
    ("empty replies", {"fault_rate": 1.0, "faults": ("empty",), "max_faults": 10**6},
     ["--max-retries", "0"], 1, ["8 of 8 teacher requests are unresolved", "4 of 4 items failed"]),
    ("three malformed then good", {"fault_rate": 1.0, "faults": ("malformed",), "max_faults": 3},
     ["--retry-backoff", "0.01"], 0, []),
    ("wrong key", {"api_key": "the-right-key"}, [], 2, ["HTTP 401", f"${KEY_ENV}", "not set", "--api-key-env"]),
]


@pytest.mark.parametrize("name, server, extra, code, words", TEACH_CASES, ids=[c[0] for c in TEACH_CASES])
def test_teach_exit_codes(name, server, extra, code, words, tmp_path, dead_url, data_dir):
    if server is None:
        url, res = dead_url, _teach(dead_url, tmp_path, *extra)
        srv = None
    else:
        with FakeOpenAIServer(**server) as srv:
            url, res = srv.base_url, _teach(srv.base_url, tmp_path, *extra)
    assert res.returncode == code, (res.stdout, res.stderr)
    for w in words:
        assert w.format(url=url) in res.stderr, (w, res.stderr)
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    if name == "unreachable":
        assert summary["calls"] <= 3 + 1  # breaker (3) + the other call in flight; 8 requests x 7 without it
    if code == 0:
        assert summary["unresolved"] == 0 and srv.total_paid == 8
    if code == 1:  # what was accepted is saved, and a rerun against a healthy server asks only the failed calls
        assert (tmp_path / "r.jsonl").is_file() and 0 < summary["unresolved"] <= 8
        with FakeOpenAIServer() as healthy:
            again = _teach(healthy.base_url, tmp_path)
        assert again.returncode == 0, again.stderr
        rerun = json.loads((tmp_path / "r.summary.json").read_text())
        assert rerun["calls"] == rerun["succeeded"] == summary["unresolved"]
        assert rerun["cache_hits"] == 8 - summary["unresolved"]


NB01_CASES = [
    # name, server (None = nothing listens), notebook parameters, words in the error
    ("unreachable", None, {}, ["TeacherUnreachable", "{url}", "refused"]),
    ("replies never parse", {"fault_rate": 1.0, "faults": ("malformed",), "max_faults": 10**6}, {"max_retries": 0},
     ["TeacherIncomplete", "8 of 8 teacher requests are unresolved", "4 of 4 items failed"]),
]


@pytest.mark.parametrize("name, server, params, words", NB01_CASES, ids=[c[0] for c in NB01_CASES])
def test_notebook_01_stops_naming_the_cause(name, server, params, words, tmp_path, dead_url, data_dir):
    import papermill as pm

    def run(url):
        pm.execute_notebook(str(ROOT / "notebooks/01_teacher_distillation.ipynb"), str(tmp_path / "01.ipynb"),
                            parameters=dict(preset="t", run_root=str(tmp_path), bbh_tasks=["navigate"],
                                            train_per_task=4, gsm8k_train=0, teacher_backend="openai",
                                            teacher_model="fake", teacher_base_url=url, api_key_env=KEY_ENV,
                                            max_rounds=1, **params),
                            progress_bar=False, cwd=str(ROOT / "notebooks"))

    with pytest.raises(pm.PapermillExecutionError) as err:
        if server is None:
            url = dead_url
            run(url)
        else:
            with FakeOpenAIServer(**server) as srv:
                url = srv.base_url
                run(url)
    for w in words:
        assert w.format(url=url) in str(err.value), (w, str(err.value))
    assert not (tmp_path / "01_teacher_distillation" / "results.json").exists()


def test_notebook_04_stops_when_the_knowledge_writer_never_gives_usable_knowledge(tmp_path, monkeypatch, data_dir,
                                                                                tiny_model_dir):
    """A writer whose replies never have the two sections: 04 stops before training, naming the
    writer, the counts, its first reply and what to change, instead of reporting a "SKIntern"
    student that internalised no knowledge (or crashing in a display cell)."""
    import papermill as pm

    monkeypatch.setenv(KEY_ENV, "sk-test-" + "w5" * 16)
    run = notebook_runner(tmp_path, tiny_model_dir, train_per_task=4, gsm8k_train=0)
    run("01_teacher_distillation.ipynb")
    items = json.loads((tmp_path / "01_teacher_distillation" / "results.json").read_text())["accepted"]
    assert items > 0
    with FakeOpenAIServer(reply_fn=lambda body: "I would rather not say.") as srv:
        with pytest.raises(pm.PapermillExecutionError) as err:
            run("04_skintern_curriculum.ipynb", knowledge_backend="openai", knowledge_model="fake-writer",
                knowledge_base_url=srv.base_url, api_key_env=KEY_ENV)
    msg = str(err.value)
    for words in ("NotEnoughKnowledge", "openai:fake-writer", f"0 of {items} items", f"{items} failures",
                  "I would rather not say.", "min_knowledge_share=0.5", "knowledge_backend", "knowledge_model"):
        assert words in msg, (words, msg)
    assert "StopIteration" not in msg
    assert not (tmp_path / "04_skintern_curriculum" / "results.json").exists()
    # the failures (with the reply) are on disk for inspection
    failures = (tmp_path / "04_skintern_curriculum" / "knowledge_failures.jsonl").read_text().splitlines()
    assert len(failures) == items and all(json.loads(f)["reply"] == "I would rather not say." for f in failures)


# --------------------------------------------------------------------------- run-root lock
_HOLDER = """
import sys
from nesylib.pipeline import runner, runs
with runner.lock_run_root(sys.argv[1], sys.argv[2:] or None):
    print("held", flush=True)
    sys.stdin.readline()
"""


class _Holder:
    """Another process that holds the run root's lock (for a full run, or ``--only`` some notebooks)."""

    def __init__(self, root, only=()):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root), *only], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self):
        assert self.proc.stdout.readline().strip() == "held"
        return self.proc

    def __exit__(self, *exc):
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


LOCK_CASES = [
    # holder's --only, second run's --only, refused?, the lock file the message names
    ((), (), True, ".nesylib-run.lock"),
    ((), ("03_x",), True, ".nesylib-run.lock"),
    (("03_x",), ("03_x",), True, ".03_x.lock"),
    (("03_x",), (), True, ".nesylib-run.lock"),
    (("03_x",), ("04_y",), False, None),  # one notebook per GPU on one run root (docs/paper-scale.md)
]


@pytest.mark.parametrize("held, second, refused, lock_name", LOCK_CASES)
def test_run_root_lock(held, second, refused, lock_name, tmp_path):
    from nesylib.pipeline import runner

    root = tmp_path / "root"
    with _Holder(root, held) as holder:
        if refused:
            with pytest.raises(runner.RunRootLocked) as err:
                with runner.lock_run_root(root, list(second)):
                    pass
            for w in ("in use", str(root / lock_name), f"pid {holder.pid}"):
                assert w in str(err.value), (w, str(err.value))
        else:
            with runner.lock_run_root(root, list(second)):
                pass
    with runner.lock_run_root(root):  # released when the holder exits
        with pytest.raises(runner.RunRootLocked, match=f"pid {os.getpid()}"):  # also within one process
            with runner.lock_run_root(root):
                pass


_SLOW_NB = """from pathlib import Path
import time
from nesylib.pipeline import runner, runs
ctx = runs.start("00_slow", dict(preset=preset, run_root=run_root, seed=seed))
# signals beside the run folder: the notebook's own folder is a staging folder until it succeeds
(ctx.dir.parent / "00_slow.started").write_text("x")
t0 = time.time()
while not (ctx.dir.parent / "00_slow.release").exists() and time.time() - t0 < 30:
    time.sleep(0.1)
ctx.save_results({"seed": seed})"""

_RUNNER = """
import sys
from pathlib import Path
from nesylib.pipeline import runner, runs
runner.run_preset(sys.argv[1], run_root=sys.argv[2], notebooks_dir=Path(sys.argv[3]), kernel="python3")
"""


def test_two_runs_of_one_notebook_on_one_run_root_do_not_run_together(tmp_path):
    """The collision of issue 17 (two runs of one notebook on one run root), end to end."""
    from nesylib.pipeline import runner, runs

    nbs = tmp_path / "nbs"
    write_notebook(nbs / "00_slow.ipynb", RUN_PARAMS, _SLOW_NB)
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 3}\n")
    root = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", _RUNNER, str(preset), str(root), str(nbs)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / "00_slow.started").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        with pytest.raises(Exception) as err:  # RunRootLocked, before any notebook starts
            runner.run_preset(str(preset), run_root=root, notebooks_dir=nbs, kernel="python3", log=lambda *_: None)
        assert type(err.value).__name__ == "RunRootLocked"
        for w in ("in use", str(root / ".nesylib-run.lock"), f"pid {first.pid}"):
            assert w in str(err.value), (w, str(err.value))
    finally:
        (root / "00_slow.release").write_text("x")
        out, errs = first.communicate(timeout=120)
    assert first.returncode == 0, errs
    assert runs.read_json(root / "00_slow" / "results.json") == {"seed": 3}


def test_second_nesylib_run_on_a_locked_run_root_exits_2_naming_the_lock_and_holder(tmp_path):
    root = tmp_path / "root"
    preset = tmp_path / "p.yaml"
    preset.write_text("name: p\ncommon: {seed: 1}\n")
    with _Holder(root) as holder:
        second = subprocess.run([sys.executable, "-m", "nesylib", "run", "--preset", str(preset), "--run-root",
                                 str(root), "--only", "no_such_notebook"], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
    assert second.returncode == 2, second.stderr
    for w in ("in use", str(root / ".nesylib-run.lock"), f"pid {holder.pid}"):
        assert w in second.stderr, (w, second.stderr)
    assert "no such notebook" not in second.stderr  # refused before anything else


# --------------------------------------------------------------------------- unique temporary names
def test_concurrent_writers_of_one_target_never_collide(tmp_path):
    """Two writers of the same file or folder at once: both finish, the target is one whole write."""
    from nesylib.files import atomic_dir, atomic_file

    target, folder = tmp_path / "out.json", tmp_path / "adapter"
    entered, release = threading.Event(), threading.Event()
    errors = []

    def slow_writer():
        try:
            with atomic_file(target) as f, atomic_dir(folder) as d:
                f.write('{"writer": "slow"}')
                (d / "w.txt").write_text("slow")
                entered.set()
                release.wait(10)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=slow_writer)
    th.start()
    assert entered.wait(10)
    with atomic_file(target) as f, atomic_dir(folder) as d:  # a second writer while the first is mid-write
        f.write('{"writer": "fast"}')
        (d / "w.txt").write_text("fast")
    assert json.loads(target.read_text()) == {"writer": "fast"} and (folder / "w.txt").read_text() == "fast"
    release.set()
    th.join(10)
    assert not errors, errors
    assert json.loads(target.read_text()) == {"writer": "slow"} and (folder / "w.txt").read_text() == "slow"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "out.json"]  # no temporaries left


def test_store_export_and_rationale_save_from_two_threads(tmp_path):
    from nesylib.teacher.cot import RationaleSet, TaskStats

    store = CallStore(tmp_path / "s.jsonl")
    store.put({"key": "k", "backend": "b", "model": "m", "ok": True, "text": "t" * 20000})
    rset = RationaleSet([{"uid": f"u{i}", "rationale": "r" * 2000} for i in range(50)], {"t": TaskStats(items=1)},
                        "teacher", "v")
    errors = []

    def work():
        try:
            for _ in range(40):
                store.export(tmp_path / "share.jsonl")
                rset.save(tmp_path / "r.jsonl")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 50
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- file modes
def _writers(tmp_path):
    from nesylib import files
    from nesylib.knowledge.kb import KnowledgeBase
    from nesylib.teacher.cot import RationaleSet

    store = CallStore(tmp_path / "store.jsonl")
    return [
        ("files.write_json", lambda p: files.write_json(p, {"a": 1})),
        ("files.write_jsonl", lambda p: files.write_jsonl(p, [{"a": 1}])),
        ("files.write_jsonl fsync", lambda p: files.write_jsonl(p, [{"a": 1}], fsync=True)),
        ("files.write_text", lambda p: files.write_text(p, "x\n")),
        ("KnowledgeBase.save", lambda p: KnowledgeBase([]).save(p)),
        ("RationaleSet.save", lambda p: RationaleSet([], {}, "t", "v").save(p)),
        ("CallStore.export", lambda p: store.export(p)),
        ("CallStore.export gz", lambda p: store.export(p.with_suffix(".jsonl.gz"))),
    ]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_a_plain_open_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for i, (name, write) in enumerate(_writers(tmp_path)):
            path = tmp_path / f"f{i}.jsonl"
            write(path)
            written = path if path.exists() else path.with_suffix(".jsonl.gz")
            assert oct(written.stat().st_mode & 0o777) == oct(mode), name
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_folders_get_the_mode_a_plain_mkdir_gives(tmp_path, umask):
    from nesylib.files import atomic_dir

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "folder") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "folder").stat().st_mode & 0o777) == oct(0o777 & ~umask)


# --------------------------------------------------------------------------- half-written checkpoints
def _fake_checkpoint(out: Path, step: int, drop: str | None = None, torn: bool = False) -> Path:
    c = out / f"checkpoint-{step}"
    c.mkdir(parents=True)
    (c / "adapter_model.safetensors").write_bytes(b"w")
    (c / "trainer_state.json").write_text('{"global_step": %d}' % step if not torn else '{"global_st')
    if drop:
        (c / drop).unlink()
    return c


CKPT_CASES = [
    # newest checkpoint's defect, the checkpoint resume must pick
    ("complete", None, False, "checkpoint-4"),
    ("no trainer state", "trainer_state.json", False, "checkpoint-2"),
    ("no adapter weights", "adapter_model.safetensors", False, "checkpoint-2"),
    ("torn trainer state", None, True, "checkpoint-2"),
]


@pytest.mark.parametrize("name, drop, torn, expected", CKPT_CASES, ids=[c[0] for c in CKPT_CASES])
def test_resume_picks_the_newest_complete_checkpoint(name, drop, torn, expected, tmp_path, caplog):
    from nesylib.training.checkpoints import prepare_out_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": "fp"}))
    _fake_checkpoint(out, 2)
    _fake_checkpoint(out, 4, drop, torn)
    with caplog.at_level(logging.WARNING, logger="nesylib.training.engine"):
        cached, last = prepare_out_dir(out, "fp", True, {})
    assert cached is None and last is not None and last.name == expected
    assert expected in caplog.text
    if expected != "checkpoint-4":
        assert "incomplete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
        assert not (out / "checkpoint-4").exists()


def test_only_incomplete_checkpoints_start_afresh(tmp_path):
    from nesylib.training.checkpoints import prepare_out_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": "fp"}))
    _fake_checkpoint(out, 2, "trainer_state.json")
    assert prepare_out_dir(out, "fp", True, {}) == (None, None)
    assert not list(out.glob("checkpoint-*"))


def test_training_resumes_past_a_half_written_checkpoint(tiny_model_dir, tmp_path):
    import shutil

    from transformers import TrainerCallback

    from nesylib.methods.prompts import Example
    from nesylib.training.engine import TrainConfig, train_lora

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated kill")

    cfg = TrainConfig(lora_r=4, lora_alpha=8, max_steps=4, per_device_batch=2, grad_accum=1, warmup_ratio=0.0,
                      lr=5e-3, cutoff_len=64, logging_steps=1, save_steps=2)
    ex = [Example(f"Q{i}: {i}+{i}? ", f"Therefore, the answer is {2 * i}.", "main", f"u{i}") for i in range(4)]
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model_dir), ex, cfg, out, callbacks=[Kill()])
    # a kill in the middle of saving step 4 leaves its folder without the trainer state
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    res = train_lora(str(tiny_model_dir), ex, cfg, out)
    assert res.metrics["resumed_from_step"] == 2 and res.adapter_dir.is_dir()
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".*tmp"))
