"""The Porter (1980) suffix-stripping stemmer, as used by Lucene's English analyser.

PyStemmer is not part of the pinned stack, and BM25 over the KB needs the stemming step of a
Lucene-like analyser (method.md D13), so the classic algorithm is written out here. It follows
the widely used reference version (with the ``bli -> ble`` and ``logi -> log`` step-2 rules).
Input is expected in lower case; words of one or two letters are returned unchanged.
"""
from __future__ import annotations

from functools import lru_cache

_VOWELS = frozenset("aeiou")

# Step 2 and 3 map a suffix to its replacement when the remaining stem has measure > 0;
# step 4 deletes a suffix when the measure is > 1. The longest matching suffix is the only
# candidate: if its condition fails, no shorter suffix is tried (as in the original).
_STEP2 = {
    "ational": "ate", "tional": "tion", "enci": "ence", "anci": "ance", "izer": "ize", "bli": "ble",
    "alli": "al", "entli": "ent", "eli": "e", "ousli": "ous", "ization": "ize", "ation": "ate",
    "ator": "ate", "alism": "al", "iveness": "ive", "fulness": "ful", "ousness": "ous", "aliti": "al",
    "iviti": "ive", "biliti": "ble", "logi": "log",
}
_STEP3 = {"icate": "ic", "ative": "", "alize": "al", "iciti": "ic", "ical": "ic", "ful": "", "ness": ""}
_STEP4 = ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou",
          "ism", "ate", "iti", "ous", "ive", "ize")


def _is_consonant(w: str, i: int) -> bool:
    ch = w[i]
    if ch in _VOWELS:
        return False
    if ch == "y":  # 'y' is a consonant at the start or after a vowel, a vowel after a consonant
        return i == 0 or not _is_consonant(w, i - 1)
    return True


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V]: the number of vowel-to-consonant transitions."""
    m, prev_vowel = 0, False
    for i in range(len(stem)):
        vowel = not _is_consonant(stem, i)
        if prev_vowel and not vowel:
            m += 1
        prev_vowel = vowel
    return m


def _has_vowel(stem: str) -> bool:
    return any(not _is_consonant(stem, i) for i in range(len(stem)))


def _ends_double_consonant(w: str) -> bool:
    return len(w) >= 2 and w[-1] == w[-2] and _is_consonant(w, len(w) - 1)


def _ends_cvc(w: str) -> bool:
    """consonant-vowel-consonant ending whose last letter is not w, x or y (e.g. hop, fil)."""
    n = len(w)
    return (n >= 3 and _is_consonant(w, n - 3) and not _is_consonant(w, n - 2) and _is_consonant(w, n - 1)
            and w[-1] not in "wxy")


def _longest_suffix(w: str, suffixes) -> str | None:
    best = None
    for s in suffixes:
        if w.endswith(s) and (best is None or len(s) > len(best)):
            best = s
    return best


def _step1(w: str) -> str:
    # 1a: plurals
    if w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    # 1b: past tense and gerunds
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suf in ("ed", "ing"):
            if w.endswith(suf) and _has_vowel(w[:-len(suf)]):
                w = w[:-len(suf)]
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif _ends_double_consonant(w) and w[-1] not in "lsz":
                    w = w[:-1]
                elif _measure(w) == 1 and _ends_cvc(w):
                    w += "e"
                break
    # 1c: terminal y -> i when the stem has a vowel
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    return w


def _map_step(w: str, table: dict[str, str]) -> str:
    suf = _longest_suffix(w, table)
    if suf is not None and _measure(w[:-len(suf)]) > 0:
        return w[:-len(suf)] + table[suf]
    return w


def _step4(w: str) -> str:
    suf = _longest_suffix(w, _STEP4)
    if suf is None:
        return w
    stem = w[:-len(suf)]
    if suf == "ion" and not stem.endswith(("s", "t")):
        return w
    return stem if _measure(stem) > 1 else w


def _step5(w: str) -> str:
    if w.endswith("e"):
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _measure(w) > 1:
        w = w[:-1]
    return w


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Porter stem of a lower-case word (cached: corpora repeat words a lot)."""
    if len(word) <= 2:
        return word
    w = _step1(word)
    w = _map_step(w, _STEP2)
    w = _map_step(w, _STEP3)
    w = _step4(w)
    return _step5(w)


def stem_words(words: list[str]) -> list[str]:
    return [stem(w) for w in words]
