"""Atomic writes whose temporary names never collide, with the file modes a plain ``open`` gives.

A result is first written to a temporary file or folder next to its target (same directory, so
the final ``os.replace`` is atomic) and renamed into place only once complete. The temporary name
``.<target name>.<host>.<pid>.<random>.tmp`` is unique per writer, so two processes writing the
same target never share, truncate or delete each other's half-written data; the last complete
write wins.

Files are created with ``O_EXCL`` and mode 0666, folders with 0777: the process umask then applies
exactly as for an ordinary ``open``/``mkdir`` (0644 and 0755 under the usual umask 022), unlike
``tempfile.mkstemp``/``mkdtemp``, which create 0600/0700 files nobody else can read.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

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
