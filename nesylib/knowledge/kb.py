"""NesyCD's symbolic knowledge base: teacher error analyses of a student's mistakes (method.md §3).

Steps 3-4 of NesyCD. For every training question the student S_P got wrong, the tutor teacher
T_T reads the question and the wrong response and writes a *learning summary* and
*supplementary knowledge* (the error-analysis prompt below, D12). Each valid analysis becomes
one KB entry with its provenance; the KB is a human-readable JSONL file that can be edited by
hand and reloaded. At inference the KB is searched with the test question (BM25 by default,
dense optional, D13) and the top hit's analysis is inserted into the student's P-KB prompt.

A KB entry (one JSONL line; ``id`` is its position, which is also its retrieval docid):
    id, source_uid, task, task_description, question (the item's instruction),
    student_output, summary (the teacher's text, verbatim: this is what the student sees),
    student, teacher, prompt_version, created
In memory an entry also has learning_summary and supplementary_knowledge, its two sections parsed
from ``summary``; they are not written to the file, so an edit goes where the student will see it.
Only source_uid, task, task_description, question and summary are required in a hand-written
entry; the rest are filled in when missing.
"""
from __future__ import annotations

import datetime as _dt
import re
import warnings
from pathlib import Path

from nesylib.knowledge import text as knowledge_text
from nesylib.files import read_jsonl, write_jsonl
from nesylib.errors import ConfigError, DataError, NesylibError
from nesylib.knowledge.writer import REPLY_KEPT, excerpt
from nesylib.knowledge.text import LS_HEADER, SK_HEADER
from nesylib.methods.prompts import ANSWER_MARKER, FORMAT_SENTENCE, NO_SUMMARY
from nesylib.knowledge.retrieval import RETRIEVERS, make_retriever
from nesylib.teacher.base import TeacherReply, TeacherRequest

KB_PROMPT_VERSION = "kb1"
QUESTION_HEADER = "The student was given the following question:"
RESPONSE_HEADER = "The student’s wrong response is:"  # U+2019, as the authors wrote it
RESPONSE_WORDS = 256
# Output the student produces once it has lost the thread; everything from the first one on is
# dropped before the response is shown to the teacher (method.md §3 step 3).
DEGENERATE_MARKERS = (
    " ".join("?" * 11), " ".join("|" * 13), " ".join(["per day"] * 4), "\t" * 14,
    " ".join(["+ True"] * 4), "8" * 9, "0" * 19, ", ".join("0" * 10), "\ufffd" * 7, " ".join(["not"] * 7),
)
REQUIRED_FIELDS = ("source_uid", "task", "task_description", "question", "summary")
ENTRY_FIELDS = ("id", "source_uid", "task", "task_description", "question", "student_output", "summary",
                "learning_summary", "supplementary_knowledge", "student", "teacher", "prompt_version", "created")

# ------------------------------------------------------------------------- error-analysis prompt
_INSTRUCTIONS = f"""You are a patient teacher who helps students improve by going through the solutions they got wrong.
Your goal is to turn the student's mistake into guidance that will help with similar questions in the future. Write a learning summary (the reasoning steps such questions need) and supplementary knowledge (the background facts and methods the student was missing).

### Requirements:
1. {LS_HEADER} describe the line of thought and the checks that would have avoided the student's mistakes, whether in reading the question, in the solution steps or in the calculations, and finish with one general lesson.
2. {SK_HEADER} list the essential background the question relies on, such as formulas, definitions, facts about the world and problem-solving techniques.
3. Keep both parts easy to follow, short and useful.
4. If the response never states "{ANSWER_MARKER}", or turns into repeated or meaningless text, take it as a sign that the student could not solve the question at all.
5. Keep both parts general: they must help with any similar question, not only with this specific problem.
6. Before you answer, check that what you wrote meets every requirement above.

### Return Format:
{LS_HEADER} [Learning Summary]
{SK_HEADER} [Supplementary Knowledge]"""

# One project-written demonstration (D12): a calendar mistake, with the same shape as a real slot.
_DEMO_QUESTION = ("The following are multiple choice questions (with answers) about date_understanding. "
                  f"Infer the date from context. {FORMAT_SENTENCE}\n\n" + """Question: Today is 02/27/2024. What is the date one week from today in MM/DD/YYYY?
Options:
(A) 03/06/2024
(B) 03/05/2024
(C) 03/04/2024
(D) 02/34/2024
(E) 03/05/2023""")
_DEMO_RESPONSE = ("Today is 02/27/2024. One week is 7 days, so we need the date 7 days after February 27. "
                  "February has 28 days, so 27 + 7 = 34 and 34 - 28 = 6, which gives March 6. "
                  "The date one week from today is 03/06/2024. Therefore, the answer is (A).")
_DEMO_ANALYSIS = knowledge_text.render([
    "Before adding days across the end of a month, work out how many days that month has in the given year "
    "instead of assuming a fixed length.",
    "For February, first decide whether the year is a leap year; in a leap year February has 29 days.",
    "When the step is short, count forward one day at a time past the month boundary; otherwise subtract the days "
    "left in the month and carry the rest into the next month.",
    "Check the result by counting back from the chosen date to the starting date, and make sure the chosen option "
    "keeps the right year.",
    "Lesson: most date-arithmetic errors come from unchecked calendar facts, so settle month lengths and leap "
    "years before calculating.",
], [
    "Month lengths: January 31, February 28 (29 in a leap year), March 31, April 30, May 31, June 30, July 31, "
    "August 31, September 30, October 31, November 30, December 31.",
    "Leap years: a year divisible by 4 is a leap year, except century years, which must also be divisible by 400 "
    "(2000 was a leap year, 1900 was not).",
    "The MM/DD/YYYY format writes the month first, then the day, then the four-digit year.",
    "One week is 7 days; adding days moves forward through the calendar, rolling over into the next month or year "
    "when needed.",
])
# Laid out exactly like the real slots below, so the teacher sees where its answer goes.
FEWSHOT = (f"\n\nExample 0\n{QUESTION_HEADER}\n{_DEMO_QUESTION}\n\n{RESPONSE_HEADER}\n{_DEMO_RESPONSE}\n\n"
           f"{_DEMO_ANALYSIS}\n\n")


def question_slot(student_prompt: str) -> str:
    """The student's prompt up to its first ``\\nAnswer: `` (the step-by-step cue is dropped)."""
    return student_prompt.split("\nAnswer: ", 1)[0]


def response_slot(stu_response: str, words: int = RESPONSE_WORDS) -> str:
    """The student's output cut before its first degenerate marker, then to its first ``words`` words."""
    cut = len(stu_response)
    for marker in DEGENERATE_MARKERS:
        at = stu_response.find(marker)
        if at != -1:
            cut = min(cut, at)
    text = stu_response[:cut]
    spans = list(re.finditer(r"\S+", text))
    if len(spans) > words:
        text = text[:spans[words - 1].end()]  # keeps the original line breaks of the kept words
    return text.strip()


def error_analysis_prompt(student_prompt: str, stu_response: str) -> str:
    """The T_T prompt for one error (method.md §3 step 3, in the project's own words, D12)."""
    return (f"{_INSTRUCTIONS}{FEWSHOT}{QUESTION_HEADER}\n{question_slot(student_prompt)}\n\n"
            f"{RESPONSE_HEADER}\n{response_slot(stu_response)}\n")


# ---------------------------------------------------------------------------- judging replies
def _reply_problem(reply: TeacherReply) -> str | None:
    if not reply.ok or reply.text is None:
        return f"teacher call failed: {reply.error or 'no text'}"
    why = knowledge_text.problem(reply.text)
    return f"invalid analysis: {why}" if why else None


# -------------------------------------------------------------------------------- the KB itself
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def doc_text(item: dict) -> str:
    """What is indexed for an entry and what a record is queried with (method.md §3 step 4)."""
    return f"{item['task_description']} {item['question']}"


INDEX_TEXTS = ("question", "knowledge", "both")
SECTION_FIELDS = ("learning_summary", "supplementary_knowledge")  # parsed from 'summary' on load, never saved


def entry_index_text(entry: dict, what: str = "question") -> str:
    """What an entry is found by: its question (D13), its supplementary knowledge (the facts it
    holds, so a test question that names an entity finds the entries stating facts about it), or both."""
    if what not in INDEX_TEXTS:
        raise ConfigError(f"parameter 'kb_index_text' must be one of {INDEX_TEXTS}, got {what!r}")
    knowledge = entry.get("supplementary_knowledge") or entry["summary"]
    return {"question": doc_text(entry), "knowledge": knowledge,
            "both": f"{doc_text(entry)} {knowledge}"}[what]


def _complete_entry(entry: dict, where: str) -> dict:
    missing = [f for f in REQUIRED_FIELDS if f not in entry]
    if missing:
        raise DataError(f"{where}: KB entry lacks required field(s) {missing}")
    bad = [f for f in REQUIRED_FIELDS if not isinstance(entry[f], str)]
    if bad:
        raise DataError(f"{where}: KB entry field(s) {bad} must be strings")
    if not entry["summary"].strip():
        raise DataError(f"{where}: KB entry has an empty 'summary'")
    out = dict(entry)
    # the two section fields are 'summary' parsed, for reading; the student sees 'summary'. They are not saved,
    # so the file has one place to edit; a file that still holds them gets them refreshed from 'summary'
    sections = dict(zip(SECTION_FIELDS, knowledge_text.parse(out["summary"])))
    stale = [f for f, parsed in sections.items() if f in out and out[f] != parsed]
    if stale:
        warnings.warn(f"{where}: KB entry field(s) {stale} differ from the sections of 'summary', the text the "
                      f"student sees; they are read from 'summary' (make an edit there)", stacklevel=3)
    out.update(sections)
    for f in ("student_output", "student", "teacher", "prompt_version", "created"):
        out.setdefault(f, "")
    return out


class KnowledgeBase:
    """Entries (teacher analyses with provenance), failures, and a retriever over the entries."""

    def __init__(self, entries: list[dict] | None = None, failures: list[dict] | None = None):
        self.entries: list[dict] = []
        self.failures: list[dict] = list(failures or [])
        self._retriever = None
        self._by_uid: dict[str, list[int]] = {}
        for e in entries or []:
            self.add(e)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def add(self, entry: dict, where: str = "KB entry") -> dict:
        """Append an entry (its ``id`` becomes its position); the index is rebuilt on next use."""
        e = _complete_entry(entry, where)
        e["id"] = len(self.entries)
        self.entries.append({f: e[f] for f in ENTRY_FIELDS} | {k: v for k, v in e.items() if k not in ENTRY_FIELDS})
        self._by_uid.setdefault(e["source_uid"], []).append(e["id"])
        self._retriever = None
        return self.entries[-1]

    def entry_for(self, uid: str) -> dict | None:
        """The entry written for the item ``uid``, or None."""
        ids = self._by_uid.get(uid)
        return self.entries[ids[0]] if ids else None

    # ------------------------------------------------------------------------------ persistence
    @staticmethod
    def failures_path(path: Path) -> Path:
        path = Path(path)
        return path.with_name(path.stem + ".failures.jsonl")

    def save(self, path) -> Path:
        """Write the entries as JSONL (one entry a line, UTF-8) atomically, without the two section fields
        (``load`` parses them from ``summary``); failures go beside it."""
        path = Path(path)
        write_jsonl(path, [{k: v for k, v in e.items() if k not in SECTION_FIELDS} for e in self.entries], fsync=True)
        fpath = self.failures_path(path)
        if self.failures:
            write_jsonl(fpath, self.failures, fsync=True)
        elif fpath.exists():
            fpath.unlink()  # a stale failure list would describe another KB
        return path

    @classmethod
    def load(cls, path) -> "KnowledgeBase":
        """Read a KB written by ``save`` (possibly edited by hand); errors name file and line."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"knowledge base {path} not found; build it with "
                            f"nesylib.knowledge.kb.build_kb(...).save(path)")
        kb = cls(failures=read_jsonl(cls.failures_path(path)) if cls.failures_path(path).is_file() else [])
        for n, row in enumerate(read_jsonl(path, keep_blank=True), 1):
            if row is not None:
                kb.add(row, where=f"{path}:{n}")
        return kb

    # -------------------------------------------------------------------------------- retrieval
    def index(self, kind: str = "bm25", text: str = "question", **kwargs) -> "KnowledgeBase":
        """Build the retriever over each entry's ``entry_index_text`` (default: task description +
        question, D13)."""
        if kind not in RETRIEVERS:
            raise ConfigError(f"retriever kind must be one of {RETRIEVERS}, got {kind!r}")
        self._retriever = make_retriever(kind, [entry_index_text(e, text) for e in self.entries], **kwargs)
        return self

    @property
    def retriever(self):
        if self._retriever is None:
            self.index()
        return self._retriever

    def retrieve_many(self, records: list[dict], k: int = 3, exclude_self: bool = False) -> list[list[dict]]:
        """Top-``k`` hits ``{docid, score, knowledge}`` for each data record (query = its task
        description + question). ``exclude_self`` leaves out the record's own entry (leave-one-out):
        one bool for all records, or one per record."""
        if not self.entries:
            return [[] for _ in records]
        flags = exclude_self if isinstance(exclude_self, (list, tuple)) else [exclude_self] * len(records)
        if len(flags) != len(records):
            raise ConfigError(f"exclude_self: {len(flags)} flags for {len(records)} records")
        excludes = [self._by_uid.get(r.get("uid"), []) if ex else None for r, ex in zip(records, flags)]
        hits = self.retriever.search_many([doc_text(r) for r in records], k, excludes)
        return [[{"docid": h.docid, "score": h.score, "knowledge": self.entries[h.docid]["summary"]} for h in row]
                for row in hits]

    def retrieve(self, record: dict, k: int = 3, exclude_self: bool = False) -> list[dict]:
        return self.retrieve_many([record], k, exclude_self)[0]

    def knowledge_for_many(self, records: list[dict], k_retrieve: int = 3, k_insert: int = 1,
                           exclude_self: bool = False) -> list[str]:
        """The text to insert for each record: the first ``k_insert`` of ``k_retrieve`` hits joined
        with newlines, or ``No need summary.`` when nothing is retrieved (the prompt then is P-STD)."""
        if k_insert < 1 or k_insert > k_retrieve:
            raise ConfigError(f"k_insert must be between 1 and k_retrieve={k_retrieve}, got {k_insert}")
        out = []
        for hits in self.retrieve_many(records, k_retrieve, exclude_self):
            out.append("\n".join(h["knowledge"] for h in hits[:k_insert]) if hits else NO_SUMMARY)
        return out

    def knowledge_for(self, record: dict, k_retrieve: int = 3, k_insert: int = 1, exclude_self: bool = False) -> str:
        return self.knowledge_for_many([record], k_retrieve, k_insert, exclude_self)[0]


# ------------------------------------------------------------------------------------ building
def _check_error_records(errors: list[dict]) -> None:
    seen = set()
    for i, e in enumerate(errors):
        missing = [f for f in ("uid", "record", "question", "stu_response") if f not in e]
        if missing:
            raise DataError(f"error_records[{i}] lacks field(s) {missing}")
        if e["uid"] in seen:
            raise DataError(f"error_records[{i}]: uid {e['uid']!r} appears twice")
        seen.add(e["uid"])


def build_kb(error_records: list[dict], teacher, temperature: float = 0.8, max_attempts: int = 3,
             student_name: str = "", prompt_version: str = KB_PROMPT_VERSION, max_tokens: int = 1024
             ) -> KnowledgeBase:
    """Ask ``teacher`` to analyse every error and collect the valid analyses into a KB (D12).

    ``error_records`` come from ``nesylib.methods.nesycd.collect_demonstrations``. All pending items are
    sent as one batch per attempt; an invalid reply (or a failed call) is asked again with the next
    ``sample_index``, up to ``max_attempts`` in all. Items that never get a valid analysis are not
    entries but are kept in ``kb.failures`` with every reason. Entries keep the input order.
    """
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
    _check_error_records(error_records)
    prompts = [error_analysis_prompt(e["question"], e["stu_response"]) for e in error_records]
    accepted: dict[int, str] = {}
    reasons: dict[int, list[str]] = {i: [] for i in range(len(error_records))}
    unparsed: dict[int, str] = {}  # item -> its first reply that had text but not the two sections
    pending = list(range(len(error_records)))
    for attempt in range(max_attempts):
        if not pending:
            break
        requests = [TeacherRequest(
            prompt=prompts[i], kind="error_analysis", temperature=temperature, max_tokens=max_tokens,
            sample_index=attempt, uid=error_records[i]["uid"], record=error_records[i]["record"],
            extra={"student_output": error_records[i]["stu_response"], "student_prompt": error_records[i]["question"]},
        ) for i in pending]
        replies = teacher.complete(requests)
        if len(replies) != len(requests):
            raise NesylibError(f"teacher {teacher.name!r} returned {len(replies)} replies for {len(requests)} requests")
        still = []
        for i, reply in zip(pending, replies):
            problem = _reply_problem(reply)
            if problem is None:
                accepted[i] = reply.text
            else:
                reasons[i].append(problem)
                if reply.ok and reply.text is not None:
                    unparsed.setdefault(i, reply.text)
                still.append(i)
        pending = still

    created = _now()
    kb = KnowledgeBase()
    for i, err in enumerate(error_records):
        rec = err["record"]
        if i not in accepted:
            kb.failures.append({"source_uid": err["uid"], "task": rec.get("task", ""), "attempts": len(reasons[i]),
                                "reason": reasons[i][-1], "reasons": reasons[i], "student": student_name,
                                "teacher": teacher.name, "prompt_version": prompt_version, "created": created}
                               | ({"reply": excerpt(unparsed[i], REPLY_KEPT)} if i in unparsed else {}))
            continue
        ls, sk = knowledge_text.parse(accepted[i])
        kb.add({"source_uid": err["uid"], "task": rec["task"], "task_description": rec["task_description"],
                "question": rec["question"], "student_output": err["stu_response"], "summary": accepted[i],
                "learning_summary": ls, "supplementary_knowledge": sk, "student": student_name,
                "teacher": teacher.name, "prompt_version": prompt_version, "created": created})
    return kb


# ---------------------------------------------------------------------------- confidence gate
def confidence_margin(model, tokenizer, prompt: str, n_tokens: int = 16) -> float:
    """Mean |p(top-1) - p(top-2)| in percent over up to ``n_tokens`` greedy decoding steps."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # no BOS (D11)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=n_tokens, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    margins = []
    for logits in out.logits:
        top2 = torch.softmax(logits[0].float(), dim=-1).topk(2).values
        margins.append(float(top2[0] - top2[1]) * 100.0)
    return sum(margins) / len(margins)


def confidence_gate(model, tokenizer, prompt: str, n_tokens: int = 16, threshold: float = 68.0) -> bool:
    """True when the student is confident enough to go without knowledge (optional, off by default).

    Fixed as D13 says: ``prompt`` is the item's full P-STD prompt (question included) and decoding
    is greedy; the authors sampled from a prompt without the question.
    """
    return confidence_margin(model, tokenizer, prompt, n_tokens) > threshold
