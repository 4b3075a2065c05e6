"""Registry of every pinned upstream benchmark file: where it lives upstream and its sha256.

The mirror in a data directory (for example ``../shared/data``) keeps the upstream files byte
for byte under the relative paths below. When a file is missing locally it is downloaded from
its pinned commit and verified against the same checksum, so both routes give identical bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nesylib.errors import DataError
from nesylib.files import sha256_file

# (local prefix, upstream repository, commit, upstream prefix). Longest prefix wins.
_ROUTES: list[tuple[str, str, str, str]] = [
    ("bbh/bbh/", "suzgunmirac/BIG-Bench-Hard", "9ee07bd481feebf959a6b59d61ea57bdcf30964d", "bbh/"),
    ("bbh/cot-prompts/", "suzgunmirac/BIG-Bench-Hard", "9ee07bd481feebf959a6b59d61ea57bdcf30964d", "cot-prompts/"),
    ("bbh/LICENSE", "suzgunmirac/BIG-Bench-Hard", "9ee07bd481feebf959a6b59d61ea57bdcf30964d", "LICENSE"),
    ("rationales/bbh-code-davinci-002-cot/LICENSE", "suzgunmirac/BIG-Bench-Hard",
     "9ee07bd481feebf959a6b59d61ea57bdcf30964d", "LICENSE"),
    ("rationales/bbh-code-davinci-002-cot/", "suzgunmirac/BIG-Bench-Hard",
     "9ee07bd481feebf959a6b59d61ea57bdcf30964d", "code-davinci-002-outputs/code-davinci-002-cot/"),
    ("cascod-prompts/cot-prompts/", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb", "dataset/bbh/cot-prompts/"),
    ("cascod-prompts/prompt_for_vanilla/", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb",
     "prompt_for_vanilla/"),
    ("cascod-prompts/LICENSE", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb", "LICENSE"),
    ("arc/ARC-Challenge-Test.json", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb",
     "dataset/arc-c/arc-c_data/ARC-Challenge-Test.json"),
    ("arc/ARC-Easy-Test.json", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb",
     "dataset/arc-e/arc-e_data/ARC-Easy-Test.json"),
    ("arc/LICENSE.CasCoD", "C-W-D/CasCoD", "3468d154df1620e577ea03137ec50b7afb746feb", "LICENSE"),
    ("gsm8k/LICENSE", "openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "LICENSE"),
    ("gsm8k/", "openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c", "grade_school_math/data/"),
    ("agieval/LICENSE", "ruixiangcui/AGIEval", "5c77d073fda993f1652eaae3cf5d04cc5fd21d40", "LICENSE"),
    ("agieval/few_shot_prompts.csv", "ruixiangcui/AGIEval", "5c77d073fda993f1652eaae3cf5d04cc5fd21d40",
     "data/few_shot_prompts.csv"),
    ("agieval/v1/", "ruixiangcui/AGIEval", "5c77d073fda993f1652eaae3cf5d04cc5fd21d40", "data/v1/"),
    ("gsm-plus/", "qtli/GSM-Plus", "3474129ec12fcd3e8ac08cb037aca1928efca98c", "dataset/"),
]

_SUMS_FILE = Path(__file__).with_name("SHA256SUMS")
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


@dataclass(frozen=True)
class PinnedFile:
    relpath: str  # path inside the data directory
    sha256: str
    repo: str
    commit: str
    upstream_path: str

    @property
    def url(self) -> str:
        return RAW_URL.format(repo=self.repo, commit=self.commit, path=self.upstream_path)


def _route(relpath: str) -> tuple[str, str, str]:
    best = max((r for r in _ROUTES if relpath.startswith(r[0])), key=lambda r: len(r[0]), default=None)
    if best is None:
        raise DataError(f"no upstream route for {relpath!r}; add one to nesylib/data/sources.py")
    prefix, repo, commit, up = best
    return repo, commit, up + relpath[len(prefix):] if prefix.endswith("/") else up


@lru_cache(maxsize=1)
def registry() -> dict[str, PinnedFile]:
    """All pinned files by relative path (read from the packaged SHA256SUMS)."""
    out = {}
    for n, line in enumerate(_SUMS_FILE.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            digest, rel = line.split(maxsplit=1)
        except ValueError:
            raise DataError(f"{_SUMS_FILE}:{n}: expected '<sha256>  <path>', got {line!r}") from None
        repo, commit, up = _route(rel)
        out[rel] = PinnedFile(rel, digest, repo, commit, up)
    return out


def default_data_dir() -> Path | None:
    """The data directory from $NESYLIB_DATA_DIR, or None (then files come from the download cache)."""
    env = os.environ.get("NESYLIB_DATA_DIR")
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    return Path(os.environ.get("NESYLIB_CACHE", Path.home() / ".cache" / "nesylib")).expanduser()


_verified: dict[Path, str] = {}


def _verify(path: Path, pin: PinnedFile) -> Path:
    if _verified.get(path) != pin.sha256:
        got = sha256_file(path)
        if got != pin.sha256:
            raise DataError(
                f"checksum mismatch for {path}: expected sha256 {pin.sha256}, got {got}. "
                f"The file differs from {pin.repo}@{pin.commit[:7]}:{pin.upstream_path}; "
                "delete it to re-download, or fix the data directory."
            )
        _verified[path] = pin.sha256
    return path


def fetch(relpath: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of a verified copy of a pinned file.

    Looks in ``data_dir`` (or $NESYLIB_DATA_DIR) first; otherwise downloads the file from its
    pinned upstream commit into the cache with pooch, which checks the sha256.
    """
    pin = registry().get(relpath)
    if pin is None:
        raise DataError(f"{relpath!r} is not a pinned data file (see nesylib/data/SHA256SUMS)")
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if data_dir is not None and (data_dir / relpath).is_file():
        return _verify(data_dir / relpath, pin)
    cached = cache_dir() / "data" / relpath
    if cached.is_file():
        return _verify(cached, pin)
    where = f"{data_dir / relpath} (data directory)" if data_dir else "no data directory set ($NESYLIB_DATA_DIR)"
    if not download:
        raise DataError(f"missing data file {relpath}: looked in {where} and {cached}. "
                        "Set NESYLIB_DATA_DIR to a mirror or allow downloads.")
    import pooch

    try:
        got = pooch.retrieve(pin.url, known_hash=f"sha256:{pin.sha256}", fname=Path(relpath).name,
                             path=cached.parent, progressbar=False)
    except ValueError as e:  # pooch raises ValueError on a hash mismatch
        raise DataError(f"download of {pin.url} failed its checksum: {e}") from e
    except Exception as e:
        raise DataError(f"missing data file {relpath}: looked in {where} and {cached}; "
                        f"download from {pin.url} failed ({e}). Set NESYLIB_DATA_DIR to a mirror.") from e
    return _verify(Path(got), pin)
