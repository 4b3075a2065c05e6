"""``CachedTeacher``: any backend behind the call store, with concurrency, retries and a budget.

Every consumer (CoT generation, NesyCD error analysis, SKIntern knowledge) receives a plain
``Teacher``; wrapping a backend in ``CachedTeacher`` adds, in this order for each request:

1. store lookup: a stored success is served with ``cached=True`` and costs nothing;
2. identical requests in one batch become one call; for a paid backend, one plan line is then
   printed before any call of the batch starts (``plan_cost``): new calls, estimated tokens and
   cost, and a warning when that exceeds the budget left;
3. misses go to the backend in chunks of ``backend.batch_size`` on a thread pool of
   ``concurrency`` workers (1 when the backend is not ``parallel``, e.g. a local model);
4. each reply is stored the moment it arrives (a killed run loses only calls in flight);
5. every failed attempt (429, 5xx, timeout, refused or dropped connection, malformed, empty or
   filtered reply) is stored as a failure and retried under ONE policy: ``policy_retries``
   extra attempts (default: the backend's ``max_retries``, else 6), exponential backoff from
   ``retry_backoff_s`` (at most ``max_backoff_s``), or the server's Retry-After when it sent one;
6. a circuit breaker watches replies that never arrived (connection failed, timed out): after
   ``breaker_failures`` of them in a row, or two in a row ``breaker_window_s`` apart, no new call
   starts and ``TeacherUnreachable`` is raised naming the endpoint and the last error. Any reply
   (even an error status or a malformed body) resets the count, and a call that failed although
   the server answered another call while it was out does not count: the server is up;
7. before each new paid call the run's spend is checked against ``budget_usd``; once reached,
   no new call starts and ``BudgetExceeded`` is raised after the calls in flight are stored;
8. while a batch's new calls run, a text progress bar on stderr (``CallProgress``, on
   ``nesylib.progress.tqdm``) shows that batch's requests done / total and the run's calls so far
   (ok, failed, retried), tokens in / out and, for a priced paid model, USD spent against the
   budget. A batch the store answers entirely opens no bar (a paid backend's plan line then says
   "0 new calls"); ``progress=False`` turns the bar off.

A request still failed after its retries is counted in ``summary.unresolved``; callers decide
whether that fails the run (``nesylib teach`` exits non-zero). The next run with the same store
asks exactly those calls again: only successes are ever served from the store.
"""
from __future__ import annotations

import hashlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from nesylib.errors import ConfigError, NesylibError
from nesylib.teacher.base import TeacherReply, TeacherRequest, estimate_tokens
from nesylib.teacher.store import CallStore, call_key


class TeacherError(NesylibError):
    """A teacher call cannot succeed by retrying (bad key, unknown model, rejected request)."""


class BudgetExceeded(TeacherError):
    """The run's spend reached its cap; stored calls remain servable."""


class TeacherUnreachable(TeacherError):
    """The endpoint gave no reply several times in a row (refused, dropped, timed out): the run stops."""


class TeacherIncomplete(TeacherError):
    """Some teacher calls are still unresolved after their retries, or some items got no reply at all."""


DEFAULT_RETRIES = 6


class PriceTable:
    """USD per 1M input / output tokens, per model name.

    Accepts ``{"model": [in, out]}`` or ``{"model": {"input": in, "output": out}}``.
    """

    def __init__(self, prices: dict | None = None):
        self._prices: dict[str, tuple[float, float]] = {}
        for model, p in (prices or {}).items():
            try:
                pin, pout = (p["input"], p["output"]) if isinstance(p, dict) else p
                self._prices[model] = (float(pin), float(pout))
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"price_table[{model!r}] must be [usd_per_1M_input, usd_per_1M_output] "
                                  f"or {{'input': ..., 'output': ...}}, got {p!r}") from None
            if min(self._prices[model]) < 0:
                raise ConfigError(f"price_table[{model!r}]: prices must be >= 0, got {p!r}")

    def __contains__(self, model: str) -> bool:
        return model in self._prices

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost in USD of one call (0 for a model without a price)."""
        pin, pout = self._prices.get(model, (0.0, 0.0))
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6


@dataclass
class CostPlan:
    """What one batch will ask of a paid teacher, worked out before any of it is sent.

    Estimates only: input tokens are about 4 characters each (system + prompt), output tokens
    are the sum of ``max_tokens`` (the most the calls can return), retries are not counted.
    """
    teacher: str
    calls: int                 # distinct requests not in the store: the new calls to make
    cached: int                # requests the store already answers (free)
    input_tokens: int
    output_tokens: int
    cost_usd: float | None     # None: the price table has no price for the model

    def exceeds(self, budget_left_usd: float | None) -> bool:
        return budget_left_usd is not None and self.cost_usd is not None and self.cost_usd > budget_left_usd

    def line(self, budget_usd: float | None = None, spent_usd: float = 0.0) -> str:
        """The one-line plan printed before the batch's first call."""
        calls = f"{self.calls} new call{'' if self.calls == 1 else 's'}"
        head = (f"teacher plan {self.teacher}: {calls} ({self.cached} served from the store), "
                f"~{self.input_tokens} input tokens (chars/4) + at most {self.output_tokens} output tokens "
                f"(max_tokens)")
        if self.calls == 0:
            return f"{head}: nothing to pay"
        if self.cost_usd is None:
            return f"{head}: no price known for this model, cost not estimated"
        head += f", at most ${self.cost_usd:.4f} before retries"
        if budget_usd is None:
            return f"{head}; no budget set"
        left = max(budget_usd - spent_usd, 0.0)
        if self.exceeds(left):
            return (f"{head}; WARNING: EXCEEDS the budget of ${budget_usd:g} (${left:.4f} left): the run will stop "
                    f"when the budget is reached")
        return f"{head}; within the budget of ${budget_usd:g} (${left:.4f} left)"


def plan_cost(teacher: str, model: str, new: list[TeacherRequest], cached: int, prices: PriceTable) -> CostPlan:
    """The ``CostPlan`` of the ``new`` (uncached, distinct) requests of a batch; ``cached`` were served."""
    tin = sum(estimate_tokens(r.system + r.prompt) for r in new)
    tout = sum(r.max_tokens for r in new)
    cost = prices.cost(model, tin, tout) if model in prices else None
    return CostPlan(teacher, len(new), cached, tin, tout, cost)


@dataclass
class RunSummary:
    """What one ``CachedTeacher`` did since it was created (this run only)."""
    teacher: str = ""
    requests: int = 0             # replies handed out
    cache_hits: int = 0           # served from the store (no cost)
    calls: int = 0                # backend attempts (each may be paid)
    succeeded: int = 0            # new successful calls stored
    failures: int = 0             # failed attempts stored
    retries: int = 0              # attempts that repeated a request after a failed one
    unresolved: int = 0           # requests still failed after every retry
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_usd: float | None = None
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        cap = f" of {self.budget_usd:g}" if self.budget_usd is not None else ""
        return (f"{self.teacher}: {self.requests} requests, {self.cache_hits} cache hits, {self.calls} calls "
                f"({self.succeeded} ok, {self.failures} failed attempts, {self.retries} retries, "
                f"{self.unresolved} unresolved), tokens {self.prompt_tokens} in / {self.completion_tokens} out, "
                f"cost ${self.cost_usd:.4f}{cap}, {self.wall_s:.1f} s")

    def progress_text(self, priced: bool) -> str:
        """The run so far, as ``CallProgress`` shows it after a batch's count: calls (ok, failed,
        retried), unresolved requests when there are any, tokens and, when ``priced``, USD spent
        (against the budget when one is set)."""
        parts = [f"calls {self.calls} ({self.succeeded} ok, {self.failures} failed, {self.retries} retried)"]
        if self.unresolved:
            parts.append(f"{self.unresolved} unresolved")
        parts.append(f"tokens {self.prompt_tokens} in / {self.completion_tokens} out")
        if priced:
            cap = f" of ${self.budget_usd:g} budget" if self.budget_usd is not None else " (no budget)"
            parts.append(f"${self.cost_usd:.4f} spent{cap}")
        return ", ".join(parts)


class CallProgress:
    """The live display of one batch's new calls: a text tqdm bar (``nesylib.progress.tqdm``) on
    stderr whose count is the batch's distinct new requests finished (answered, or given up after
    their retries) and whose tail is ``RunSummary.progress_text`` (the whole run so far), e.g.::

        teacher openai:gpt-4o-mini: 6/6 requests |##########| 00:04<00:00, calls 8 (6 ok, 2 failed,
        2 retried), tokens 2310 in / 1490 out, $0.0012 spent of $5 budget

    Every method is called with the teacher's accounting lock held, so threads update it in turn.
    The bar redraws at most every ``mininterval`` seconds while calls run and once more at close:
    its last line is the batch's final state.
    """

    BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} requests |{bar}| {elapsed}<{remaining}{postfix}"

    def __init__(self, summary: RunSummary, total: int, priced: bool, mininterval: float = 0.5):
        from nesylib.progress import tqdm

        self.summary, self.priced, self.mininterval = summary, priced, mininterval
        self._bar = tqdm(total=total, desc=f"teacher {summary.teacher}", bar_format=self.BAR_FORMAT,
                         mininterval=mininterval, leave=True)
        self._drawn = time.monotonic()

    def _tail(self) -> None:
        self._bar.set_postfix_str(self.summary.progress_text(self.priced), refresh=False)

    def attempt(self) -> None:
        """After each recorded attempt: new totals, redrawn when the last draw is old enough."""
        self._tail()
        now = time.monotonic()
        if now - self._drawn >= self.mininterval:
            self._bar.refresh()
            self._drawn = now

    def finished(self, n: int = 1) -> None:
        """``n`` requests of the batch are done (answered, or given up after their retries)."""
        if n:
            self._tail()
            self._bar.update(n)

    def close(self) -> None:
        self._tail()
        self._bar.close()


@dataclass
class _Pending:
    key: str
    request: TeacherRequest
    waiting: list[int] = field(default_factory=list)  # positions in the caller's batch
    reply: TeacherReply | None = None                  # the last attempt's reply


class CachedTeacher:
    """A Teacher that serves stored calls and makes, stores and accounts for the rest."""

    def __init__(self, backend, store: CallStore | None = None, *, concurrency: int = 8,
                 budget_usd: float | None = None, price_table: PriceTable | dict | None = None,
                 policy_retries: int | None = None, retry_backoff_s: float = 1.0, keep_prompts: bool = False,
                 max_backoff_s: float = 30.0, breaker_failures: int = 3, breaker_window_s: float = 120.0,
                 progress: bool = True):
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if policy_retries is None:
            policy_retries = getattr(backend, "max_retries", DEFAULT_RETRIES)
        if policy_retries < 0:
            raise ConfigError(f"policy_retries must be >= 0, got {policy_retries}")
        if breaker_failures < 1:
            raise ConfigError(f"breaker_failures must be >= 1, got {breaker_failures}")
        if retry_backoff_s < 0 or max_backoff_s < 0 or breaker_window_s <= 0:
            raise ConfigError(f"retry_backoff_s and max_backoff_s must be >= 0 and breaker_window_s > 0, got "
                              f"{retry_backoff_s}, {max_backoff_s}, {breaker_window_s}")
        self.backend = backend
        self.store = store if store is not None else CallStore(None)
        self.prices = price_table if isinstance(price_table, PriceTable) else PriceTable(price_table)
        self.model = getattr(backend, "model", backend.name)
        self.backend_kind = getattr(backend, "backend", backend.name.split(":", 1)[0])
        self.paid = bool(getattr(backend, "paid", False))
        if budget_usd is not None:
            if budget_usd < 0:
                raise ConfigError(f"budget_usd must be >= 0, got {budget_usd}")
            if self.paid and self.model not in self.prices:
                raise ConfigError(f"budget_usd={budget_usd} needs a price for model {self.model!r}: pass "
                                  "price_table={model: [usd_per_1M_input, usd_per_1M_output]}")
        self.budget_usd = budget_usd
        self.concurrency = concurrency if getattr(backend, "parallel", False) else 1
        self.batch_size = max(1, int(getattr(backend, "batch_size", 1)))
        self.policy_retries = policy_retries
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self.breaker_failures = breaker_failures
        self.breaker_window_s = breaker_window_s
        self.keep_prompts = keep_prompts
        self.progress = progress
        self._streak = 0                    # replies that never arrived, in a row (any reply resets it)
        self._streak_t0 = 0.0
        self._last_reply = float("-inf")    # when the backend last gave any reply (monotonic clock)
        self.summary = RunSummary(teacher=self.name, budget_usd=budget_usd)
        self._acct = threading.Lock()
        self._t0 = time.monotonic()

    @property
    def name(self) -> str:
        return self.backend.name

    def key(self, request: TeacherRequest) -> str:
        return call_key(self.backend_kind, self.model, request)

    # ----------------------------------------------------------------------------------- run
    def complete(self, requests: list[TeacherRequest]) -> list[TeacherReply]:
        """Replies in request order; stored successes are free, the rest are called and stored."""
        replies: list[TeacherReply | None] = [None] * len(requests)
        pending: dict[str, _Pending] = {}
        for i, req in enumerate(requests):
            k = self.key(req)
            rec = self.store.get(k)
            if rec is not None:
                replies[i] = TeacherReply(text=rec["text"], ok=True, prompt_tokens=rec.get("prompt_tokens", 0),
                                          completion_tokens=rec.get("completion_tokens", 0), cached=True,
                                          finish_reason=rec.get("finish_reason"))
                with self._acct:
                    self.summary.cache_hits += 1
            else:
                pending.setdefault(k, _Pending(k, req)).waiting.append(i)
        if self.paid and requests:  # the plan, before anything of this batch is paid for
            hits = len(requests) - sum(len(p.waiting) for p in pending.values())
            plan = plan_cost(self.name, self.model, [p.request for p in pending.values()], hits, self.prices)
            with self._acct:
                spent = self.summary.cost_usd
            print(plan.line(self.budget_usd, spent), flush=True)
        todo = list(pending.values())
        # first fatal error, budget stop or breaker trip of this batch; "stop" wakes retry waits;
        # "bar": the batch's progress display (none when the store answered everything)
        state: dict = {"abort": None, "stop": threading.Event(), "bar": None}
        if self.progress and todo:
            state["bar"] = CallProgress(self.summary, len(todo), priced=self.paid and self.model in self.prices)
        chunks = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        try:
            if self.concurrency > 1 and len(chunks) > 1:
                with ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher") as pool:
                    for fut in [pool.submit(self._run_chunk, c, state) for c in chunks]:
                        fut.result()
            else:
                for c in chunks:
                    self._run_chunk(c, state)
        finally:
            if state["bar"] is not None:
                with self._acct:
                    state["bar"].close()
        for p in todo:
            rep = p.reply or TeacherReply(text=None, ok=False, error="not attempted (run stopped)")
            for i in p.waiting:
                replies[i] = rep
        with self._acct:
            self.summary.requests += len(requests)
            self.summary.wall_s = time.monotonic() - self._t0
        if state["abort"] is not None:
            raise state["abort"]
        return replies  # type: ignore[return-value]

    def _abort(self, state: dict, error: Exception) -> None:
        with self._acct:
            state["abort"] = state["abort"] or error
        state["stop"].set()

    def _delay(self, left: list[_Pending], attempt: int) -> float:
        """Seconds before retry ``attempt``: the server's Retry-After, else jittered exponential backoff."""
        asked = [p.reply.retry_after_s for p in left if p.reply is not None and p.reply.retry_after_s is not None]
        if asked:
            return max(asked)
        return min(self.retry_backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * (1 - 0.25 * random.random())

    def _breaker(self, rep: TeacherReply, sent: float) -> TeacherUnreachable | None:
        """Feed one attempt (sent at ``sent``) to the circuit breaker; the error to stop with once it trips."""
        now = time.monotonic()
        with self._acct:
            if not rep.unreachable:
                self._streak, self._last_reply = 0, now
                return None
            if self._last_reply > sent:
                return None  # the server answered another call while this one was out: it is up
            if self._streak == 0:
                self._streak_t0 = now
            self._streak += 1
            n, age = self._streak, now - self._streak_t0
        if n < self.breaker_failures and not (n >= 2 and age >= self.breaker_window_s):
            return None
        endpoint = getattr(self.backend, "endpoint", None) or self.name
        return TeacherUnreachable(
            f"teacher endpoint {endpoint} is unreachable: {n} calls in a row got no reply (connection failed or "
            f"timed out) over {age:.1f} s; last error: {rep.error}. No new calls were started. Check that the "
            f"server is running and that base_url is right, then rerun: stored calls are not repeated.")

    def _run_chunk(self, chunk: list[_Pending], state: dict) -> None:
        left = list(chunk)
        for attempt in range(self.policy_retries + 1):
            if not left or state["abort"] is not None:
                break
            if attempt and state["stop"].wait(self._delay(left, attempt)):
                break  # the batch is stopping: start no new call
            if self.paid and self.budget_usd is not None:
                with self._acct:
                    over = self.summary.cost_usd >= self.budget_usd
                if over:
                    self._abort(state, BudgetExceeded(
                        f"budget of ${self.budget_usd:g} reached (spent ${self.summary.cost_usd:.4f} in this "
                        f"run); no new calls were started. Stored calls are still served: raise "
                        f"budget_usd to continue."))
                    break
            sent = time.monotonic()
            try:
                got = self.backend.complete([p.request for p in left])
                if len(got) != len(left):
                    raise TeacherError(f"backend {self.name} returned {len(got)} replies for {len(left)} requests")
            except TeacherError as e:
                for p in left:
                    p.reply = TeacherReply(text=None, ok=False, error=str(e))
                    self._record(p, p.reply, attempt, state["bar"])
                self._abort(state, e)
                break
            retry = []
            for p, rep in zip(left, got):
                if rep.ok and not (rep.text or "").strip():
                    rep = TeacherReply(text=None, ok=False, error="empty reply", prompt_tokens=rep.prompt_tokens,
                                       completion_tokens=rep.completion_tokens, finish_reason=rep.finish_reason)
                self._record(p, rep, attempt, state["bar"])
                p.reply = rep
                if not rep.ok:
                    retry.append(p)
                tripped = self._breaker(rep, sent)
                if tripped is not None:
                    self._abort(state, tripped)
            if state["bar"] is not None and len(retry) < len(left):
                with self._acct:
                    state["bar"].finished(len(left) - len(retry))
            left = retry
        with self._acct:
            gave_up = sum(1 for p in left if p.reply is not None and not p.reply.ok)
            self.summary.unresolved += sum(1 for p in left if p.reply is None or not p.reply.ok)
            if state["bar"] is not None:
                state["bar"].finished(gave_up)  # tried and failed to the end: done, and counted unresolved

    def _record(self, p: _Pending, rep: TeacherReply, attempt: int, bar: CallProgress | None = None) -> None:
        cost = self.prices.cost(self.model, rep.prompt_tokens, rep.completion_tokens) if self.paid else 0.0
        req = p.request
        rec = {"key": p.key, "backend": self.backend_kind, "model": self.model, "ok": bool(rep.ok),
               "text": rep.text if rep.ok else None, "error": None if rep.ok else (rep.error or "failed"),
               "finish_reason": rep.finish_reason, "prompt_tokens": rep.prompt_tokens,
               "completion_tokens": rep.completion_tokens, "cost_usd": cost, "attempt": attempt,
               "kind": req.kind, "uid": req.uid, "sample_index": req.sample_index, "sampling": req.sampling(),
               "system": req.system, "prompt_sha256": hashlib.sha256(req.prompt.encode("utf-8")).hexdigest()}
        if self.keep_prompts:
            rec["prompt"] = req.prompt
        self.store.put(rec)
        with self._acct:
            s = self.summary
            s.calls += 1
            s.succeeded += int(rep.ok)
            s.failures += int(not rep.ok)
            s.retries += int(attempt > 0)
            s.prompt_tokens += rep.prompt_tokens
            s.completion_tokens += rep.completion_tokens
            s.cost_usd += cost
            if bar is not None:
                bar.attempt()
