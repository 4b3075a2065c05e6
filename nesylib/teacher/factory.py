"""One call that builds a ready ``Teacher`` from plain parameters (notebooks, CLI)."""
from __future__ import annotations

from pathlib import Path

from nesylib.errors import ConfigError

BACKENDS = ("openai", "local", "replay")


def teacher_from_params(backend: str, model: str | None = None, base_url: str | None = None,
                        api_key_env: str = "OPENAI_API_KEY", store_path: str | Path | None = None,
                        concurrency: int = 8, budget_usd: float | None = None, price_table: dict | None = None,
                        *, timeout: float = 120.0, max_retries: int = 6, policy_retries: int | None = None,
                        batch_size: int = 8, keep_prompts: bool = False, data_dir=None, retry_backoff_s: float = 1.0,
                        breaker_failures: int = 3, breaker_window_s: float = 120.0, progress: bool = True):
    """A ``Teacher`` for ``backend``:

    * ``"openai"``: any OpenAI-compatible endpoint (``base_url``; key from ``$api_key_env``),
      wrapped in a ``CachedTeacher`` over the store at ``store_path`` (in memory if None).
    * ``"local"``: a transformers chat model (default ``smollm2-135m``), cached the same way.
    * ``"replay"``: recorded outputs; ``model`` is the source ("codex", "gsm8k" or "auto").

    Every retryable fault (HTTP 429/5xx, timeouts, failed connections, malformed or empty replies)
    gets the same ``max_retries`` extra attempts (at most 2 for a local model, whose seeded sampling
    repeats itself; ``policy_retries``, if given, overrides both: an older name of the same count). After ``breaker_failures`` calls in a row with no reply at all,
    the run stops with ``TeacherUnreachable`` naming ``base_url`` (see ``CachedTeacher``).

    ``progress``: show a text progress bar on stderr while a batch's new calls run (``CallProgress``).

    Parameters hold no secret: the key is read from the environment by the backend.
    """
    from nesylib.teacher.cached import CachedTeacher
    from nesylib.teacher.store import CallStore

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "replay":
        from nesylib.teacher.replay import ReplayTeacher

        return ReplayTeacher(model or "auto", data_dir=data_dir)
    if backend == "openai":
        from nesylib.teacher.openai_backend import OpenAIBackend

        if not model:
            raise ConfigError("model: the openai backend needs a model name")
        inner = OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, timeout=timeout,
                              max_retries=max_retries)
    else:
        from nesylib.teacher.local import LocalBackend

        if base_url:
            raise ConfigError("base_url applies to the openai backend only (a local model has no URL)")
        inner = LocalBackend(model or "smollm2-135m", batch_size=batch_size)
    store = CallStore(store_path) if store_path else None
    if policy_retries is None:
        # a local model draws the same text again for the same request (seeded), so retrying it rarely helps
        policy_retries = max_retries if backend == "openai" else min(max_retries, 2)
    return CachedTeacher(inner, store, concurrency=concurrency, budget_usd=budget_usd, price_table=price_table,
                         policy_retries=policy_retries,
                         keep_prompts=keep_prompts, retry_backoff_s=retry_backoff_s,
                         breaker_failures=breaker_failures, breaker_window_s=breaker_window_s, progress=progress)
