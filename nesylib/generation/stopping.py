"""The stop rule of evaluation decoding, shared by every engine: stop strings, the EOS ids, the per-prompt
token caps and early stopping of degenerate repetition (``RepetitionRule``), applied token by token
(``StopRule``) or replayed over a finished completion (``apply_stop_rules``); ``GenOutput`` is what it yields.

Stop strings: the authors' ``</s>``, ``---`` and ```` ```output ```` (method.md §6.1), plus
``"\\n\\nQuestion:"`` as a project addition. Every student prompt introduces the question with
``"\\n\\nQuestion:"``, so a student that writes it is inventing the next exercise. That text can
never be part of the answer. For non-math tasks the extractor cuts there anyway, but for math it
would change "the last number of the whole output" (method.md §9) and it costs decoding time.
Pass ``stop_strings=AUTHORS_STOP_STRINGS`` for the authors' set alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from nesylib.errors import ConfigError

AUTHORS_STOP_STRINGS = ("</s>", "---", "```output")
DEFAULT_STOP_STRINGS = AUTHORS_STOP_STRINGS + ("\n\nQuestion:",)
DEFAULT_MAX_NEW_TOKENS = 1024  # D20
STOP_REASONS = ("eos", "stop_string", "repetition", "length")


@dataclass
class GenOutput:
    """One completion. ``text`` ends before the first stop string (or the EOS token)."""
    text: str
    prompt_tokens: int
    generated_tokens: int              # tokens decoded, up to and including the one that stopped it
    stopped_by: str                    # one of STOP_REASONS
    token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class RepetitionRule:
    """Stop a sequence whose generated tokens end in ``repeats`` back-to-back copies of a span of
    ``period <= max_period`` tokens, where ``repeats = max(min_repeats, ceil(min_span / period))``.

    ``min_span`` keeps short periods from firing on legitimate text: SmolLM2 writes numbers digit
    by digit, so "1000000" holds six identical tokens in a row, and "not not not" is valid in
    boolean_expressions. A period-1 loop must cover 24 tokens and a period-20 loop needs 80 tokens
    (4 copies), which normal rationales never contain.
    """
    max_period: int = 20
    min_repeats: int = 4
    min_span: int = 24

    def __post_init__(self):
        if self.max_period < 1 or self.min_repeats < 2 or self.min_span < 1:
            raise ConfigError(f"RepetitionRule needs max_period >= 1, min_repeats >= 2, min_span >= 1; got {self}")

    def fires(self, ids: Sequence[int]) -> bool:
        """True if ``ids`` (generated tokens only) end in a degenerate loop."""
        n = len(ids)
        for p in range(1, self.max_period + 1):
            span = p * max(self.min_repeats, math.ceil(self.min_span / p))
            if span > n or ids[n - 1] != ids[n - 1 - p]:  # cheap test first: this runs every step
                continue
            tail = ids[n - span:]
            if tail[p:] == tail[:-p]:  # periodic with period p over the whole span
                return True
        return False


class StopRule:
    """The stop rule shared by the batched loop and ``apply_stop_rules`` (post hoc), so the two
    agree by construction. Order of checks after each token: EOS, stop string, repetition, length."""

    def __init__(self, tokenizer, eos_ids, stop_strings=DEFAULT_STOP_STRINGS, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                 repetition: RepetitionRule | None = RepetitionRule()):
        if isinstance(stop_strings, str):
            raise ConfigError("stop_strings must be a sequence of strings, not one string")
        if any(not s for s in stop_strings):
            raise ConfigError(f"stop_strings may not contain an empty string: {list(stop_strings)!r}")
        if int(max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.stop_strings = tuple(stop_strings)
        self.max_new_tokens = int(max_new_tokens)
        self.repetition = repetition
        self._longest = max((len(s) for s in self.stop_strings), default=0)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def new_state(self, max_new_tokens: int | None = None) -> "_SeqState":
        cap = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if cap < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {cap}")
        return _SeqState(cap=cap)

    def push(self, st: "_SeqState", tok: int) -> str | None:
        """Append one generated token; return the stop reason if the sequence is now finished."""
        st.ids.append(tok)
        if tok in self.eos_ids:
            st.text = self.decode(st.ids[:-1])
            return self._finish(st, "eos")
        if self.stop_strings:
            text = self.decode(st.ids)
            # the stop string must end in the new token, so only the tail needs scanning; a few
            # extra characters cover a multi-byte character completed by this token
            start = max(0, st.scanned - self._longest - 4)
            hits = [i for i in (text.find(s, start) for s in self.stop_strings) if i >= 0]
            st.scanned = len(text)
            if hits:
                st.text = text[:min(hits)]
                return self._finish(st, "stop_string")
        if self.repetition is not None and self.repetition.fires(st.ids):
            return self._finish(st, "repetition")
        if len(st.ids) >= st.cap:
            return self._finish(st, "length")
        return None

    def _finish(self, st: "_SeqState", reason: str) -> str:
        st.reason = reason
        if st.text is None:
            st.text = self.decode(st.ids)
        return reason

    def output(self, st: "_SeqState", prompt_tokens: int) -> GenOutput:
        if st.reason is None:  # ran out of tokens without any rule firing (post hoc on a short list)
            self._finish(st, "length")
        return GenOutput(st.text, prompt_tokens, len(st.ids), st.reason, list(st.ids))


@dataclass
class _SeqState:
    ids: list = field(default_factory=list)
    text: str | None = None
    reason: str | None = None
    scanned: int = 0
    cap: int = DEFAULT_MAX_NEW_TOKENS


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids of the generation config (int or list) plus the tokenizer's EOS."""
    ids = set()
    gc = getattr(model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None)
    for x in (e if isinstance(e, (list, tuple)) else [e]):
        if x is not None:
            ids.add(int(x))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def apply_stop_rules(token_ids, tokenizer, *, eos_ids, prompt_tokens=0, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
                     stop_strings=DEFAULT_STOP_STRINGS,
                     repetition: RepetitionRule | None = RepetitionRule()) -> GenOutput:
    """Replay the stop rule over a finished completion (e.g. from ``model.generate``): the result is
    what the batched loop would have returned for the same tokens."""
    rule = StopRule(tokenizer, eos_ids, stop_strings, max_new_tokens, repetition)
    st = rule.new_state()
    for t in token_ids:
        if rule.push(st, int(t)) is not None:
            break
    return rule.output(st, prompt_tokens)


def per_prompt_caps(max_new_tokens, n: int) -> list[int]:
    """``max_new_tokens`` as one int per prompt (it may be one int for all, or a sequence)."""
    if hasattr(max_new_tokens, "__index__"):  # int, numpy int
        caps = [int(max_new_tokens)] * n
    else:
        caps = [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ConfigError(f"max_new_tokens has {len(caps)} entries for {n} prompts")
    bad = [c for c in caps if c < 1]
    if bad:
        raise ConfigError(f"max_new_tokens must be >= 1, got {bad[0]}")
    return caps
