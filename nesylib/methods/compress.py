"""Token-level knowledge compression for SKIntern's stages (method.md §4.3, D15).

Each train item's knowledge k is compressed once per stage to keep-ratio ρ_t and stored as
``summarydec{t}``. Three compressors share one interface, ``compress(texts, ratio)``:

* ``SelfInfoCompressor`` (the default; LLMLingua-1 style): a small causal LM scores every token by
  its self-information -log p(token | preceding text). A word's score is the sum over its tokens;
  the ceil(ρ·w) highest-scoring words are kept in their original order, and every line break is
  kept (as LLMLingua's force_tokens=['\\n']). Keeping whole words reads better than token shreds.
* ``WordTruncationCompressor``: keep the first ceil(ρ·w) words of each line (ablation baseline).
* ``LLMLingua2Compressor``: LLMLingua-2 (rate=ρ, force_tokens=['\\n']) when ``llmlingua`` is
  installed (it is not a project dependency, and its model must be in the local hub cache).

Every result is a ``Compressed(text, requested_ratio, achieved_ratio, achieved_token_ratio)``;
achieved ratios count words (and tokens of a given tokenizer). ρ=1 returns the text unchanged and
ρ=0 returns "".
"""
from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass

from nesylib.errors import ConfigError

COMPRESSORS = ("auto", "self-info", "llmlingua2", "truncate")
LLMLINGUA2_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"


@dataclass(frozen=True)
class Compressed:
    text: str
    requested_ratio: float
    achieved_ratio: float                       # kept words / original words (1.0 for empty input)
    achieved_token_ratio: float | None = None   # the same in tokens, when a tokenizer was given


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"ratio (knowledge keep-ratio) must be a number in [0, 1], got {ratio!r}")
    return float(ratio)


def _n_words(text: str) -> int:
    return len(text.split())


def _result(original: str, text: str, ratio: float, tokenizer=None) -> Compressed:
    w = _n_words(original)
    achieved = _n_words(text) / w if w else 1.0
    tok_ratio = None
    if tokenizer is not None:
        n = len(tokenizer(original, add_special_tokens=False)["input_ids"])
        tok_ratio = len(tokenizer(text, add_special_tokens=False)["input_ids"]) / n if n else 1.0
    return Compressed(text, ratio, achieved, tok_ratio)


def _keep_count(n_words: int, ratio: float) -> int:
    return min(n_words, math.ceil(ratio * n_words - 1e-9))  # 1e-9: (5/6)*6 must give 5, not 6


class Compressor:
    """Interface: ``compress(texts, ratio)``; ``compress_ratios`` may share work across ratios."""

    name = "base"

    def _compress(self, texts: list[str], ratio: float) -> list[str]:
        raise NotImplementedError

    def compress(self, texts: list[str], ratio: float, tokenizer=None) -> list[Compressed]:
        """Compress every text to keep-ratio ``ratio``; ``tokenizer`` adds the token ratio."""
        ratio = _check_ratio(ratio)
        if ratio == 1.0:
            outs = list(texts)
        elif ratio == 0.0:
            outs = [""] * len(texts)
        else:
            outs = self._compress(list(texts), ratio)
        return [_result(t, o, ratio, tokenizer) for t, o in zip(texts, outs)]

    def compress_ratios(self, texts: list[str], ratios: list[float], tokenizer=None) -> list[list[Compressed]]:
        """``compress`` at several ratios: result[i][j] is texts[j] at ratios[i]."""
        return [self.compress(texts, r, tokenizer) for r in ratios]


class WordTruncationCompressor(Compressor):
    """Keep the first ceil(ρ·w) words of each line (w = that line's words); line breaks stay."""

    name = "truncate"

    def _compress(self, texts, ratio):
        out = []
        for text in texts:
            lines = []
            for line in text.split("\n"):
                words = line.split()
                lines.append(" ".join(words[:_keep_count(len(words), ratio)]))
            out.append("\n".join(lines))
        return out


class SelfInfoCompressor(Compressor):
    """Keep the words a causal LM finds most informative (highest summed self-information).

    ``model``/``tokenizer`` are a loaded causal LM (e.g. ``nesylib.models.load_model("smollm2-135m")``).
    Texts are scored in batches of ``batch_size``, sorted by length, right-padded; texts longer than
    ``max_length`` tokens are scored in consecutive windows. Scores depend only on the text, so
    ``compress_ratios`` scores each text once for all stages.
    """

    name = "self-info"

    def __init__(self, model, tokenizer, batch_size: int = 4, max_length: int = 1024):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        vocab = tokenizer.get_vocab()
        # Context for the first token: the document separator the LM saw between texts in
        # pretraining if it has one (SmolLM2's bos is a chat marker), else bos, else eos.
        self.start_id = vocab.get("<|endoftext|>", tokenizer.bos_token_id
                                  if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.start_id
        # text -> word scores: a sweep compresses the same knowledge under several schedules
        # (notebook 06), and one LM pass per text serves them all
        self._word_scores: dict[str, list[tuple[int, int, float]]] = {}

    # -- scoring -------------------------------------------------------------------------------
    def token_surprisal(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]], list[float]]]:
        """Per text: (token ids, char offsets, -log p(token | preceding tokens) in nats)."""
        import torch

        enc = [self.tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
        # Windows of at most max_length-1 text tokens, each preceded by the start token.
        win = self.max_length - 1
        pieces = [(i, s) for i, e in enumerate(enc) for s in range(0, len(e["input_ids"]), win)]
        scores: list[list[float]] = [[0.0] * len(e["input_ids"]) for e in enc]
        pieces.sort(key=lambda p: -min(win, len(enc[p[0]]["input_ids"]) - p[1]))
        device = next(self.model.parameters()).device
        for b in range(0, len(pieces), self.batch_size):
            batch = pieces[b:b + self.batch_size]
            seqs = [[self.start_id] + enc[i]["input_ids"][s:s + win] for i, s in batch]
            width = max(len(q) for q in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, q in enumerate(seqs):  # right padding keeps positions 0.. for every row
                ids[r, :len(q)] = torch.tensor(q)
                mask[r, :len(q)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for r, (i, s) in enumerate(batch):
                    # one row at a time: a full-batch log-softmax over a 49k vocabulary is GBs
                    n = len(seqs[r]) - 1
                    logp = torch.log_softmax(logits[r, :n].float(), dim=-1)
                    tgt = ids[r, 1:n + 1].to(device).unsqueeze(-1)
                    scores[i][s:s + n] = (-logp.gather(-1, tgt).squeeze(-1)).cpu().tolist()
        return [(e["input_ids"], e["offset_mapping"], sc) for e, sc in zip(enc, scores)]

    def word_scores(self, texts: list[str]) -> list[list[tuple[int, int, float]]]:
        """Per text: (start, end, summed self-information) for each whitespace-separated word.

        Scores are remembered per text, so a text is scored by the LM once per compressor."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._word_scores))
        if todo:
            self._word_scores.update(zip(todo, self._score_words(todo)))
        return [self._word_scores[t] for t in texts]

    def _score_words(self, texts: list[str]) -> list[list[tuple[int, int, float]]]:
        out = []
        for text, (_, offsets, sc) in zip(texts, self.token_surprisal(texts)):
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            owner = [-1] * len(text)
            for w, (a, b) in enumerate(spans):
                owner[a:b] = [w] * (b - a)
            totals = [0.0] * len(spans)
            for (a, b), s in zip(offsets, sc):
                # a token belongs to the first word it touches (offsets include leading spaces)
                w = next((owner[c] for c in range(a, b) if owner[c] >= 0), -1)
                if w >= 0:
                    totals[w] += s
            out.append([(a, b, t) for (a, b), t in zip(spans, totals)])
        return out

    # -- selection -----------------------------------------------------------------------------
    @staticmethod
    def _select(text: str, words: list[tuple[int, int, float]], ratio: float) -> str:
        k = _keep_count(len(words), ratio)
        ranked = sorted(range(len(words)), key=lambda i: (-words[i][2], i))  # ties: earlier word
        keep = set(ranked[:k])
        lines, cur = [], []
        pos = 0
        for i, (a, b, _) in enumerate(words):
            nl = text.count("\n", pos, a)  # every line break between words survives
            if nl:
                lines.append(" ".join(cur))
                lines.extend([""] * (nl - 1))
                cur = []
            if i in keep:
                cur.append(text[a:b])
            pos = b
        lines.append(" ".join(cur))
        lines.extend([""] * text.count("\n", pos))
        return "\n".join(lines)

    def _compress(self, texts, ratio):
        return [self._select(t, w, ratio) for t, w in zip(texts, self.word_scores(texts))]

    def compress_ratios(self, texts, ratios, tokenizer=None):
        ratios = [_check_ratio(r) for r in ratios]
        texts = list(texts)
        need = [i for i, t in enumerate(texts) if t.strip()] if any(0 < r < 1 for r in ratios) else []
        scored = dict(zip(need, self.word_scores([texts[i] for i in need])))
        out = []
        for r in ratios:
            row = []
            for i, t in enumerate(texts):
                c = t if r == 1.0 else "" if r == 0.0 else self._select(t, scored.get(i, []), r)
                row.append(_result(t, c, r, tokenizer))
            out.append(row)
        return out


class LLMLingua2Compressor(Compressor):
    """LLMLingua-2 token classification (rate=ρ, force_tokens=['\\n']); needs ``llmlingua`` installed."""

    name = "llmlingua2"

    def __init__(self, model_name: str = LLMLINGUA2_MODEL, device: str = "cpu"):
        if importlib.util.find_spec("llmlingua") is None:
            raise ConfigError("compressor 'llmlingua2' needs the optional package llmlingua, which is not "
                              "installed; use compressor='self-info' (or 'auto', which falls back to it)")
        from llmlingua import PromptCompressor

        self._pc = PromptCompressor(model_name=model_name, use_llmlingua2=True, device_map=device)

    def _compress(self, texts, ratio):
        return [self._pc.compress_prompt(t, rate=ratio, force_tokens=["\n"])["compressed_prompt"] if t.strip()
                else t for t in texts]


def resolve_compressor_name(name: str) -> str:
    """'auto' -> 'llmlingua2' when llmlingua is importable, else 'self-info'; others unchanged."""
    if name not in COMPRESSORS:
        raise ConfigError(f"compressor must be one of {COMPRESSORS}, got {name!r}")
    if name == "auto":
        return "llmlingua2" if importlib.util.find_spec("llmlingua") is not None else "self-info"
    return name


def make_compressor(name: str = "auto", model=None, tokenizer=None, model_name: str = "smollm2-135m",
                    **kwargs) -> Compressor:
    """A compressor by name; 'self-info' loads ``model_name`` unless ``model``/``tokenizer`` are given."""
    name = resolve_compressor_name(name)
    if name == "truncate":
        return WordTruncationCompressor()
    if name == "llmlingua2":
        return LLMLingua2Compressor(**kwargs)
    if model is None or tokenizer is None:
        from nesylib.models import load_model

        model, tokenizer = load_model(model_name)
    return SelfInfoCompressor(model, tokenizer, **kwargs)


def compress_stages(knowledge_by_uid: dict[str, str], schedule, compressor: Compressor,
                    tokenizer=None) -> tuple[dict[str, dict[str, str]], list[dict]]:
    """Compress every item's knowledge for every stage of ``schedule`` (a ``curriculum.Schedule``).

    Returns (stages, report): stages[uid] = {"summarydec0": ..., ..., f"summarydec{T}": ...};
    report has one row per stage with the requested ratio, the achieved word ratio (mean over
    items, and pooled = total kept words / total words), the token ratio when ``tokenizer`` is
    given, and the mean word count.
    """
    uids = list(knowledge_by_uid)
    texts = [knowledge_by_uid[u] for u in uids]
    bad = [u for u, t in zip(uids, texts) if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"knowledge_by_uid values must be strings; not for uid(s) {bad[:5]}")
    ratios = [schedule.keep_ratio(t) for t in schedule.stages]
    results = compressor.compress_ratios(texts, ratios, tokenizer)
    stages = {u: {} for u in uids}
    report = []
    total_words = sum(_n_words(t) for t in texts)
    nonempty = [i for i, t in enumerate(texts) if _n_words(t)]  # empty knowledge has no ratio to report

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    for t, r, row in zip(schedule.stages, ratios, results):
        for u, c in zip(uids, row):
            stages[u][f"summarydec{t}"] = c.text
        kept = sum(_n_words(c.text) for c in row)
        rep = {"stage": t, "compressor": compressor.name, "requested_ratio": round(r, 4),
               "achieved_ratio": mean([row[i].achieved_ratio for i in nonempty]),
               "achieved_ratio_pooled": round(kept / total_words, 4) if total_words else None,
               "mean_words": round(kept / len(row), 1) if row else 0.0}
        if tokenizer is not None:
            rep["achieved_token_ratio"] = mean([row[i].achieved_token_ratio for i in nonempty])
        report.append(rep)
    return stages, report
