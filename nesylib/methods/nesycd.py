"""NesyCD pipeline glue: the data steps between the trained students (method.md §3, D12-D14).

Pure functions; training, generation and the teacher live in their own modules.

    step 2  collect_demonstrations(train, S_P outputs, P-STD prompts) -> errors, corrects
    step 3  nesylib.knowledge.kb.build_kb(errors, teacher)                       -> KnowledgeBase (saved, editable)
    step 5  se_training_examples(train, kb)                            -> S_E training Examples (D14)
    step 6  kb_prompts(test, kb)                                       -> P-KB evaluation prompts

Notebook glue (02_kb_construction, 03_nesycd_training):
    tutor_from_params(...)             T_T: the offline derived tutor, an API or a local model
    demonstrations_from_eval(...)      step 2 from an evaluation of S_P on training questions
    kb_statistics(kb, errors, corrects) per-task counts for the KB report
    retrieved_knowledge(records, kb)   step 6's inserted text per uid (gate applied)
"""
from __future__ import annotations

import re
from typing import Callable

from nesylib.methods import prompts
from nesylib.errors import ConfigError, DataError
from nesylib.methods.prompts import NO_SUMMARY, Example

_LEADING_LABEL = re.compile(r"^\s*(?:Answer|Rationale)\s*:\s*")


def _text(output) -> str:
    text = getattr(output, "text", output)  # a plain string or a GenOutput
    if not isinstance(text, str):
        raise DataError(f"student output must be a string or have .text, got {type(output).__name__}")
    return text


def strip_student_output(output: str, prompt: str, question: str) -> str:
    """The student's own answer: an echoed prompt or ``Question: <question>`` removed from the
    front, then a leading ``Answer:`` / ``Rationale:`` label (method.md §3 step 2)."""
    text = output
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
    head = text.lstrip()
    if head.startswith("Question:") and question and head[len("Question:"):].lstrip().startswith(question):
        after = head[len("Question:"):].lstrip()
        text = after[len(question):]
    return _LEADING_LABEL.sub("", text, count=1).strip()


def collect_demonstrations(records: list[dict], outputs: list, prompts_: list[str]) -> tuple[list[dict], list[dict]]:
    """Score S_P's outputs on the training questions and split them into errors and corrects.

    ``outputs[i]`` (a string or a GenOutput) answers ``prompts_[i]``, the P-STD prompt of
    ``records[i]``. Each demonstration is ``{uid, record, question (the full student prompt),
    stu_response, stu_right_score}``; scoring uses the evaluation comparator (§6.2-6.3) on the
    stripped response.
    """
    from nesylib.evaluation.extract import is_correct  # import here: the comparator is only needed for step 2

    if not len(records) == len(outputs) == len(prompts_):
        raise DataError(f"records, outputs and prompts must align: got {len(records)}, {len(outputs)}, "
                        f"{len(prompts_)}")
    errors, corrects = [], []
    for rec, out, prompt in zip(records, outputs, prompts_):
        response = strip_student_output(_text(out), prompt, rec["question"])
        right = is_correct(response, rec["answer"], rec["task"], rec["question"])
        demo = {"uid": rec["uid"], "record": rec, "question": prompt, "stu_response": response,
                "stu_right_score": int(right)}
        (corrects if right else errors).append(demo)
    return errors, corrects


def se_training_examples(train_records: list[dict], kb, own_summary: bool = True,
                         loo_retrieval: bool = False, keep_own: float | None = None, k_retrieve: int = 3,
                         k_insert: int = 1, seed: int = 42) -> list[Example]:
    """The S_E training set of D14, in this order:

    (a) every train item with a KB entry (an error of S_P), in P-KB with knowledge, and the teacher
        CoT as target. The knowledge is the item's own analysis (``own_summary``, the authors'
        choice), or it is retrieved as at test time (``k_insert`` of ``k_retrieve`` hits) with the
        item's own entry left out (``loo_retrieval``) or left out for all but a seeded share
        ``keep_own`` of the items, so that training prompts hold about as much of the needed
        knowledge as test prompts do. With no knowledge source, part (a) is left out (an ablation).
    (b) all train items in P-STD (Direct CoT) -> teacher CoT;
    (c) all train items in P-FT (Answer Prediction) -> gold answer.
    All parts form one cross-entropy loss over their target tokens: every Example has group
    "main", and its ``kind`` (kb, std, ft) keeps length-grouped batches mixed.
    """
    from nesylib.pipeline.experiment import keeps_own
    from nesylib.methods.formats import examples_for

    if loo_retrieval and keep_own is None:
        keep_own = 0.0
    if own_summary and keep_own is not None:
        raise ConfigError("se_training_examples: choose own_summary=True or retrieval (loo_retrieval / keep_own), not both")
    errors = [r for r in train_records if kb.entry_for(r["uid"]) is not None]
    knowledge: dict[str, str] = {}
    if keep_own is not None:
        flags = [not keeps_own(r["uid"], keep_own, seed) for r in errors]
        texts = kb.knowledge_for_many(errors, k_retrieve=k_retrieve, k_insert=k_insert, exclude_self=flags)
        knowledge = {r["uid"]: t for r, t in zip(errors, texts)}
    elif own_summary:
        knowledge = {r["uid"]: kb.entry_for(r["uid"])["summary"] for r in errors}
    part_a = examples_for("kb", errors, knowledge) if knowledge else []
    return part_a + examples_for("std", train_records) + examples_for("ft", train_records)


def kb_prompts(test_records: list[dict], kb, k_insert: int = 1, k_retrieve: int = 3,
               gate: Callable[[dict], bool] | None = None) -> list[str]:
    """S_E's inference prompts: P-KB with the retrieved knowledge, P-STD where there is none.

    ``gate(record) -> True`` marks items that need no knowledge (the optional confidence gate,
    e.g. ``lambda r: confidence_gate(model, tok, prompts.std(r))``); it is off by default (D13).
    """
    texts = retrieved_knowledge(test_records, kb, k_retrieve=k_retrieve, k_insert=k_insert, gate=gate)
    return [prompts.kb(r, texts[r["uid"]]) for r in test_records]


def retrieved_knowledge(records: list[dict], kb, k_retrieve: int = 3, k_insert: int = 1,
                        gate: Callable[[dict], bool] | None = None) -> dict[str, str]:
    """uid -> the text P-KB inserts for each record (``No need summary.`` = none, P-STD).

    One batched search over the KB's retriever; ``gate(record) -> True`` marks records that go
    without knowledge (the optional confidence gate, D13). Records need distinct uids.
    """
    uids = [r["uid"] for r in records]
    if len(set(uids)) != len(uids):
        raise DataError("retrieved_knowledge: records must have distinct uids")
    texts = kb.knowledge_for_many(records, k_retrieve=k_retrieve, k_insert=k_insert)
    if gate is not None:
        texts = [NO_SUMMARY if gate(r) else t for r, t in zip(records, texts)]
    return dict(zip(uids, texts))


# ------------------------------------------------------------------------------- notebook glue
TUTOR_BACKENDS = ("derived", "openai", "local")


def tutor_from_params(backend: str, train_records: list[dict], model: str | None = None,
                      base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", store_path=None,
                      concurrency: int = 8, budget_usd: float | None = None, price_table: dict | None = None):
    """The tutor T_T that writes the KB (method.md §3 step 3).

    ``"derived"``: the offline stand-in built from the train records' accepted rationales (a
    deviation, see nesylib.teacher.derived); ``"openai"``/``"local"``: an LLM behind
    ``teacher_from_params``, every call cached in the store at ``store_path`` (``budget_usd``
    needs ``price_table`` = {model: [USD per 1M input tokens, USD per 1M output tokens]}).
    """
    if backend == "derived":
        from nesylib.teacher.derived import DerivedKnowledgeTeacher

        return DerivedKnowledgeTeacher({r["uid"]: r["rationale"] for r in train_records if r.get("rationale")})
    if backend not in TUTOR_BACKENDS:
        raise ConfigError(f"tutor_backend must be one of {TUTOR_BACKENDS}, got {backend!r}")
    from nesylib.teacher.factory import teacher_from_params

    return teacher_from_params(backend, model, base_url, api_key_env, store_path, concurrency, budget_usd,
                               price_table)


def demonstrations_from_eval(records: list[dict], result) -> tuple[list[dict], list[dict]]:
    """Step 2 from ``nesylib.evaluation.evaluate`` output: S_P's P-STD answers to ``records`` -> errors, corrects."""
    by_uid = {row["uid"]: row for row in result.rows}
    missing = [r["uid"] for r in records if r["uid"] not in by_uid]
    if missing:
        raise DataError(f"the evaluation has no output for {len(missing)} record(s), e.g. {missing[0]!r}")
    rows = [by_uid[r["uid"]] for r in records]
    return collect_demonstrations(records, [row["output"] for row in rows], [row["prompt"] for row in rows])


def kb_statistics(kb, errors: list[dict], corrects: list[dict]) -> list[dict]:
    """Per task (then ``all``): demonstrations, errors, error rate, KB entries, tutor failures, and
    the mean length in words of the stored analyses."""
    tasks = sorted({d["record"]["task"] for d in errors + corrects} | {e["task"] for e in kb}
                   | {f.get("task", "") for f in kb.failures})

    def row(task, sel):
        errs = [d for d in errors if sel(d["record"]["task"])]
        n = len(errs) + sum(sel(d["record"]["task"]) for d in corrects)
        entries = [e for e in kb if sel(e["task"])]
        words = [len(e["summary"].split()) for e in entries]
        return {"task": task, "items": n, "errors": len(errs), "error_rate": round(len(errs) / n, 4) if n else None,
                "kb_entries": len(entries), "failures": sum(sel(f.get("task", "")) for f in kb.failures),
                "summary_words_mean": round(sum(words) / len(words), 1) if words else None}

    return [row(t, lambda x, t=t: x == t) for t in tasks] + [row("all", lambda x: True)]


# a student's evaluation, reused when asked the same prompts (used by every method, not only NesyCD)
from nesylib.evaluation.cache import evaluate_cached, evaluation_key  # noqa: E402,F401
