import shutil

import pytest

from nesylib.data import sources
from nesylib.errors import DataError


def test_registry_covers_every_mirrored_file(data_dir):
    reg = sources.registry()
    mirrored = {line.split(maxsplit=1)[1] for line in (data_dir / "SHA256SUMS").read_text().splitlines() if line}
    assert set(reg) == mirrored
    pin = reg["gsm8k/train.jsonl"]
    assert pin.url.endswith("openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/"
                            "grade_school_math/data/train.jsonl")
    assert reg["bbh/bbh/navigate.json"].upstream_path == "bbh/navigate.json"
    assert reg["rationales/bbh-code-davinci-002-cot/LICENSE"].upstream_path == "LICENSE"


def test_fetch_verifies_mirror(data_dir):
    p = sources.fetch("arc/ARC-Easy-Test.json", data_dir)
    assert p == data_dir / "arc/ARC-Easy-Test.json"


def test_checksum_mismatch_names_the_file(tmp_path, data_dir):
    rel = "gsm-plus/gsmplus_testmini.jsonl"
    (tmp_path / "gsm-plus").mkdir()
    bad = tmp_path / rel
    shutil.copy(data_dir / rel, bad)
    with open(bad, "ab") as f:
        f.write(b"\n")
    with pytest.raises(DataError, match=r"checksum mismatch for .*gsmplus_testmini\.jsonl"):
        sources.fetch(rel, tmp_path)


def test_missing_file_without_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("NESYLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"missing data file gsm8k/test\.jsonl: looked in .*data directory"):
        sources.fetch("gsm8k/test.jsonl", tmp_path / "empty", download=False)


def test_unknown_file_is_rejected():
    with pytest.raises(DataError, match="not a pinned data file"):
        sources.fetch("gsm8k/secret.jsonl")
