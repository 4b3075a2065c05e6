"""NesyCD pipeline glue: the data steps between the trained students (method.md §3, D12-D14).

Pure functions; training, generation and the teacher live in their own modules.

    step 2  collect_demonstrations(train, S_P outputs, P-STD prompts) -> errors, corrects
    step 3  nesylib.kb.build_kb(errors, teacher)                       -> KnowledgeBase (saved, editable)
    step 5  se_training_examples(train, kb)                            -> S_E training Examples (D14)
    step 6  kb_prompts(test, kb)                                       -> P-KB evaluation prompts

Notebook glue (02_kb_construction, 03_nesycd_training):
    tutor_from_params(...)             T_T: the offline derived tutor, an API or a local model
    evaluate_cached(...)               a student's evaluation, reused when it answered the same prompts
    demonstrations_from_eval(...)      step 2 from an evaluation of S_P on training questions
    kb_statistics(kb, errors, corrects) per-task counts for the KB report
    retrieved_knowledge(records, kb)   step 6's inserted text per uid (gate applied)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from nesylib import prompts
from nesylib.errors import ConfigError, DataError
from nesylib.prompts import NO_SUMMARY, Example

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
    from nesylib.extract import is_correct  # import here: the comparator is only needed for step 2

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
                         loo_retrieval: bool = False) -> list[Example]:
    """The S_E training set of D14, in this order:

    (a) every train item with a KB entry (an error of S_P), in P-KB with its knowledge, and the
        teacher CoT as target. The knowledge is the item's own analysis (``own_summary``, the
        authors' choice) or, with ``loo_retrieval``, the top BM25/dense hit among the *other*
        entries. With both off, part (a) is left out (an ablation without knowledge).
    (b) all train items in P-STD (Direct CoT) -> teacher CoT;
    (c) all train items in P-FT (Answer Prediction) -> gold answer.
    All parts form one cross-entropy loss with equal weight: every Example has group "main".
    """
    from nesylib.formats import examples_for

    if own_summary and loo_retrieval:
        raise ConfigError("se_training_examples: choose own_summary=True or loo_retrieval=True, not both")
    errors = [r for r in train_records if kb.entry_for(r["uid"]) is not None]
    knowledge: dict[str, str] = {}
    if loo_retrieval:
        texts = kb.knowledge_for_many(errors, exclude_self=True)
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
    """Step 2 from ``nesylib.evaluate`` output: S_P's P-STD answers to ``records`` -> errors, corrects."""
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


_EVAL_CODE = ("generate.py", "evaluate.py", "extract.py", "metrics.py", "flops.py")


def evaluation_key(method: str, base: str, adapter_dir, eval_sets: dict[str, list[dict]], knowledge=None,
                   max_new_tokens: int | None = None, seed: int = 42, specs: dict | None = None) -> str:
    """What determines an evaluation's outputs: the student (base + adapter fingerprint), every
    prompt, the caps and seed, the task specs (versions, or the whole of a spec passed in
    ``specs``) and the evaluation code. Greedy outputs do not depend on the batch size
    (nesylib.generate), so it is not part of the key."""
    from dataclasses import asdict

    from nesylib.evaluate import get_task_spec
    from nesylib.runs import file_hash, stable_hash
    from nesylib.students import inference_prompts

    build, _ = inference_prompts(method, knowledge)
    records = [r for recs in eval_sets.values() for r in recs]
    student = "base"
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        result = adapter_dir.parent / "train_result.json"
        student = (json.loads(result.read_text())["fingerprint"] if result.is_file()
                   else file_hash(adapter_dir / "adapter_model.safetensors"))
    here = Path(__file__).parent
    return stable_hash({
        "method": method, "base": str(base), "student": student, "max_new_tokens": max_new_tokens, "seed": seed,
        "prompts": stable_hash([[r["uid"], build(r)] for r in records]),
        "specs": {ds: (asdict(specs[ds]) if specs and ds in specs else get_task_spec(ds).version)
                  for ds in sorted({r["dataset"] for r in records})},
        "code": [file_hash(here / f) for f in _EVAL_CODE],
    })


def evaluate_cached(method: str, base: str, adapter_dir, eval_sets: dict[str, list[dict]], cache_root, *,
                    knowledge=None, batch_size: int = 16, max_new_tokens: int | None = None, seed: int = 42,
                    specs: dict | None = None, copy_to=None):
    """``students.evaluate_student`` into ``cache_root/<method>-<evaluation_key>``, or the stored
    result when that folder is complete (its summary.json is written last). Notebooks that
    evaluate the same student on the same prompts (S_P in 03 and Std-CoT in 05, NesyCD's S_E in
    08 and 06) then pay once. ``copy_to``: a folder (replaced) that gets a copy of the evaluation,
    so a run folder stays browsable. Returns (EvalResult, folder, cached)."""
    import shutil

    from nesylib.data import read_jsonl
    from nesylib.evaluate import EvalResult
    from nesylib.students import evaluate_student

    key = evaluation_key(method, base, adapter_dir, eval_sets, knowledge, max_new_tokens, seed, specs)
    out = Path(cache_root) / f"{method}-{key}"
    summary_file, samples = out / "summary.json", out / "samples.jsonl"
    cached = summary_file.is_file() and samples.is_file()
    if cached:
        stored = json.loads(summary_file.read_text())
        result = EvalResult(read_jsonl(samples), stored["summary"], stored["meta"], samples)
    else:
        result = evaluate_student(method, base, adapter_dir, eval_sets, out, knowledge=knowledge,
                                  batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, specs=specs)
    if copy_to is not None:
        shutil.rmtree(copy_to, ignore_errors=True)
        shutil.copytree(out, copy_to)
    return result, out, cached
