"""The phase machine of planned freezing: a pure function of the step and the config.

Every rank computes the same phase for the same step without talking to the others, because
the boundaries depend only on :class:`~tfcompile.freeze.config.FreezeConfig`::

    warmup -> monitor_wmax -> monitor_wmin -> ramp -> steady

Baselines have the single phase ``baseline``; ``policy="none"`` has ``off``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tfcompile.freeze.config import FreezeConfig

WARMUP = "warmup"
MONITOR_WMAX = "monitor_wmax"
MONITOR_WMIN = "monitor_wmin"
RAMP = "ramp"
STEADY = "steady"
BASELINE = "baseline"
OFF = "off"


@dataclass(frozen=True)
class Phases:
    """Phase boundaries of one run, taken from its config once."""

    policy: str
    uses_plan: bool
    warmup_steps: int
    monitor_steps: int
    ramp_steps: int
    check_every: int

    @classmethod
    def of(cls, config: FreezeConfig) -> Phases:
        """The boundaries ``config`` gives; a pinned plan has no monitoring windows."""
        return cls(
            config.policy,
            config.uses_plan,
            config.warmup_steps,
            0 if config.pinned else config.monitor_steps,
            config.ramp_steps,
            config.check_every,
        )

    @property
    def wmax_start(self) -> int:
        """First step of the nothing-frozen measurement window."""
        return self.warmup_steps

    @property
    def wmin_start(self) -> int:
        """First step of the everything-frozen window; w_max is measured here."""
        return self.wmax_start + self.monitor_steps

    @property
    def ramp_start(self) -> int:
        """First step of the ramp; w_min is measured and the plan made here."""
        return self.wmin_start + self.monitor_steps

    @property
    def steady_start(self) -> int:
        return self.ramp_start + self.ramp_steps

    def at(self, step: int) -> str:
        """The phase of ``step``."""
        if self.policy == "none":
            return OFF
        if not self.uses_plan:
            return BASELINE
        if step < self.wmax_start:
            return WARMUP
        if step < self.wmin_start:
            return MONITOR_WMAX
        if step < self.ramp_start:
            return MONITOR_WMIN
        if step < self.steady_start:
            return RAMP
        return STEADY

    def ramp_fraction(self, step: int) -> float:
        """Share of the planned ratios in force at ``step``: k / K at the k-th of the ramp's
        K = ceil(ramp_steps / check_every) decision steps, so the ratio changes only where
        the groups may change."""
        if step >= self.steady_start:
            return 1.0
        decisions = math.ceil(self.ramp_steps / self.check_every)
        done = (step - self.ramp_start) // self.check_every + 1
        return min(1.0, done / decisions)


def wmin_microbatches(step: int, k: int, num_microbatches: int) -> list[int]:
    """Microbatches frozen whole at ``step`` of the w_min window: all (the paper, ``k <= 0``
    or ``k >= M``), or ``k`` rotating ones so that training goes on meanwhile."""
    M = num_microbatches
    if k <= 0 or k >= M:
        return list(range(M))
    return sorted({(step * k + j) % M for j in range(k)})
