"""Files: the one place that writes, reads and hashes them.

* Atomic writes whose temporary names never collide, with the file modes a plain ``open`` gives.
  A result is first written to a temporary file or folder next to its target (same directory, so
  the final ``os.replace`` is atomic) and renamed into place only once complete. The temporary name
  ``.<target name>.<host>.<pid>.<random>.tmp`` is unique per writer, so two processes writing the
  same target never share, truncate or delete each other's half-written data; the last complete
  write wins. Files are created with ``O_EXCL`` and mode 0666, folders with 0777: the process umask
  then applies exactly as for an ordinary ``open``/``mkdir`` (0644 and 0755 under the usual umask
  022), unlike ``tempfile.mkstemp``/``mkdtemp``, which create 0600/0700 files nobody else can read.
* JSON and JSON Lines: ``write_json``/``write_jsonl`` (atomic), ``read_json``, and ``read_jsonl``/
  ``iter_jsonl``, whose errors name the file and the line.
* Content hashes: ``sha256_file`` (streamed, full hex), ``file_hash`` and ``stable_hash`` (16 hex digits,
  the keys of the caches).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nesylib.errors import DataError

_HOST = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())[:32] or "host"


def tmp_path(target: str | Path) -> Path:
    """A fresh, unused-by-anyone name for a temporary sibling of ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_stale_tmps(target: str | Path) -> list[Path]:
    """Delete temporaries of ``target`` left by dead writers on this host; returns what was removed.

    Only names made by ``tmp_path`` on this host whose process no longer exists are touched, so a
    live writer (this process or another) never loses its temporary.
    """
    target = Path(target)
    removed = []
    prefix = f".{target.name}.{_HOST}."
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid_part = p.name[len(prefix):].split(".", 1)[0]
        if not pid_part.isdigit() or _alive(int(pid_part)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8", fsync: bool = False,
                opener=None):
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears complete or not at all.

    ``mode`` is "w" (text) or "wb"; ``opener(path, mode)`` may return another file object for the
    temporary path (e.g. ``gzip.open``); it must create the file itself (the name is unused).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        if opener is not None:
            f = opener(tmp, mode.replace("w", "x"))
        else:
            f = open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else encoding)
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path, "w", encoding=encoding, fsync=fsync) as f:
        f.write(text)
    return Path(path)


@contextmanager
def atomic_dir(target: str | Path):
    """``with atomic_dir(d) as tmp: save into tmp``: then ``d`` is replaced by it in one rename.

    The temporary folder is unique to this writer; if the block raises it is deleted and ``d`` is
    left as it was. An existing ``d`` is first renamed aside (also under a unique name), so a
    concurrent writer of the same target cannot make the final rename fail.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmps(target)
    tmp = tmp_path(target)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str | Path, target: str | Path, attempts: int = 5) -> Path:
    """Rename folder ``src`` to ``target``, removing whatever ``target`` was (it may be replaced concurrently)."""
    src, target = Path(src), Path(target)
    for _ in range(attempts):
        try:
            os.replace(src, target)  # atomic; fails when target is a non-empty folder
            return target
        except FileNotFoundError:
            raise
        except OSError:
            if not target.exists():
                raise
        old = tmp_path(target)
        try:
            os.replace(target, old)
        except FileNotFoundError:
            continue  # another writer moved it away first: try again
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    os.replace(src, target)
    return target


# ------------------------------------------------------------------------------------ JSON
def write_json(path: str | Path, obj, indent: int = 2) -> Path:
    """Atomic JSON write: a killed process never leaves a half-written file."""
    path = Path(path)
    with atomic_file(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, default=str)
        f.write("\n")
    return path


def write_jsonl(path: str | Path, rows, fsync: bool = False) -> Path:
    """Atomic JSON Lines write, one object per line."""
    path = Path(path)
    with atomic_file(path, fsync=fsync) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    return path


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number, object) per line; a blank line gives None. A line that is not a JSON object
    raises a DataError naming ``path`` and the line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                yield n, None
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON record ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def read_jsonl(path: Path, keep_blank: bool = False) -> list:
    """Every object of a JSONL file. ``keep_blank``: blank lines become None, so a row's position
    gives its line number."""
    return [row for _, row in iter_jsonl(path) if row is not None or keep_blank]


# ------------------------------------------------------------------------------------ hashes
def sha256_file(path: str | Path) -> str:
    """The full sha256 hex digest of a file, read in 1 MiB blocks (data files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """A file's content key: the first 16 hex digits of its sha256."""
    return sha256_file(path)[:16]


def stable_hash(obj) -> str:
    """A JSON-able object's content key (keys sorted, so dict order does not matter): 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
