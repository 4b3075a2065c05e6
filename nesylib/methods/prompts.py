"""Every student prompt format in one place (method.md §2.3-§2.5, §3.5, §4.1, §5).

One builder per method serves training and evaluation (D11): the evaluation prompt is the
identical string the student was trained on. Sentences marked <...> in method.md are worded
here in the project's own words; the quoted markers are functional and kept verbatim.
Bump PROMPT_VERSION whenever a string below changes: cached artifacts key on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_VERSION = "p1"
ANSWER_MARKER = "Therefore, the answer is"
NO_SUMMARY = "No need summary."
FORMAT_SENTENCE = f'End your response with "{ANSWER_MARKER}" followed by the final answer.'
KB_INTRO = ("A teacher who studied similar questions wrote the general lessons and background knowledge "
            "below; use them if they help.")
WK_INTRO = "Some background knowledge that may be relevant is listed below."
STEP_CUE = "Answer: Let's think step by step. "
METHODS = ("std", "ft", "mt-cot", "mt-re", "kard", "kaft", "cascod", "kb", "inter")


def prefix_prompt(record: dict) -> str:
    """The authors' per-task prefix (method.md §1.5)."""
    if "gsm8k" in record["task"]:
        return "The following are multi-step reasoning math questions about gsm8k."
    return f"The following are multiple choice questions (with answers) about {record['task']}."


def _p(record: dict) -> str:
    return f"{prefix_prompt(record)} {record['task_description']}"


def split_rationale(response: str) -> tuple[str, str]:
    """(rationale, answer) around the *last* answer marker (D18); answer = '' if absent."""
    head, sep, tail = response.rpartition(ANSWER_MARKER)
    if not sep:
        return response.strip(), ""
    return head.strip(), tail.strip()


_ANSWER_END = re.compile(r"\.(?=\s|$)|\n")


def cut_after_answer(text: str) -> str | None:
    """The text up to the end of its first answer-marker sentence; None without a marker.

    The answer sentence ends at the first '.' followed by whitespace (so "3.5" survives), or at the
    line end; a sentence without a closing '.' gets one, so every rationale ends "...is X."
    """
    at = text.find(ANSWER_MARKER)
    if at < 0:
        return None
    rest = text[at + len(ANSWER_MARKER):]
    m = _ANSWER_END.search(rest)
    answer = (rest[:m.start()] if m else rest).rstrip()
    if not answer.strip():
        return None
    return f"{text[:at]}{ANSWER_MARKER}{answer}.".strip()


def std(record: dict) -> str:
    """P-STD: Std-CoT training and inference, NesyCD step 1-2, SKIntern inference."""
    return f"{_p(record)} {FORMAT_SENTENCE}\n\nQuestion: {record['question']}\n{STEP_CUE}"


def ft(record: dict) -> str:
    """P-FT: answer-only fine-tuning (and NesyCD's Answer Prediction task)."""
    return f"{_p(record)}\n\nQuestion: {record['question']}\nAnswer: "


def knowledge_block(intro: str, knowledge: str) -> str:
    return f"{intro}\n{knowledge.strip()}\n\n" if knowledge and knowledge.strip() and knowledge != NO_SUMMARY else ""


def kb(record: dict, summary: str) -> str:
    """P-KB (NesyCD): P-STD with the retrieved learning summary; reduces to P-STD without one."""
    return (f"{_p(record)} {FORMAT_SENTENCE}\n\n{knowledge_block(KB_INTRO, summary)}"
            f"Question: {record['question']}\n{STEP_CUE}")


def kard_passages(passages: list[str], words: int = 128) -> str:
    """KARD knowledge block: numbered passages, each cut to its first ``words`` words."""
    lines = []
    for i, p in enumerate(passages, 1):
        text = p.split(" . ", 1)[1] if " . " in p else p
        lines.append(f"{i}. " + " ".join(text.split()[:words]).rstrip("."))
    return ".\n".join(lines) + ("." if lines else "")


def kard(record: dict, passages: list[str]) -> str:
    return (f"{_p(record)} {FORMAT_SENTENCE}\n\n{knowledge_block(WK_INTRO, kard_passages(passages))}"
            f"Question: {record['question']}\n{STEP_CUE}")


def kaft(record: dict, passages: list[str]) -> str:
    return (f"{_p(record)}\n\n{knowledge_block(WK_INTRO, kard_passages(passages))}"
            f"Question: {record['question']}\nAnswer: ")


def mt_cot(record: dict) -> tuple[str, str]:
    """MT-CoT prompts: (rationale task, answer task)."""
    base = f"{_p(record)}\n\nQuestion: {record['question']}\n"
    return base + "[Explanation Generation]: ", base + "[Answer Prediction]: "


def mt_re(record: dict) -> tuple[str, str]:
    """Step-by-step distillation prompts: (rationale task, answer task)."""
    base = f"{_p(record)}\n\nQuestion: {record['question']}\n"
    return base + "Rationale: ", base + "Answer: "


def cascod(record: dict, rationale: str | None = None) -> str:
    """CasCoD: stage 1 (rationale) without ``rationale``, stage 2 (answer) with it (D18 layout)."""
    base = f"{_p(record)}\n\nQuestion: {record['question']}"
    if rationale is None:
        return base + "\nRationale: "
    return f"{base} {rationale.strip()}\n{ANSWER_MARKER} "


def inter(record: dict, knowledge: str, demos: list[dict]) -> str:
    """P-INTER (SKIntern stage prompt): compressed knowledge, n_t demos, then the question.

    With no knowledge and no demos it is exactly P-STD, so the last stage trains on the
    inference prompt (D17).
    """
    shots = "".join(f"Question: {d['question']}\nAnswer: {d['rationale'].strip()}\n\n" for d in demos)
    return (f"{_p(record)} {FORMAT_SENTENCE}\n\n{knowledge_block(KB_INTRO, knowledge)}{shots}"
            f"Question: {record['question']}\n{STEP_CUE}")


@dataclass(frozen=True)
class Example:
    """One supervised sequence: loss on ``target`` only; ``group`` names its loss term; ``kind`` names
    the training format it comes from (e.g. "kb", "std", "ft" in NesyCD's S_E set), so that length
    grouping can keep every batch a mix of the formats instead of single-format batches."""
    prompt: str
    target: str
    group: str = "main"
    uid: str = ""
    kind: str = ""
