"""Replay teachers on the real mirrored data: D2 (Codex BBH CoTs) and D3 (GSM8K solutions)."""
import json
import re

import pytest

from nesylib.data.benchmarks import load_bbh, load_codex_rationales, load_gsm8k
from nesylib.errors import ConfigError
from nesylib.methods.prompts import ANSWER_MARKER
from nesylib.teacher import TeacherRequest, replay_rationales
from nesylib.teacher.cli import main as teach_main
from nesylib.teacher.replay import ReplayTeacher, codex_rationale, gsm8k_rationale


def test_codex_rewrite_cuts_after_the_first_answer_sentence():
    pred = "Step one.\nStep two. So the answer is (B).\n\nQ: next question\nA: So the answer is (C)."
    assert codex_rationale(pred) == "Step one.\nStep two. Therefore, the answer is (B)."
    assert codex_rationale("x = 3.5, so y = 7. So the answer is 3.5.") == \
        "x = 3.5, so y = 7. Therefore, the answer is 3.5."
    assert codex_rationale("close the brackets. So the answer is ] ]") == \
        "close the brackets. Therefore, the answer is ] ]."
    assert codex_rationale("no conclusion here") is None


def test_codex_rewrite_on_every_recorded_prediction(data_dir):
    task = "dyck_languages"  # free-form answers, some without a closing period
    preds = load_codex_rationales(task)
    out = [codex_rationale(p) for p in preds]
    assert sum(o is None for o in out) == sum("So the answer is" not in p for p in preds) > 0
    for p, o in zip(preds, out):
        if o is not None:
            assert o.count(ANSWER_MARKER) == 1 and "So the answer is" not in o and o.endswith(".")
            assert p.startswith(o.split(ANSWER_MARKER)[0])


def test_gsm8k_rewrite(data_dir):
    records = load_gsm8k("train")
    first = gsm8k_rationale(records[0]["meta"]["solution"])
    assert first == ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April "
                     "and May.\nTherefore, the answer is 72.")
    for r in records[:500]:
        text = gsm8k_rationale(r["meta"]["solution"])
        assert "<<" not in text and "####" not in text
        assert text.endswith(f"{ANSWER_MARKER} {r['answer']}.") and text.count(ANSWER_MARKER) == 1
    with_commas = next(r for r in records if re.search(r"#### \d{1,3},\d", r["meta"]["solution"]))
    assert "," not in gsm8k_rationale(with_commas["meta"]["solution"]).rsplit(ANSWER_MARKER, 1)[1]


def test_replay_bbh_train_acceptance(data_dir, tmp_path):
    records = load_bbh("train")
    res = replay_rationales(records, "codex")
    tot = res.totals()
    # D1/D2 plausibility: ~74% of 5,209 train items are right (a third-party count is 3,805).
    assert tot.items == 5209 and 3800 <= tot.accepted <= 3950
    assert tot.no_marker == 188 and tot.failed == 0 and tot.accepted + tot.wrong + tot.no_marker == 5209
    assert len(res.stats) == 27 and res.stats["navigate"].accepted > res.stats["word_sorting"].accepted
    rec = res.records[0]
    assert rec["provenance"] == {"teacher": "replay:code-davinci-002", "prompt_version": "replay-codex-v1",
                                 "sample_index": 0, "temperature": 0.0, "round": 0}
    assert all(r["rationale"].count(ANSWER_MARKER) == 1 and r["split"] == "train" for r in res.records)
    assert set(res.rejected.values()) == {"wrong", "no_marker"}
    res.save(tmp_path / "bbh.jsonl")
    stats = json.loads((tmp_path / "bbh.stats.json").read_text())
    assert stats["tasks"][-1]["accepted"] == tot.accepted and len(stats["rejected"]) == 5209 - tot.accepted


def test_replay_gsm8k_keeps_every_item(data_dir):
    res = replay_rationales(load_gsm8k("train"), "gsm8k")
    assert res.totals().accepted == 7473 and res.teacher == "replay:gsm8k-reference"


def test_replay_refuses_what_it_has_no_recording_for(data_dir):
    gsm = load_gsm8k("test")[:1]
    with pytest.raises(ConfigError, match="bbh"):
        replay_rationales(gsm, "codex")
    with pytest.raises(ConfigError, match="kind='cot'"):
        ReplayTeacher("auto").complete([TeacherRequest(prompt="x", kind="knowledge", record=gsm[0])])
    with pytest.raises(ConfigError, match="replay source"):
        ReplayTeacher("gpt")


def test_cli_replay_writes_dataset_and_stats(data_dir, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert teach_main(["teach", "--backend", "replay", "--datasets", "bbh,gsm8k", "--limit", "2", "--out",
                       str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    stats = json.loads((tmp_path / "r.stats.json").read_text())
    assert stats["tasks"][-1]["items"] == 27 * 2 + 2 and len(rows) == stats["tasks"][-1]["accepted"]
    assert {r["dataset"] for r in rows} == {"bbh", "gsm8k"}
    assert "wrote" in capsys.readouterr().out
    assert teach_main(["teach", "--datasets", "agieval", "--out", str(out)]) == 2
