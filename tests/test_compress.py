"""Knowledge compression (D15): ratios, order, line breaks, batching, and what self-information keeps."""
import math
import re

import pytest
import torch

from nesylib.methods import compress as C
from nesylib.methods.compress import (Compressed, SelfInfoCompressor, WordTruncationCompressor, compress_stages,
                                      make_compressor, resolve_compressor_name)
from nesylib.methods.curriculum import Schedule
from nesylib.errors import ConfigError
from nesylib.knowledge.writer import DEMOS
from nesylib.models import load_model

KNOWLEDGE = [
    DEMOS[0].rational,
    "Learning Summary:\n1. Start facing forward at the origin and apply every instruction in order.\n"
    "2. Track the position as two coordinates: steps forward or backward change one, steps left or right "
    "the other.\n3. After the last instruction, check whether both coordinates are zero.\n\n"
    "Supplementary Knowledge:\n1. Turning around reverses the direction of every later forward step.\n"
    "2. Opposite moves of equal length cancel each other out.",
    "Learning Summary:\n1. Evaluate the innermost parentheses first, then multiplication and division from "
    "left to right, then addition and subtraction.\n2. Keep the sign of every intermediate result.\n\n"
    "Supplementary Knowledge:\n1. Subtracting a negative number is the same as adding its absolute value.\n"
    "2. The product of two negative numbers is positive.",
]
SHORT = KNOWLEDGE[1:] + [
    "Learning Summary:\n1. Read each statement about who tells the truth and follow the chain from the first "
    "person to the last.\n\nSupplementary Knowledge:\n1. If a liar says that someone lies, that person tells "
    "the truth.\n2. Two negations cancel each other."]
STOP = set("a an the of is are was were be to in on at for and or that this it as by with from which "
           "who its their every each such then than".split())


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    return SelfInfoCompressor(model, tok, batch_size=2), tok


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    model, tok = load_model(str(smollm2_dir))
    return SelfInfoCompressor(model, tok)


def _is_subsequence(small, big):
    it = iter(big)
    return all(w in it for w in small)


def _check_structure(original: str, out: str):
    assert out.count("\n") == original.count("\n")  # every line break survives
    for o_line, line in zip(out.split("\n"), original.split("\n")):
        assert _is_subsequence(o_line.split(), line.split())  # kept words, original order, same line


def _check_ratio(text, c, ratio):
    n = len(text.split())
    assert isinstance(c, Compressed) and c.requested_ratio == ratio
    assert len(c.text.split()) == math.ceil(ratio * n - 1e-9)
    assert c.achieved_ratio == pytest.approx(ratio, abs=1 / n)


def test_self_info_ratio_order_and_newlines(tiny):
    comp, tok = tiny
    for text, c in zip(KNOWLEDGE, comp.compress(KNOWLEDGE, 0.5, tokenizer=tok)):
        _check_ratio(text, c, 0.5)
        assert 0 < c.achieved_token_ratio < 1
        _check_structure(text, c.text)
    ratios = [5 / 6, 2 / 3, 1 / 3, 1 / 6, 0.05]
    for r, row in zip(ratios, comp.compress_ratios(KNOWLEDGE, ratios)):
        for text, c in zip(KNOWLEDGE, row):
            _check_ratio(text, c, r)
            _check_structure(text, c.text)


@pytest.mark.parametrize("comp_name", ["self-info", "truncate"])
def test_ratio_one_is_identity_and_zero_is_empty(tiny, comp_name):
    comp = tiny[0] if comp_name == "self-info" else WordTruncationCompressor()
    assert [c.text for c in comp.compress(KNOWLEDGE, 1.0)] == KNOWLEDGE
    assert [c.text for c in comp.compress(KNOWLEDGE, 0)] == ["", "", ""]
    assert all(c.achieved_ratio == 0.0 for c in comp.compress(KNOWLEDGE, 0.0))
    for bad in (-0.1, 1.5, "half", None):
        with pytest.raises(ConfigError, match="ratio"):
            comp.compress(KNOWLEDGE, bad)


def test_surprisal_matches_a_direct_forward_pass(tiny):
    comp, tok = tiny
    text = KNOWLEDGE[1]
    ids, _, scores = comp.token_surprisal([text])[0]
    with torch.no_grad():
        logits = comp.model(torch.tensor([[comp.start_id] + ids])).logits[0, :-1]
    expect = -torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert torch.allclose(torch.tensor(scores), expect, atol=1e-4)


def test_batching_and_windows(tiny):
    comp, tok = tiny
    one = SelfInfoCompressor(comp.model, tok, batch_size=1).token_surprisal(KNOWLEDGE)
    many = SelfInfoCompressor(comp.model, tok, batch_size=3).token_surprisal(KNOWLEDGE)
    for (i1, _, s1), (i2, _, s2) in zip(one, many):  # right padding leaves every row's scores alone
        assert i1 == i2 and torch.allclose(torch.tensor(s1), torch.tensor(s2), atol=1e-4)
    windowed = SelfInfoCompressor(comp.model, tok, max_length=17).token_surprisal(KNOWLEDGE[:1])[0][2]
    assert len(windowed) == len(one[0][2])
    assert torch.allclose(torch.tensor(windowed[:16]), torch.tensor(one[0][2][:16]), atol=1e-4)
    assert not torch.allclose(torch.tensor(windowed[16:32]), torch.tensor(one[0][2][16:32]), atol=1e-4)


def test_compress_ratios_scores_once_and_matches_compress(tiny, monkeypatch):
    comp, tok = tiny
    ratios = [Schedule().keep_ratio(t) for t in range(7)]
    calls = []
    orig = comp.word_scores
    monkeypatch.setattr(comp, "word_scores", lambda texts: calls.append(len(texts)) or orig(texts))
    grid = comp.compress_ratios(KNOWLEDGE + ["", "\n\n"], ratios)
    assert calls == [3]  # one scoring pass; empty texts skipped
    for r, row in zip(ratios, grid):
        assert row[3].text == "" and row[4].text == ("" if r == 0 else "\n\n")
    for t in (0, 3, 5, 6):  # the shared scoring pass selects exactly what compress() does
        assert [c.text for c in grid[t][:3]] == [c.text for c in comp.compress(KNOWLEDGE, ratios[t])]


def test_a_second_schedule_reuses_the_scores(tiny, monkeypatch):
    comp, tok = tiny
    first = comp.compress_ratios(KNOWLEDGE, [0.5, 0.25])
    passes = []
    orig = comp.token_surprisal
    monkeypatch.setattr(comp, "token_surprisal", lambda texts: passes.append(len(texts)) or orig(texts))
    again = comp.compress_ratios(KNOWLEDGE + ["a new text here"], [0.5, 0.75])
    assert passes == [1]  # only the text not seen before goes through the LM
    assert [c.text for c in again[0][:len(KNOWLEDGE)]] == [c.text for c in first[0]]


def test_word_truncation_keeps_line_prefixes():
    text = "one two three four five six\nalpha beta gamma\n\nx"
    (c,) = WordTruncationCompressor().compress([text], 0.5)
    assert c.text == "one two three\nalpha beta\n\nx"  # ceil(3), ceil(1.5), 0 words, ceil(0.5)
    assert c.achieved_ratio == pytest.approx(6 / 10)
    for t, c in zip(KNOWLEDGE, WordTruncationCompressor().compress(KNOWLEDGE, 1 / 3)):
        _check_structure(t, c.text)
        lines = [line for line in t.split("\n") if line.split()]
        assert all(o.split() == line.split()[:math.ceil(len(line.split()) / 3 - 1e-9)]
                   for o, line in zip([x for x in c.text.split("\n") if x], lines))


def test_compressor_names(monkeypatch, tiny):
    assert isinstance(make_compressor("truncate"), WordTruncationCompressor)
    model, tok = tiny[0].model, tiny[1]
    assert isinstance(make_compressor("self-info", model=model, tokenizer=tok), SelfInfoCompressor)
    with pytest.raises(ConfigError, match="compressor"):
        make_compressor("gzip")
    real = C.importlib.util.find_spec
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda n: None if n == "llmlingua" else real(n))
    assert resolve_compressor_name("auto") == "self-info"
    assert isinstance(make_compressor("auto", model=model, tokenizer=tok), SelfInfoCompressor)
    with pytest.raises(ConfigError, match="llmlingua"):
        make_compressor("llmlingua2")
    monkeypatch.setattr(C.importlib.util, "find_spec", lambda n: object() if n == "llmlingua" else real(n))
    assert resolve_compressor_name("auto") == "llmlingua2"


def test_compress_stages_report(tiny):
    comp, tok = tiny
    by_uid = {f"bbh/t/{i}": k for i, k in enumerate(KNOWLEDGE)}
    by_uid["bbh/t/empty"] = ""  # an item without knowledge must not pull the mean ratio towards 1
    sched = Schedule()
    stages, report = compress_stages(by_uid, sched, comp, tokenizer=tok)
    assert set(stages) == set(by_uid)
    assert all(v == "" for v in stages["bbh/t/empty"].values())
    for uid, k in list(by_uid.items())[:-1]:
        assert list(stages[uid]) == [f"summarydec{t}" for t in range(7)]
        assert stages[uid]["summarydec0"] == k and stages[uid]["summarydec6"] == ""
        _check_structure(k, stages[uid]["summarydec3"])
    min_words = min(len(k.split()) for k in KNOWLEDGE)
    for t, row in enumerate(report):
        assert row["stage"] == t and row["compressor"] == "self-info"
        assert row["requested_ratio"] == pytest.approx(1 - t / 6, abs=1e-4)
        assert row["achieved_ratio"] == pytest.approx(row["requested_ratio"], abs=1 / min_words)
        assert row["achieved_ratio_pooled"] == pytest.approx(row["requested_ratio"], abs=1 / min_words)
        assert "achieved_token_ratio" in row
    assert [r["mean_words"] for r in report] == sorted((r["mean_words"] for r in report), reverse=True)
    assert report[-1]["mean_words"] == 0 and report[-1]["achieved_token_ratio"] == 0
    with pytest.raises(ConfigError, match="strings"):
        compress_stages({"u": None}, sched, comp)


def test_self_info_prefers_informative_words_over_stop_words(smol):
    """With the real SmolLM2, stop-words carry less self-information and are dropped first."""
    kept = {"stop": [0, 0], "content": [0, 0]}  # [kept, total]
    means = {"stop": [], "content": []}
    for text, words in zip(SHORT, smol.word_scores(SHORT)):
        out = smol._select(text, words, 0.5)
        kept_starts = set()
        # recover which word occurrences were kept: walk the output alongside the input per line
        pos = 0
        for line_out, line_in in zip(out.split("\n"), text.split("\n")):
            it = iter(re.finditer(r"\S+", line_in))
            for w in line_out.split():
                m = next(m for m in it if m.group() == w)
                kept_starts.add(pos + m.start())
            pos += len(line_in) + 1
        for a, b, s in words:
            kind = "stop" if re.sub(r"\W", "", text[a:b]).lower() in STOP else "content"
            kept[kind][1] += 1
            kept[kind][0] += a in kept_starts
            means[kind].append(s)
    stop_rate = kept["stop"][0] / kept["stop"][1]
    content_rate = kept["content"][0] / kept["content"][1]
    print("kept stop/content", kept, "mean self-info", {k: sum(v) / len(v) for k, v in means.items()})
    # measured: about 35% of stop-words kept vs 55% of other words at rho = 0.5
    assert kept["stop"][1] >= 30 and content_rate > stop_rate + 0.12, kept
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(means["stop"]) < 0.75 * mean(means["content"])
