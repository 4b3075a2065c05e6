"""JSON Lines reading with errors that name the file and line (every reader of the project uses it)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from nesylib.errors import DataError


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
