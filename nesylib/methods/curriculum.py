"""SKIntern's curriculum: how much knowledge and how many demos each stage keeps (method.md §4.3).

Stages run t = 0..T. Stage 0 shows the full knowledge and ``max_demos`` demonstrations; stage T
shows neither, so its prompt is the inference prompt P-STD (D17). Between them both decay with
the same shape ``decay(t)``:

    linear       1 - t/T                          the paper's schedule (D15); with T=6 and
                                                  max_demos=6 it gives n_t = 6 - t as in the code
    exponential  (2^(T-t) - 1) / (2^T - 1)        fast early decay: about half the knowledge is
                                                  gone after one stage; exactly 1 at t=0, 0 at t=T
    step         1 while t < T/2, then 0          an abrupt switch halfway: an ablation showing
                                                  whether a gradual decay matters at all

    keep_ratio(t) = decay(t)                      fraction of knowledge words kept (compression)
    n_demos(t)    = round_half_up(max_demos * decay(t))

The training budget (the Std-CoT 10-epoch step count, ``nesylib.training.config.steps_for``) is split over
the stages by ``steps_per_stage`` (D17).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nesylib.errors import ConfigError

KINDS = ("linear", "exponential", "step")


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); a schedule should not wobble.
    return int(math.floor(x + 0.5 + 1e-9))


@dataclass(frozen=True)
class Schedule:
    """Decay schedule over stages 0..T; see the module docstring for the formulas."""

    T: int = 6
    kind: str = "linear"
    max_demos: int = 6

    def __post_init__(self):
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 1:
            raise ConfigError(f"Schedule parameter T must be an integer >= 1, got {self.T!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"Schedule parameter kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.max_demos, bool) or not isinstance(self.max_demos, int) or self.max_demos < 0:
            raise ConfigError(f"Schedule parameter max_demos must be an integer >= 0, got {self.max_demos!r}")

    @property
    def stages(self) -> range:
        """The stage indices 0..T (T+1 stages)."""
        return range(self.T + 1)

    def _check(self, t) -> int:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.T:
            raise ConfigError(f"stage t must be an integer in 0..{self.T}, got {t!r}")
        return t

    def decay(self, t: int) -> float:
        """The schedule's shape at stage t: 1 at t=0, 0 at t=T, non-increasing in between."""
        t, T = self._check(t), self.T
        if self.kind == "linear":
            return 1.0 - t / T
        if self.kind == "exponential":
            return (2.0 ** (T - t) - 1.0) / (2.0 ** T - 1.0)
        return 1.0 if t < T / 2 else 0.0

    def keep_ratio(self, t: int) -> float:
        """Fraction ρ_t of knowledge words kept at stage t (the compression target)."""
        return self.decay(t)

    def n_demos(self, t: int) -> int:
        """Number of demonstrations n_t shown at stage t."""
        return _round_half_up(self.max_demos * self.decay(t))

    def table(self) -> list[dict]:
        """One row per stage (stage, keep_ratio, n_demos): ready for ``pandas.DataFrame``."""
        return [{"stage": t, "keep_ratio": round(self.keep_ratio(t), 4), "n_demos": self.n_demos(t)}
                for t in self.stages]


def steps_per_stage(total_steps: int, T: int) -> list[int]:
    """Split ``total_steps`` optimiser steps evenly over the T+1 stages; the remainder goes last (D17)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"T must be an integer >= 1, got {T!r}")
    n = T + 1
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < n:
        raise ConfigError(f"total_steps must be an integer >= the number of stages ({n}) so that every "
                          f"stage trains at least one step, got {total_steps!r}")
    base = total_steps // n
    return [base] * (n - 1) + [total_steps - base * (n - 1)]

