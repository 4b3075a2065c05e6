"""Persistent teacher call store: append-only JSONL, one record per call attempt.

Why this shape:
* A call is identified by ``call_key`` = sha256 over (backend, model, system, prompt, sampling
  parameters, sample index). A repeated call is served from the store and costs nothing.
* Every record is written with one ``write`` + ``fsync`` under an exclusive ``fcntl`` lock, so a
  killed run loses at most the call in flight, and several processes can share one file.
  A torn last line (a writer killed mid-record) is ignored on load and cut off before the next
  append; a malformed line anywhere else is corruption and names its file and line.
* Failures are stored too, so they are visible and counted, but ``get`` only ever serves a
  success: a failed call is retried the next time it is asked for.
* ``export`` writes the successes as one JSONL file (``.gz`` compresses); ``import_file`` merges
  such a file, so others can reproduce a run with zero API cost.

No credential ever enters a record: records hold the request, the reply and its accounting only.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from nesylib.files import atomic_file
from nesylib.errors import DataError
from nesylib.teacher.base import TeacherRequest

STORE_VERSION = 1
_REQUIRED = ("key", "backend", "model", "ok")


def call_key(backend: str, model: str, request: TeacherRequest) -> str:
    """Stable id of one call: everything that can change the reply, nothing else.

    ``request.extra["seed"]`` is part of the sampling parameters when set (local sampling is
    seeded); ``uid``/``record``/``kind`` are not, so the same prompt asked for two items is one call.
    """
    sampling = dict(request.sampling())
    if request.extra.get("seed") is not None:
        sampling["seed"] = request.extra["seed"]
    payload = {"backend": backend, "model": model, "system": request.system, "prompt": request.prompt,
               "sampling": sampling, "sample_index": request.sample_index}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _open_text(path: Path, mode: str, gz: bool | None = None):
    if str(path).endswith(".gz") if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class CallStore:
    """Teacher call records, in memory and (with ``path``) in an append-only JSONL file.

    ``path=None`` keeps everything in memory (dedupe and accounting without persistence).
    Thread-safe; process-safe through ``fcntl.flock`` on the file itself.
    """

    def __init__(self, path: str | Path | None = None, fsync: bool = True):
        self.path = Path(path).expanduser() if path else None
        self.fsync = fsync
        self._lock = threading.RLock()
        self._ok: dict[str, dict] = {}          # key -> latest successful record
        self._failures: dict[str, int] = {}     # key -> failed attempts seen
        self._n_records = 0
        self._offset = 0                        # bytes of the file already indexed (complete lines)
        self._line_no = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(exist_ok=True)
            with self._flock(fcntl.LOCK_SH):
                self._refresh()

    # ------------------------------------------------------------------------------ locking/io
    def _flock(self, mode: int):
        store = self

        class _Held:
            def __enter__(self):
                self.fd = os.open(store.path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self.fd, mode)
                return self.fd

            def __exit__(self, *exc):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)

        return _Held()

    def _index(self, rec: dict) -> None:
        self._n_records += 1
        if rec.get("ok"):
            self._ok[rec["key"]] = rec
        else:
            self._failures[rec["key"]] = self._failures.get(rec["key"], 0) + 1

    def _refresh(self) -> None:
        """Index lines other writers appended since our last read (caller holds a file lock)."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        if not data:
            return
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when data ends with a newline, else a torn (partial) last line
        for i, raw in enumerate(lines):
            self._line_no += 1
            if raw.strip():
                try:
                    rec = json.loads(raw)
                    if not isinstance(rec, dict) or any(k not in rec for k in _REQUIRED):
                        raise ValueError(f"expected an object with fields {list(_REQUIRED)}")
                except ValueError as e:
                    if i == len(lines) - 1 and not tail:
                        # A corrupt *last* line (torn record padded by the file system): skip it
                        # and stop before it, so the next append truncates it away.
                        self._line_no -= 1
                        return
                    raise DataError(f"{self.path}:{self._line_no}: malformed teacher-store record ({e})") from e
                self._index(rec)
            self._offset += len(raw) + 1

    # ------------------------------------------------------------------------------ public API
    def get(self, key: str) -> dict | None:
        """The latest successful record for ``key``, or None (failures are never served)."""
        with self._lock:
            rec = self._ok.get(key)
            if rec is None and self.path is not None:
                # Another process may have stored it since we loaded: look at the new tail only.
                with self._flock(fcntl.LOCK_SH):
                    self._refresh()
                rec = self._ok.get(key)
            return rec

    def put(self, record: dict) -> dict:
        """Append one record (success or failure) durably; returns the record as stored."""
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise DataError(f"teacher-store record lacks field(s) {missing}")
        rec = {"v": STORE_VERSION, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        self._append([rec])
        return rec

    def _append(self, records: list[dict]) -> None:
        blob = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            if self.path is not None:
                with self._flock(fcntl.LOCK_EX) as fd:
                    self._refresh()
                    size = os.fstat(fd).st_size
                    if size > self._offset:
                        # Bytes past the last complete line can only be a dead writer's torn record
                        # (live writers hold this lock for their whole write): cut them off.
                        os.ftruncate(fd, self._offset)
                    os.lseek(fd, 0, os.SEEK_END)
                    data = blob.encode("utf-8")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if self.fsync:
                        os.fsync(fd)
                    self._offset += len(data)
                    self._line_no += len(records)
            for r in records:
                self._index(r)

    def failures(self, key: str) -> int:
        """How many failed attempts are recorded for ``key``."""
        with self._lock:
            return self._failures.get(key, 0)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        """Number of distinct calls with a stored success."""
        return len(self._ok)

    def records(self) -> Iterator[dict]:
        """Every stored record in file order (failures included); memory stores yield successes."""
        if self.path is None:
            yield from list(self._ok.values())
            return
        yield from _read_records(self.path)

    def stats(self) -> dict:
        """Totals over the whole store (all runs): successes, failures, tokens, cost."""
        out = {"calls_ok": 0, "failed_attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        seen = set()
        for r in self.records():
            if not r.get("ok"):
                out["failed_attempts"] += 1
                continue
            if r["key"] in seen:
                continue
            seen.add(r["key"])
            out["calls_ok"] += 1
            out["prompt_tokens"] += int(r.get("prompt_tokens") or 0)
            out["completion_tokens"] += int(r.get("completion_tokens") or 0)
            out["cost_usd"] += float(r.get("cost_usd") or 0.0)
        return out

    def export(self, dest: str | Path, include_failures: bool = False) -> int:
        """Write the store as one JSONL file (gzip if ``dest`` ends in .gz); returns records written.

        By default only the latest success per call is kept: that is all a replay needs.
        The write is atomic (temp file, then rename).
        """
        dest = Path(dest).expanduser()
        with self._lock:
            if self.path is not None:
                with self._flock(fcntl.LOCK_SH):
                    self._refresh()
            rows = list(self.records()) if include_failures else list(self._ok.values())
        gz = str(dest).endswith(".gz")
        with atomic_file(dest, opener=lambda tmp, mode: _open_text(tmp, mode, gz=gz)) as f:  # unique temp name
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
        return len(rows)

    def import_file(self, src: str | Path) -> int:
        """Merge an exported file: successes for calls not stored yet are appended; returns their count."""
        src = Path(src).expanduser()
        if not src.is_file():
            raise DataError(f"teacher-store export {src} does not exist")
        new = []
        seen = set()
        with self._lock:
            for rec in _read_records(src):
                if not rec.get("ok") or not isinstance(rec.get("text"), str):
                    continue  # only successes with a text are worth sharing
                if rec["key"] not in seen and self.get(rec["key"]) is None:
                    seen.add(rec["key"])
                    new.append(rec)
            if new:
                self._append(new)
        return len(new)


def _read_records(path: Path) -> Iterator[dict]:
    """Records of a store or export file; a torn last line is skipped, other bad lines raise."""
    with _open_text(path, "r") as f:
        lines = f.read().split("\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or any(k not in rec for k in _REQUIRED):
                raise ValueError(f"expected an object with fields {list(_REQUIRED)}")
        except ValueError as e:
            if n - 1 == last:
                return  # torn last record
            raise DataError(f"{path}:{n}: malformed teacher-store record ({e})") from e
        yield rec
