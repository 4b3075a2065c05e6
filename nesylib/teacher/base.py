"""The one interface every teacher implements (API, local model, replay, programmatic).

A teacher turns a batch of ``TeacherRequest`` into the same number of ``TeacherReply`` in the
same order. ``kind`` says what is being asked, so programmatic and replay teachers can answer
without parsing prompts; API and local teachers only read ``prompt``/``system``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

DEFAULT_SYSTEM = "You are a helpful assistant."
KINDS = ("cot", "error_analysis", "knowledge", "chat")


@dataclass
class TeacherRequest:
    prompt: str                       # the user message, complete
    kind: str = "chat"                # cot | error_analysis | knowledge | chat
    system: str = DEFAULT_SYSTEM
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    sample_index: int = 0             # distinguishes repeated samples of the same prompt
    uid: str = ""                     # the record this is about (logging, replay)
    record: dict | None = None        # the record itself, for replay/programmatic teachers
    extra: dict = field(default_factory=dict)  # kind-specific inputs (e.g. the student's wrong output)

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass
class TeacherReply:
    text: str | None                  # None when the call failed after all retries
    ok: bool = True
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False              # served from the call store, no new cost
    finish_reason: str | None = None
    # Failure details for the retry policy in ``CachedTeacher``: ``unreachable`` = no reply came back
    # (connection refused or dropped, timeout): these feed its circuit breaker. ``retry_after_s`` =
    # the server's Retry-After, honoured instead of the exponential backoff.
    unreachable: bool = False
    retry_after_s: float | None = None


def estimate_tokens(text: str) -> int:
    """About 4 characters per token: for cost plans, and for servers that omit ``usage``."""
    return (len(text) + 3) // 4


@runtime_checkable
class Teacher(Protocol):
    name: str    # backend/model id, recorded with every output (provenance)

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]: ...
