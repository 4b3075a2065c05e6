"""Backend for any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server).

One HTTP attempt per call: the ``openai`` client's own retries are off. Every retryable fault
(429, 5xx, timeouts, refused or dropped connections, malformed JSON, no choices, empty text,
content filter) comes back as a failed ``TeacherReply`` and is retried by the one retry policy
of ``CachedTeacher`` (``max_retries`` extra attempts, exponential backoff, a server's
Retry-After honoured). Replies that never arrived (connection failed, timed out) are marked
``unreachable``: they feed ``CachedTeacher``'s circuit breaker, which stops the run and names
``endpoint`` once the server looks down. Errors that retrying cannot fix (bad key, unknown
model, rejected request) raise ``TeacherError`` so a run stops at once instead of failing every item.

The API key is read from an environment variable (name configurable) when the backend is
created and handed to the client only; it is scrubbed from every error message.
"""
from __future__ import annotations

import json
import os

from nesylib.errors import ConfigError
from nesylib.teacher.base import TeacherReply, TeacherRequest, estimate_tokens
from nesylib.teacher.cached import TeacherError

NO_KEY_PLACEHOLDER = "EMPTY"  # what vLLM/Ollama/llama.cpp servers accept when they need no key


class OpenAIBackend:
    """Chat-completions backend; one HTTP call per request, safe to call from many threads."""

    backend = "openai"
    parallel = True
    batch_size = 1
    paid = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 6, max_tokens_field: str = "max_tokens",
                 connect_timeout: float = 10.0):
        """``timeout``: seconds per HTTP attempt (``connect_timeout`` at most to open the connection).
        ``max_retries``: the retry count this backend asks of ``CachedTeacher`` (which does every retry)."""
        if not model:
            raise ConfigError("model: an OpenAI-compatible backend needs a model name (e.g. gpt-4o-mini)")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(f"max_tokens_field must be 'max_tokens' or 'max_completion_tokens', "
                              f"got {max_tokens_field!r}")
        key = os.environ.get(api_key_env, "")
        if not key:
            if base_url is None:
                raise ConfigError(f"the API key is read from the environment variable ${api_key_env}, which is "
                                  f"{_unset(api_key_env)}. Export it, or name another variable (the api_key_env "
                                  f"parameter, or --api-key-env for `nesylib teach`), or give base_url for a "
                                  f"local server that needs no key.")
            key = NO_KEY_PLACEHOLDER
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        import httpx
        from openai import OpenAI

        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.max_tokens_field = max_tokens_field
        self.max_retries = max_retries
        self._secret = key if key != NO_KEY_PLACEHOLDER else None
        # max_retries=0: one attempt per call; CachedTeacher retries every fault under one policy
        self._client = OpenAI(api_key=key, base_url=base_url, max_retries=0,
                              timeout=httpx.Timeout(timeout, connect=min(timeout, connect_timeout)))
        self.endpoint = str(self._client.base_url).rstrip("/")

    def __repr__(self) -> str:  # never show the client (it holds the key)
        return f"OpenAIBackend(model={self.model!r})"

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        return [self._one(r) for r in requests]

    def _one(self, req: TeacherRequest) -> TeacherReply:
        import openai

        messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
                   [{"role": "user", "content": req.prompt}]
        kwargs = {"model": self.model, "messages": messages, "temperature": req.temperature,
                  "top_p": req.top_p, self.max_tokens_field: req.max_tokens}
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                openai.BadRequestError, openai.UnprocessableEntityError) as e:
            # Retrying cannot fix these; report without the chained exception (it carries the request).
            raise TeacherError(self._scrub(f"{self.name}: request rejected with HTTP {e.status_code}: "
                                           f"{_message(e)}{self._key_hint(e.status_code)}")) from None
        except openai.APIStatusError as e:  # 429, 5xx, ...: retried by CachedTeacher
            return self._fail(f"HTTP {e.status_code}: {_message(e)}", retry_after_s=_retry_after(e))
        except openai.APITimeoutError:
            return self._fail("timed out", unreachable=True)
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            return self._fail(f"connection failed: {type(cause).__name__}: {str(cause)[:200]}", unreachable=True)
        except (json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as e:
            return self._fail(f"malformed response: {type(e).__name__}: {str(e)[:200]}")
        if isinstance(resp, str) or not getattr(resp, "choices", None):
            return self._fail("malformed response: no choices")
        usage = getattr(resp, "usage", None)
        choice = resp.choices[0]
        text = getattr(choice.message, "content", None) if choice.message is not None else None
        # a server that omits usage: estimate (chars/4) so budgets still bind
        pt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else estimate_tokens(req.system + req.prompt)
        ct = int(getattr(usage, "completion_tokens", 0) or 0) if usage else estimate_tokens(text or "")
        if choice.finish_reason == "content_filter":
            return TeacherReply(text=None, ok=False, error="rejected by the content filter",
                                prompt_tokens=pt, completion_tokens=ct, finish_reason=choice.finish_reason)
        if not text or not text.strip():
            return TeacherReply(text=None, ok=False, error="empty reply", prompt_tokens=pt, completion_tokens=ct,
                                finish_reason=choice.finish_reason)
        return TeacherReply(text=text, ok=True, prompt_tokens=pt, completion_tokens=ct,
                            finish_reason=choice.finish_reason)

    def _key_hint(self, status: int) -> str:
        """For a 401/403: which environment variable the key came from (or should have)."""
        if status not in (401, 403):
            return ""
        where = (f"the environment variable ${self.api_key_env} (named by the api_key_env parameter, or "
                 f"--api-key-env for `nesylib teach`)")
        if self._secret is None:
            return (f". No key was sent: the key is read from {where}, which is {_unset(self.api_key_env)}; "
                    f"export it if this server needs one")
        return f". The key sent was read from {where}: check that it is valid for {self.endpoint}"

    def _fail(self, error: str, unreachable: bool = False, retry_after_s: float | None = None) -> TeacherReply:
        return TeacherReply(text=None, ok=False, error=self._scrub(f"{self.name}: {error}"), unreachable=unreachable,
                            retry_after_s=retry_after_s)


def _unset(name: str) -> str:
    return "set but empty" if name in os.environ else "not set"


def _retry_after(e) -> float | None:
    """The server's Retry-After (``retry-after-ms`` or ``retry-after`` in seconds), if sane (0-60 s)."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if 0 <= value <= 60:
            return value
    return None


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else body.get("message")
        if msg:
            return str(msg)[:300]
    return str(getattr(e, "message", "") or e)[:300]
