"""FreezeOut: a fixed per-layer freezing schedule (Brock, Lim, Ritchie, Weston, 2017).

Decision rule, as published, with parameter groups (in global forward order) as the layers:
layer i of L has freeze time t_i = g(t_0 + (1 - t_0) * i / (L - 1)) as a fraction of training,
where g is the schedule function (linear x, squared x^2, cubic x^3; the paper's best is cubic
with t_0 = 0.8 before cubing, so the first layer stops at 51% of training) and the last layer
gets t = 1 (never frozen). Layer i is frozen from step round(t_i * total_steps) on. FreezeOut
also anneals each layer's learning rate to zero by then (cosine) and, "scaled", multiplies
its initial rate by 1 / t_i; the optimizer belongs to the user, so :meth:`lr_factor` returns
that factor for the user's param groups instead of touching the optimizer.
Standalone, FreezeOut ignores the LP, the phases and the freeze cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

Key = Hashable

SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "squared": lambda x: x**2,
    "cubic": lambda x: x**3,
}


class FreezeOut:
    """Per-layer freeze times from t_0, the schedule function and the training length."""

    def __init__(self, order: Sequence[Key], t0: float, schedule: str, total_steps: int) -> None:
        self.order = list(order)
        self.total_steps = total_steps
        scale = SCHEDULES[schedule]
        last = len(self.order) - 1
        self.fraction: dict[Key, float] = {}
        for i, key in enumerate(self.order):
            self.fraction[key] = 1.0 if last <= 0 else scale(t0 + (1.0 - t0) * i / last)
        self.freeze_step: dict[Key, int] = {
            key: round(f * total_steps) for key, f in self.fraction.items()
        }

    def frozen(self, step: int) -> set[Key]:
        """Layers whose freeze time has passed at ``step`` (the last layer never is)."""
        return {k for k, s in self.freeze_step.items() if self.fraction[k] < 1.0 and step >= s}

    def lr_factor(self, key: Key, step: int, *, scaled: bool = True) -> float:
        """FreezeOut's learning-rate multiplier of ``key`` at ``step`` (cosine to zero)."""
        horizon = self.fraction[key] * self.total_steps
        progress = min(step / horizon, 1.0) if horizon > 0 else 1.0
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return factor / self.fraction[key] if scaled and self.fraction[key] > 0 else factor
