"""Answer extraction and scoring (method.md §6.2-6.3).

Two judges are offered:

* ``is_correct`` — the authors' lenient rule, kept for comparability: a cascade of answer cues
  picks a snippet, the snippet is cut at its first "." and first blank line, and the snippet is
  compared to the gold by option letter, by content, by last number (math) or by the
  formal-fallacies "invalid" test.
* ``is_correct_strict`` — reported beside it: the output must contain ``ANSWER_MARKER`` and the
  text right after it (to the end of its line) must be exactly the gold answer, after
  normalising case and surrounding punctuation; options are compared by letter, numbers by value.

Tasks of datasets defined by configuration (nesylib.data.custom_data) are scored by their answer type:
choice (the authors' option rule), number (``extract_number``: the value in the answer sentence, compared
by value), text (exact text after normalisation) and yesno (``extract_yes_no``). Built-in tasks are
scored as before.

Deliberate differences from the authors' code (all documented in the functions):
  - "option b" is read as the choice (b); the authors' code compares the string "option b" with
    "(b)" by substring, which can never succeed.
  - The blank-line cut applies after every cue, as method.md §6.2 states; the authors' code
    skipped it after "[Answer Prediction]:", "### Response:" and the labels before "Explanation".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nesylib.data.custom_data import answer_type_of_task as answer_type
from nesylib.methods.prompts import ANSWER_MARKER

QUESTION_CUT = "Question: "
# Cues tried in this order; the first one present in the (cut) output wins.
_LEADING_CUES = (ANSWER_MARKER, "[Answer Prediction]:", "the correct answer is option", "the correct answer is",
                 "The correct answer is", "The answer is")
_LABEL_CUES = ("Answer:", "A:")  # only trusted when no "Explanation" section follows
_TRAILING_CUES = ("### Response:", "the answer is", "answer is")
FALLBACK = "first_sentence"

# A number with optional sign, optional thousands groups and optional decimals ("1,234.5", "-3", ".5").
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_FULLWIDTH = str.maketrans({"（": "(", "）": ")"})
_SENTENCE_PUNCT = " \t\r\n.,;:!?\"'`*"


@dataclass(frozen=True)
class Extraction:
    """What the cascade found: the cue that fired (``FALLBACK`` if none) and the snippet."""

    cue: str
    text: str


def is_math_task(task: str) -> bool:
    """Math scoring applies when the task name contains gsm8k, GSM or MATH (case as written), and to
    configured datasets of answer type number."""
    return "gsm8k" in task or "GSM" in task or "MATH" in task or answer_type(task) == "number"


def _whole_output_math(task: str) -> bool:
    # The authors skip the cue step for GSM8K-named tasks and read the last number of the raw output.
    return "gsm8k" in task


def preprocess_gold(gold: str, question: str) -> str:
    """Extend an option gold like "(C)" with the rest of its line in the question.

    "(C)" becomes "(C) Star Wars Episode VII - The Force Awakens" when the question contains
    "(C) Star Wars ...". As in the authors' code, the first occurrence in the question is used.
    Golds without both parentheses, or not found in the question, are returned unchanged.
    """
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a string, got {type(gold).__name__}")
    if "(" in gold and ")" in gold and question and gold in question:
        return gold + question.split(gold, 1)[1].split("\n", 1)[0]
    return gold


def _cut_sentence(text: str) -> str:
    """Keep the text up to the first '.' and the first blank line, stripped."""
    return text.split(".", 1)[0].split("\n\n", 1)[0].strip()


_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")


def _cut_answer_sentence(text: str) -> str:
    """Keep the text up to the end of its first sentence, stripped: a '.' followed by whitespace or the
    end, or a line break (so "3.5" stays whole, where the authors' cut keeps "3")."""
    m = _SENTENCE_END.search(text)
    return (text[:m.start()] if m else text).strip()


def find_answer(output: str, cut=_cut_sentence) -> Extraction:
    """Run the cue cascade of method.md §6.2 on a non-math output (no number step).

    The output is first cut at the first "Question: " (a hallucinated follow-up question). ``cut``
    shortens the text after the cue (the authors': at the first "." and the first blank line).
    """
    x = output.split(QUESTION_CUT, 1)[0]
    for cue in _LEADING_CUES:
        if cue in x:
            return Extraction(cue, cut(x.split(cue, 1)[1]))
    if "Explanation" not in x:
        for cue in _LABEL_CUES:
            if cue in x:
                return Extraction(cue, cut(x.split(cue, 1)[1]))
    else:
        # With an explanation section: the text after the last label before "Explanation".
        for cue in _LABEL_CUES:
            if cue in x:
                head = x.split("Explanation", 1)[0]
                return Extraction(cue + " (before Explanation)", cut(head.rsplit(cue, 1)[-1]))
    for cue in _TRAILING_CUES:
        if cue in x:
            return Extraction(cue, cut(x.split(cue, 1)[1]))
    return Extraction(FALLBACK, cut(x))


def last_number(text: str) -> str | None:
    """The last number in ``text`` as the authors normalise it: commas and '+' removed, trailing '.' dropped."""
    found = _NUMBER.findall(text or "")
    if not found:
        return None
    return found[-1].replace(",", "").replace("+", "").strip().rstrip(".")


def extract_number(output: str) -> str | None:
    """A number answer (answer type number): the last number of the answer sentence that a cue opens
    (cut at its end, not at its first '.', so "3.5" stays whole), else the last number of the output
    (cut at a follow-up "Question: "); None without any number."""
    found = find_answer(output, cut=_cut_answer_sentence)
    if found.cue != FALLBACK:
        number = last_number(found.text)
        if number is not None:
            return number
    return last_number(output.split(QUESTION_CUT, 1)[0])


def _yes_no(text: str) -> str | None:
    word = re.match(r"[\s\"'`*(]*([A-Za-z]+)", text or "")
    return {"yes": "yes", "no": "no", "true": "yes", "false": "no"}.get(word.group(1).lower()) if word else None


def extract_yes_no(output: str) -> str | None:
    """A yes/no answer (answer type yesno): "yes" or "no" from the first word of the cascade snippet
    (true/false count as yes/no); None when that word is neither."""
    return _yes_no(find_answer(output).text)


def _number_equal(a: str | None, b: str | None) -> bool:
    x, y = (_to_value(v) if v is not None else None for v in (a, b))
    return x is not None and y is not None and abs(x - y) <= 1e-9 * max(1.0, abs(y))


def extract_answer(output: str, task: str) -> str | None:
    """The answer the lenient judge scores, or None when there is nothing to score.

    Math tasks: the last number, read from the whole raw output for gsm8k-named tasks and from the
    cascade snippet for other GSM/MATH tasks. Other tasks: the cascade snippet (its first-sentence
    fallback included, as the authors score it); None if that snippet is empty. Configured tasks of
    answer type number or yesno: ``extract_number``, ``extract_yes_no``.
    """
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    kind = answer_type(task)
    if kind == "number":
        return extract_number(output)
    if kind == "yesno":
        return extract_yes_no(output)
    if is_math_task(task):
        return last_number(output if _whole_output_math(task) else find_answer(output).text)
    return find_answer(output).text or None


# An output that is nothing but an answer: an option label with at most a few words of option text,
# or one short answer token (a word golds use, or a number). Checked on the whole output, one line.
_BARE_OPTION = re.compile(r"\(?(?:[A-Za-z]|[1-9])\)(?:[ \t]+\S+){0,10}|[A-Z]")
_BARE_TOKEN = re.compile(r"(?i:yes|no|true|false|valid|invalid)|" + _NUMBER.pattern)


def is_answer_only(output: str) -> bool:
    """True when the whole output (after the "Question: " cut) is just an answer, as answer-only students write.

    Surrounding whitespace, sentence punctuation, quotes and "*" are ignored; the rest must be one line and either
    an option ("(B)", "B)", "B", "(B) 01/07/2018", "(A) The blue jay is the second from the left",
    at most 10 words after the label) or one token: Yes/No/True/False/valid/invalid or a number.
    """
    x = output.split(QUESTION_CUT, 1)[0].strip(_SENTENCE_PUNCT)
    if not x or "\n" in x:
        return False
    return bool(_BARE_OPTION.fullmatch(x) or _BARE_TOKEN.fullmatch(x))


def has_answer(output: str, task: str) -> bool:
    """True when extraction found an answer: a cue fired with a non-empty snippet (math: a number).

    The complement is the extraction-failure rate of D21. The first-sentence fallback does not count
    as found, although the lenient judge still scores it, unless the output is nothing but an answer
    (``is_answer_only``: "(B)", "True", "24"), as an answer-only student's output is.
    """
    if is_math_task(task):
        return extract_answer(output, task) is not None
    found = find_answer(output)
    text = found.text if answer_type(task) != "yesno" else (found.text if _yes_no(found.text) else "")
    if found.cue == FALLBACK:
        return bool(text) and is_answer_only(output)
    return bool(text)


def _answer_line(output: str) -> str | None:
    """The text after the first answer marker, to the end of its line; None without a marker."""
    x = output.split(QUESTION_CUT, 1)[0]
    if ANSWER_MARKER not in x:
        return None
    return x.split(ANSWER_MARKER, 1)[1].split("\n", 1)[0]


def is_well_formed(output: str) -> bool:
    """True when the output has the answer marker followed by a non-empty answer on its line."""
    line = _answer_line(output)
    return line is not None and bool(line.strip(_SENTENCE_PUNCT))


# ------------------------------------------------------------------------ lenient comparison
def _after_first_paren(s: str) -> str | None:
    """Content between the first ')' and the next one (the option text), or None without ')'."""
    parts = s.split(")")
    if len(parts) == 1:
        return None
    return parts[1].strip(".").strip()


def _gold_parts(gold: str) -> tuple[str | None, str | None]:
    """(choice like "(c)" or None, content) of a gold answer, lower-cased."""
    g = gold.strip().rstrip(".").lower().translate(_FULLWIDTH)
    m = re.search(r"\([a-z]\)", g) or re.search(r"\([1-9]\)", g)
    if m:
        return m.group(0), _after_first_paren(g)
    return None, g.strip(".").strip()


def _pred_parts(pred: str) -> tuple[str | None, str | None]:
    """(choice, content) of a predicted snippet, following the authors' order of patterns."""
    s = pred.strip().rstrip(".").lower().translate(_FULLWIDTH)
    if len(s) == 1:  # a bare letter or digit
        return f"({s})", s
    m = re.search(r"\([a-z]\)", s) or re.search(r"\([1-9]\)", s)
    if m:
        return m.group(0), _after_first_paren(s)
    if "(" not in s and ")" not in s:
        m = re.search(r"option ([a-z])\b", s)
        if m:
            return f"({m.group(1)})", None  # fix: the authors kept "option b", which never matched "(b)"
        return None, s.strip(".").strip()
    m = re.search(r"[a-z]", s)  # an unbalanced "(b" or "b)": the first letter is the choice
    if m:
        return f"({m.group(0)})", _after_first_paren(s)
    return None, s.strip(".").strip()


def _mc_or_text_match(pred: str, gold: str) -> bool:
    gold_choice, gold_content = _gold_parts(gold)
    pred_choice, pred_content = _pred_parts(pred)
    if gold_choice and pred_choice:
        return pred_choice in gold_choice
    if not pred_content:
        return False
    return pred_content == gold_content


def is_correct(output: str, gold: str, task: str, question: str = "") -> bool:
    """The authors' lenient judgement of one raw model output against its gold answer.

    * math (``is_math_task``): last number of the prediction == last number of the gold, as strings;
      the prediction side is the whole raw output for gsm8k-named tasks.
    * formal_fallacies: ("invalid" in gold) == ("invalid" in the snippet); so, as in the authors'
      code, a snippet without "invalid" (even an empty one) counts as the answer "valid".
    * otherwise: lower-cased option letters compared when both sides have one ("(b)", "(3)",
      "option b", a single letter); else the option/free-text contents must be equal and non-empty.
    * configured datasets (nesylib.data.custom_data) by answer type: number = ``extract_number`` equals the
      gold by value; yesno = ``extract_yes_no`` equals the gold's yes/no; text = the normalised snippet,
      or the normalised rest of the answer's line, equals the normalised gold; choice = the option rule above.
    ``question`` lets ``preprocess_gold`` add the option text to a letter gold.
    """
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a string, got {type(gold).__name__}")
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    kind = answer_type(task)
    if kind == "number":
        return _number_equal(extract_number(output), last_number(gold))
    if kind == "yesno":
        ref = _yes_no(gold)
        return ref is not None and extract_yes_no(output) == ref
    if kind == "text":  # exact text: the authors' snippet, or the answer's whole line ("St. Louis.")
        g = _norm_text(gold)
        return bool(g) and g in (_norm_text(find_answer(output).text),
                                 _norm_text(find_answer(output, cut=lambda t: t.split("\n", 1)[0]).text))
    gold = preprocess_gold(gold, question)
    if is_math_task(task):
        pred, ref = extract_answer(output, task), last_number(gold)
        if ref is None:  # a gold without a number (GSM-Plus "None"): right only if no number is given
            return pred is None
        return pred == ref
    snippet = find_answer(output).text
    if task == "formal_fallacies":
        return ("invalid" in gold.lower().strip()) == ("invalid" in snippet.lower())
    return _mc_or_text_match(snippet, gold)


# ------------------------------------------------------------------------- strict comparison
def _norm_text(s: str) -> str:
    return " ".join(s.lower().translate(_FULLWIDTH).split()).strip(_SENTENCE_PUNCT)


_STRICT_CHOICE = re.compile(r"\(?([a-z]|[1-9])\)(?:\s+(.*))?|([a-z]|[1-9])")
_STRICT_NUMBER = re.compile(r"[$€£]?\s*([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)\s*(?:%|[a-z][a-z ]*)?")


def _to_value(num: str) -> float | None:
    try:
        return float(num.replace(",", ""))
    except ValueError:
        return None


def strict_answer(output: str) -> str | None:
    """The normalised text after the first answer marker (to the end of its line), or None."""
    line = _answer_line(output)
    if line is None:
        return None
    return _norm_text(line) or None


def is_correct_strict(output: str, gold: str, task: str, question: str = "") -> bool:
    """A stricter judgement: the marker must be present and its answer must be exactly the gold.

    The answer is the rest of the marker's line, lower-cased, with whitespace collapsed and
    surrounding sentence punctuation removed. Then:
    * math: the answer must be one number (an optional currency sign, a % or trailing unit words
      allowed) whose value equals the gold's value;
    * option gold "(x)": the answer must be "(x)", "x)", "x" or "(x) <text>", with no other option
      label in the text, and its letter must equal the gold letter;
    * formal_fallacies and free text: the normalised answer must equal the normalised gold.
    No first-"." cut and no cue fallback, so hedges ("(a) or (b)") and truncated answers fail.
    ``question`` is accepted for symmetry with ``is_correct`` but unused: options count by letter.
    """
    if not isinstance(gold, str):
        raise TypeError(f"gold must be a string, got {type(gold).__name__}")
    ans = strict_answer(output)
    if ans is None:
        return False
    if is_math_task(task):
        m = _STRICT_NUMBER.fullmatch(ans)
        ref = last_number(gold)
        if not m or ref is None:
            return False
        a, b = _to_value(m.group(1)), _to_value(ref)
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    g = _norm_text(gold)
    gold_letter = re.fullmatch(r"\(([a-z]|[1-9])\)", g)
    if gold_letter:
        m = _STRICT_CHOICE.fullmatch(ans)
        if not m:
            return False
        letter = m.group(1) or m.group(3)
        rest = m.group(2) or ""
        if re.search(r"\(([a-z]|[1-9])\)", rest):  # a second option label: a hedge
            return False
        return letter == gold_letter.group(1)
    return ans == g
