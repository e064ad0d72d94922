"""AutoFreeze: freeze converged layers front to back (Liu, Agarwal, Venkataraman, 2021).

Decision rule, as published, with parameter groups as the layers:
- Every step, record each group's gradient L2 norm; an evaluation interval is
  ``autofreeze_every`` steps. The interval's norm of a group is the mean of its per-step norms
  (the mean rather than the sum so that steps where a hybrid froze the group do not bias it).
- At the end of an interval the gradient-norm change of a group is
  |n_k - n_{k-1}| / n_{k-1}, with n_k this interval's norm and n_{k-1} the previous one.
- The threshold is the ``percentile`` (50th) of the changes of the layers still training.
  Walking the layers front to back, starting right after the frozen prefix, each layer whose
  change is below the threshold is frozen, until the first one that is not: only a prefix is
  ever frozen, and freezing is monotonic (nothing is unfrozen). The last layer still training
  can never be below the percentile of itself alone, so some layer always trains.
Standalone, AutoFreeze ignores the LP, the phases and the freeze cap. In the
``timely+autofreeze`` hybrid only the changes are used: they order the candidates (smallest
change first) and the LP ratio decides how many are frozen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

Key = Hashable
log = logging.getLogger("tfcompile.freeze")


class AutoFreeze:
    """Gradient-norm-change tracking; optionally (``freezes=True``) AutoFreeze's own freezing."""

    def __init__(self, percentile: float, *, freezes: bool) -> None:
        self.percentile = percentile
        self.freezes = freezes
        self._sum: dict[Key, float] = {}
        self._count: dict[Key, int] = {}
        self.previous: dict[Key, float] = {}
        self.change: dict[Key, float] = {}
        self.frozen_prefix = 0  # number of layers (in global order) frozen so far
        #: measurements skipped because they were not finite (an inf/NaN gradient norm: a
        #: step the optimizer skips, as GradScaler does, must not decide anything)
        self.skipped_nonfinite = 0

    def observe(self, norms: Mapping[Key, float]) -> None:
        """Add one step's gradient norms (only groups that received a gradient).

        A step with a non-finite norm in any group is skipped as a whole (logged, counted in
        ``skipped_nonfinite``): one inf norm would otherwise make the interval's changes NaN,
        and every comparison with a NaN percentile reads as "converged"."""
        bad = sorted(str(k) for k, v in norms.items() if not math.isfinite(float(v)))
        if bad:
            self.skipped_nonfinite += 1
            log.warning(
                "freeze: autofreeze skips a step with non-finite gradient norms in %s", bad[:3]
            )
            return
        for key, norm in norms.items():
            self._sum[key] = self._sum.get(key, 0.0) + float(norm)
            self._count[key] = self._count.get(key, 0) + 1

    def interval_norms(self) -> dict[Key, float]:
        """Mean per-step gradient norm of each group over the current interval."""
        return {k: self._sum[k] / self._count[k] for k in self._sum if self._count[k] > 0}

    def end_interval(self, norms: Mapping[Key, float] | None = None) -> dict[Key, float]:
        """Close the interval: update the changes from ``norms`` (default: the local ones)."""
        current = dict(self.interval_norms() if norms is None else norms)
        for key, norm in current.items():
            if not math.isfinite(float(norm)):  # gathered from a rank that saw one
                self.skipped_nonfinite += 1
                log.warning("freeze: autofreeze skips a non-finite interval norm of %s", key)
                continue
            before = self.previous.get(key)
            if before is not None and before > 0.0:
                self.change[key] = abs(norm - before) / before
            self.previous[key] = norm
        self._sum.clear()
        self._count.clear()
        return dict(self.change)

    def advance_prefix(self, order: Sequence[Key]) -> int:
        """Freeze further layers front to back (AutoFreeze's rule); returns the prefix length."""
        if not self.freezes:
            return self.frozen_prefix
        training = [
            k for k in order[self.frozen_prefix :] if math.isfinite(self.change.get(k, math.nan))
        ]
        if not training:
            return self.frozen_prefix
        threshold = float(np.percentile([self.change[k] for k in training], self.percentile))
        for key in order[self.frozen_prefix :]:
            value = self.change.get(key)
            if value is None or not math.isfinite(value) or value >= threshold:
                break
            self.frozen_prefix += 1
        return self.frozen_prefix

    def frozen(self, order: Sequence[Key]) -> set[Key]:
        """Layers frozen now: the first ``frozen_prefix`` of ``order``."""
        return set(order[: self.frozen_prefix])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly."""
        return {
            "sum": list(self._sum.items()),
            "count": list(self._count.items()),
            "previous": list(self.previous.items()),
            "change": list(self.change.items()),
            "frozen_prefix": self.frozen_prefix,
            "skipped_nonfinite": self.skipped_nonfinite,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

        def items(name: str) -> dict[Key, Any]:
            return {(tuple(k) if isinstance(k, list) else k): v for k, v in state[name]}

        self._sum = items("sum")
        self._count = items("count")
        self.previous = items("previous")
        self.change = items("change")
        self.frozen_prefix = int(state["frozen_prefix"])
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
