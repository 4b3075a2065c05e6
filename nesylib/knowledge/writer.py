"""SKIntern knowledge generation: a teacher writes a learning summary and supplementary knowledge
for each train item from its question and gold answer (method.md §4.2, D15).

The prompt keeps the authors' structure and slots (role sentence, {prefix}, instruction, {task},
concision sentence, then "\\n\\n" + fewshot + "Question: {query}\\nAnswer: {answer}\\n\\n") in the
project's own words, with one project-written demo in the "full" style. Whether a reply is usable,
and its canonical form, follow ``nesylib.knowledge.text`` (both sections, headers normalised).
Invalid replies are retried with a new ``sample_index`` (so caching teachers draw a fresh sample)
and, after ``max_attempts``, reported as failures with every reason: nothing is dropped silently.
Bump KNOWLEDGE_PROMPT_VERSION whenever a string below changes: cached teacher outputs key on it.
"""
from __future__ import annotations

from dataclasses import dataclass

from nesylib.knowledge import text as knowledge_text
from nesylib.errors import ConfigError
from nesylib.methods.prompts import prefix_prompt
from nesylib.teacher.base import DEFAULT_SYSTEM, Teacher, TeacherRequest

KNOWLEDGE_PROMPT_VERSION = "k1"

ROLE = ("You are an expert teaching assistant. For the question below you write a learning summary "
        "and the knowledge behind it, so that students can solve questions of the same task on their "
        "own in the future.")
INSTRUCTION = ("Drawing on your understanding of the question and on the relevant background knowledge, "
               "core concepts and empirical rules, write a Learning Summary as a numbered list of the steps "
               "and precautions needed to solve such questions, and Supplementary Knowledge as a numbered "
               "list of the facts, definitions and techniques those steps rely on.")
CONCISION = "Keep both parts short, general and to the point."


@dataclass(frozen=True)
class KnowledgeDemo:
    question: str   # "Question: ...\nAnswer: (C).\n\n"
    rational: str   # the two numbered sections (the authors' field name)


# One project-written demo (date_understanding-like, written for this project, not a BBH item).
DEMOS = [KnowledgeDemo(
    question=("Question: Maya's passport expired on 02/27/2024, and she renewed it exactly three days later. "
              "What was the date of the renewal in MM/DD/YYYY?\nOptions:\n(A) 03/02/2024\n(B) 02/30/2024\n"
              "(C) 03/01/2024\n(D) 03/03/2024\n(E) 02/28/2024\n(F) 03/01/2023\nAnswer: (C).\n\n"),
    rational=knowledge_text.render([
        "Find the reference date and the exact offset the question asks for (days, weeks, months or years, "
        "forwards or backwards) before computing anything.",
        "Move through the offset one unit at a time, checking the length of every month you cross.",
        "When February is involved, decide first whether the year is a leap year.",
        "Write the result in the requested format and compare it with every option; discard options that are "
        "not real dates, such as 02/30.",
        "Lesson: most date mistakes come from month lengths and leap years, so verify each boundary you cross.",
    ], [
        "Month lengths: January 31, February 28 (29 in a leap year), March 31, April 30, May 31, June 30, "
        "July 31, August 31, September 30, October 31, November 30, December 31.",
        "Leap years are divisible by 4, but century years must also be divisible by 400: 2000 was a leap year, "
        "1900 was not.",
        "\"Yesterday\" is one day back, \"a week ago\" is seven days back, and \"one year later\" keeps the month "
        "and day (29 February aside).",
        "In MM/DD/YYYY the month comes first, so 03/01/2024 is 1 March 2024.",
        "Days added past the end of a month carry into the next month, and past December into January of the "
        "next year.",
    ]),
)]


def fewshot_block(n_demos: int) -> str:
    """The first ``n_demos`` demos, each demo.question + demo.rational + blank line."""
    if isinstance(n_demos, bool) or not isinstance(n_demos, int) or not 0 <= n_demos <= len(DEMOS):
        raise ConfigError(f"n_demos must be an integer in 0..{len(DEMOS)} (the project has "
                          f"{len(DEMOS)} knowledge demo), got {n_demos!r}")
    return "".join(d.question + d.rational + "\n\n" for d in DEMOS[:n_demos])


def knowledge_prompt(record: dict, n_demos: int = 1) -> str:
    """The knowledge-generation prompt for one record (question + gold answer)."""
    head = " ".join([ROLE, prefix_prompt(record), INSTRUCTION, record["task_description"], CONCISION])
    return f"{head}\n\n{fewshot_block(n_demos)}Question: {record['question']}\nAnswer: {record['answer']}\n\n"


def knowledge_requests(records: list[dict], n_demos: int = 1, temperature: float = 0.8,
                       max_tokens: int = 768, sample_index: int = 0) -> list[TeacherRequest]:
    """One ``TeacherRequest(kind="knowledge")`` per record, in order."""
    return [TeacherRequest(prompt=knowledge_prompt(r, n_demos), kind="knowledge", system=DEFAULT_SYSTEM,
                           temperature=temperature, max_tokens=max_tokens, sample_index=sample_index,
                           uid=r["uid"], record=r,
                           extra={"prompt_version": KNOWLEDGE_PROMPT_VERSION, "n_demos": n_demos})
            for r in records]


def generate_knowledge(records: list[dict], teacher: Teacher, max_attempts: int = 3, n_demos: int = 1,
                       temperature: float = 0.8, max_tokens: int = 768) -> tuple[dict[str, str], list[dict]]:
    """Ask ``teacher`` for every record's knowledge; retry invalid replies up to ``max_attempts``.

    Returns (knowledge_by_uid, failures). Each failure is {"uid", "attempts", "reasons"} with one
    reason per attempt; attempt a uses ``sample_index=a``.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
    seen = set()
    for r in records:
        if r["uid"] in seen:
            raise ConfigError(f"records contain uid {r['uid']!r} twice")
        seen.add(r["uid"])
    knowledge: dict[str, str] = {}
    reasons: dict[str, list[str]] = {r["uid"]: [] for r in records}
    unparsed: dict[str, str] = {}  # uid -> its first reply that had text but not the two sections
    pending = list(records)
    for attempt in range(max_attempts):
        if not pending:
            break
        reqs = knowledge_requests(pending, n_demos, temperature, max_tokens, sample_index=attempt)
        replies = teacher.complete(reqs)
        if len(replies) != len(reqs):
            raise ConfigError(f"teacher {getattr(teacher, 'name', teacher)!r} returned {len(replies)} "
                              f"replies for {len(reqs)} requests")
        still = []
        for r, rep in zip(pending, replies):
            if not rep.ok or rep.text is None:
                reasons[r["uid"]].append(f"teacher error: {rep.error or 'no text'}")
                still.append(r)
                continue
            why = knowledge_text.problem(rep.text)
            if why is not None:
                reasons[r["uid"]].append(why)
                unparsed.setdefault(r["uid"], rep.text)
                still.append(r)
            else:
                knowledge[r["uid"]] = knowledge_text.canonical(rep.text)
        pending = still
    failures = [{"uid": r["uid"], "attempts": len(reasons[r["uid"]]), "reasons": reasons[r["uid"]]}
                | ({"reply": excerpt(unparsed[r["uid"]], REPLY_KEPT)} if r["uid"] in unparsed else {})
                for r in pending]
    return knowledge, failures


# ------------------------------------------------------------------------ enough knowledge?
REPLY_KEPT, REPLY_SHOWN = 500, 200  # characters of an unparseable reply kept in a failure / shown in an error


class NotEnoughKnowledge(ConfigError):
    """The teacher or tutor gave usable knowledge for too few items for a knowledge method to run
    under its own name (fix the teacher's parameters, or lower the threshold)."""


def excerpt(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (marked with an ellipsis), or None."""
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def knowledge_summary(n_items: int, n_with_knowledge: int, failures, teacher_name: str,
                      what: str = "knowledge") -> dict:
    """Counts of a knowledge-producing step, for the notebook output and results.json.

    ``failures`` is the failure list of ``generate_knowledge`` or ``KnowledgeBase.failures`` (or
    just their number). Returns {what, teacher, items, with_knowledge, failures, share,
    first_failure, first_unparseable_reply}; ``share`` is None when there were no items.
    """
    for name, value in (("n_items", n_items), ("n_with_knowledge", n_with_knowledge)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if n_with_knowledge > n_items:
        raise ConfigError(f"n_with_knowledge={n_with_knowledge} exceeds n_items={n_items}")
    rows = [] if isinstance(failures, int) else list(failures or [])
    n_failures = failures if isinstance(failures, int) else len(rows)
    first = rows[0] if rows else {}
    reasons = first.get("reasons") or ([first["reason"]] if first.get("reason") else [])
    reply = next((f["reply"] for f in rows if f.get("reply")), None)
    return {"what": what, "teacher": teacher_name, "items": n_items, "with_knowledge": n_with_knowledge,
            "failures": n_failures, "share": round(n_with_knowledge / n_items, 4) if n_items else None,
            "first_failure": reasons[-1] if reasons else None,
            "first_unparseable_reply": excerpt(reply, REPLY_SHOWN)}


def describe_summary(summary: dict) -> str:
    """One human-readable paragraph of a ``knowledge_summary``."""
    share = "n/a" if summary["share"] is None else f"{summary['share']:.0%}"
    text = (f"{summary['what']}: {summary['teacher']!s} gave usable knowledge for {summary['with_knowledge']} of "
            f"{summary['items']} items ({share}), {summary['failures']} failures")
    if summary["first_failure"]:
        text += f"; first failure: {summary['first_failure']}"
    if summary["first_unparseable_reply"]:
        text += f"; first unparseable reply: {summary['first_unparseable_reply']!r}"
    return text


def require_knowledge(n_items: int, n_with_knowledge: int, failures, teacher_name: str, threshold: float = 0.5,
                      what: str = "knowledge", *, fix: str = "the teacher's backend/model parameters",
                      threshold_name: str = "min_knowledge_share") -> dict:
    """Stop a notebook whose teacher/tutor gave knowledge for too few items; else return the counts.

    Raises ``NotEnoughKnowledge`` (a ``ConfigError``) naming the teacher, the counts (items, with
    knowledge, failures), the first failure and unparseable reply, and what to change (``fix``, or
    lowering ``threshold_name``) when ``n_with_knowledge / n_items < threshold``. With no items at
    all nothing was asked, so nothing is judged. Returns ``knowledge_summary(...)``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ConfigError(f"parameter {threshold_name!r} must be a number in [0, 1], got {threshold!r}")
    summary = knowledge_summary(n_items, n_with_knowledge, failures, teacher_name, what)
    if n_items and n_with_knowledge / n_items < threshold:
        raise NotEnoughKnowledge(
            f"{describe_summary(summary)}. That is below {threshold_name}={threshold}, so the method would run "
            f"on (almost) no knowledge under its own name. Check {fix}: the endpoint, the model, and that its "
            f"replies hold the expected sections; or lower {threshold_name} to accept fewer items with knowledge.")
    return summary


def require_kb_entries(n_entries: int, kb_path, n_errors: int | None, n_failures: int, tutor_name: str,
                       where: str = "02_kb_construction") -> None:
    """Refuse to train or evaluate NesyCD on an empty knowledge base (``NotEnoughKnowledge``): the
    error names the KB file, why it is empty (no student errors, or the tutor failed on all) and
    ``where`` it is built."""
    if n_entries > 0:
        return
    why = ("the student made no errors on the training questions it answered" if not n_errors
           else f"tutor {tutor_name!s} gave no usable analysis for any of the student's {n_errors} errors "
                f"({n_failures} failures)")
    raise NotEnoughKnowledge(
        f"NesyCD needs knowledge, but the knowledge base {kb_path} has no entries: {why}. Rebuild it in "
        f"{where} (check the tutor's backend/model parameters, or let the student answer more training "
        f"questions) instead of training a NesyCD student without knowledge.")
