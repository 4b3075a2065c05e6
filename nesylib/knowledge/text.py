"""The two-section knowledge text: its one owner (render, parse, check, canonicalise).

NesyCD's tutor analyses (the KB), SKIntern's knowledge writer, the offline teacher derived from
rationales and the synthetic teacher all write or read the same format::

    Learning Summary:
    1. ...

    Supplementary Knowledge:
    1. ...

``render`` writes it; ``parse`` reads a (possibly LLM-written) reply leniently; ``problem`` is the
rule for a usable text (and says why one is not); ``canonical`` rewrites a usable reply with the
canonical headers. Headers are recognised at the start of a line in any case, with markdown around
them (``**Learning Summary:**``, ``## Learning Summary``, ``- Learning Summary:``), with or without
the colon, and in the variant ``Summary of Learning:``; a sentence that merely starts with the words
("Supplementary knowledge of dates helps.") is not a header. The summary comes first: the first
supplementary-knowledge header *after* the first learning-summary header opens the second section.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from nesylib.errors import DataError

LS_HEADER = "Learning Summary:"
SK_HEADER = "Supplementary Knowledge:"

_SPACE = r"[^\S\r\n]+"  # between a header's words: any spacing, but not a line break
_HEADER = re.compile(
    rf"^[ \t#>*_-]*(?:(?P<ls>learning{_SPACE}summary|summary{_SPACE}of{_SPACE}learning)"
    rf"|(?P<sk>supplementary{_SPACE}knowledge))[ \t*_]*(?::[ \t*_]*|[ \t]*$)",
    re.IGNORECASE | re.MULTILINE)


def numbered(items: Sequence[str]) -> str:
    """``items`` as a numbered list, one per line: ``1. first\\n2. second``."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def render(summary: str | Sequence[str], knowledge: str | Sequence[str]) -> str:
    """The canonical text: each section is a list of items (numbered here) or an already written body.

    Raises ``ValueError`` for an empty section: such a text would not pass ``problem``.
    """
    bodies = []
    for header, section in ((LS_HEADER, summary), (SK_HEADER, knowledge)):
        body = section if isinstance(section, str) else numbered(section)
        if not body.strip():
            raise ValueError(f"render: the '{header}' section is empty")
        bodies.append(body)
    return f"{LS_HEADER}\n{bodies[0]}\n\n{SK_HEADER}\n{bodies[1]}"


def _headers(text: str) -> tuple[re.Match | None, re.Match | None]:
    """The learning-summary header and the supplementary-knowledge header that follows it."""
    heads = list(_HEADER.finditer(text))
    ls = next((m for m in heads if m["ls"]), None)
    sk = next((m for m in heads if m["sk"] and (ls is None or m.start() > ls.start())), None)
    return ls, sk


def parse(text: str | None) -> tuple[str, str]:
    """(learning summary, supplementary knowledge) bodies of ``text``, stripped; '' where missing.

    Text before the first header (a chatty preamble) is dropped. Without a learning-summary header
    the supplementary knowledge is still found (KARD's passages read only that section).
    """
    if not text:
        return "", ""
    ls, sk = _headers(text)
    summary = text[ls.end():sk.start() if sk else len(text)].strip() if ls else ""
    knowledge = text[sk.end():].strip() if sk else ""
    return summary, knowledge


def problem(text: str | None) -> str | None:
    """Why ``text`` is not a usable knowledge text, or None when it is: a learning-summary header,
    then a supplementary-knowledge header, each followed by a non-empty section."""
    if not text or not text.strip():
        return "empty reply"
    ls, sk = _headers(text)
    if ls is None:
        return f"no '{LS_HEADER}' header"
    if sk is None:
        return f"no '{SK_HEADER}' header after '{LS_HEADER}'"
    summary, knowledge = parse(text)
    if not summary:
        return f"empty '{LS_HEADER}' section"
    if not knowledge:
        return f"empty '{SK_HEADER}' section"
    return None


def is_usable(text: str | None) -> bool:
    """True iff ``problem(text)`` finds nothing wrong."""
    return problem(text) is None


def canonical(text: str) -> str:
    """A usable text rewritten with the canonical headers, preamble and decoration dropped.

    Raises ``DataError`` with ``problem``'s reason when the text is not usable.
    """
    why = problem(text)
    if why is not None:
        raise DataError(f"not a usable knowledge text: {why}")
    return render(*parse(text))
