"""APF: adaptive parameter freezing by parameter stability (Chen et al., ICDCS 2021).

Decision rule, as published, applied per parameter group instead of per scalar:
- At every check (every ``check_every`` steps) the update of each active group since the
  previous check, delta, feeds two exponential moving averages with coefficient ``ema``
  (0.99): E = ema * E + (1 - ema) * delta and A = ema * A + (1 - ema) * |delta|.
- The effective perturbation is P = |E| / A (1 when updates all point one way, near 0 when
  they cancel out: the parameter oscillates around a stable value). For a group we take
  P = sum|E| / sum A over its elements, i.e. the per-scalar rule weighted by update size.
  A group whose parameters did not move at all has P = 0.
- P < ``threshold`` (0.05): the group is stable; its freezing period grows additively by one
  check interval and it is frozen (no weight gradient, in every microbatch) for that period.
  Otherwise the period halves (multiplicative decrease; TCP-style AIMD).
- When the period ends the group is unfrozen (APF unfreezes) and is checked again only after
  it has trained for one full interval.
Standalone, APF ignores the LP, the phases and the freeze cap. In the ``timely+apf`` hybrid
only P is used: it orders the candidates (most stable first) and nothing else is frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Key = Hashable
log = logging.getLogger("tfcompile.freeze")


@dataclass
class _GroupState:
    snapshot: torch.Tensor | None = None
    ema_delta: torch.Tensor | None = None
    ema_abs: torch.Tensor | None = None
    stability: float | None = None
    period: int = 0  # freezing period, in check intervals
    frozen_until: int = 0  # first step at which the group trains again
    checked_at: int = -1  # step of the last check that saw the group active


class APF:
    """Per-group stability tracking; optionally (``freezes=True``) APF's own freezing."""

    def __init__(self, ema: float, threshold: float, check_every: int, *, freezes: bool) -> None:
        self.ema = ema
        self.threshold = threshold
        self.check_every = check_every
        self.freezes = freezes
        self.groups: dict[Key, _GroupState] = {}
        #: checks skipped because a group's parameters were not finite (NaN/inf values give a
        #: NaN perturbation that would flip the group between stable and not at random)
        self.skipped_nonfinite = 0

    def check(self, step: int, params: Mapping[Key, Sequence[torch.Tensor]]) -> None:
        """Run one APF check at ``step`` on the current parameter values of every group."""
        for key, tensors in params.items():
            state = self.groups.setdefault(key, _GroupState())
            if step < state.frozen_until:
                continue  # frozen: it did not move, nothing to learn
            flat = _flatten(tensors)
            if not bool(torch.isfinite(flat).all()):
                self.skipped_nonfinite += 1
                log.warning(
                    "freeze: apf skips the check of %s at step %d: non-finite parameters",
                    key,
                    step,
                )
                continue  # the snapshot stays the last finite one
            trained_full_interval = (
                state.snapshot is not None and state.frozen_until <= step - self.check_every
            )
            if trained_full_interval:
                self._update(step, state, flat - state.snapshot)
            state.snapshot = flat

    def _update(self, step: int, state: _GroupState, delta: torch.Tensor) -> None:
        if state.ema_delta is None or state.ema_abs is None:
            state.ema_delta = torch.zeros_like(delta)
            state.ema_abs = torch.zeros_like(delta)
        state.ema_delta.mul_(self.ema).add_(delta, alpha=1.0 - self.ema)
        state.ema_abs.mul_(self.ema).add_(delta.abs(), alpha=1.0 - self.ema)
        denominator = float(state.ema_abs.sum())
        numerator = float(state.ema_delta.abs().sum())
        state.stability = numerator / denominator if denominator > 0.0 else 0.0
        state.checked_at = step
        if not self.freezes:
            return
        if state.stability < self.threshold:
            state.period += 1
            state.frozen_until = step + state.period * self.check_every
        else:
            state.period //= 2

    def stability(self) -> dict[Key, float | None]:
        """Effective perturbation P per group (None before its first full check)."""
        return {key: state.stability for key, state in self.groups.items()}

    def frozen(self, step: int) -> set[Key]:
        """Groups APF keeps frozen at ``step`` (always empty when ``freezes`` is False)."""
        return {key for key, state in self.groups.items() if step < state.frozen_until}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors are cloned)."""
        entries = []
        for key, s in self.groups.items():
            entries.append(
                {
                    "key": key,
                    "snapshot": _clone(s.snapshot),
                    "ema_delta": _clone(s.ema_delta),
                    "ema_abs": _clone(s.ema_abs),
                    "stability": s.stability,
                    "period": s.period,
                    "frozen_until": s.frozen_until,
                    "checked_at": s.checked_at,
                }
            )
        return {"groups": entries, "skipped_nonfinite": self.skipped_nonfinite}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.groups = {}
        self.skipped_nonfinite = int(state.get("skipped_nonfinite", 0))
        for entry in state["groups"]:
            key = entry["key"]
            key = tuple(key) if isinstance(key, list) else key
            self.groups[key] = _GroupState(
                snapshot=_clone(entry["snapshot"]),
                ema_delta=_clone(entry["ema_delta"]),
                ema_abs=_clone(entry["ema_abs"]),
                stability=entry["stability"],
                period=int(entry["period"]),
                frozen_until=int(entry["frozen_until"]),
                checked_at=int(entry["checked_at"]),
            )


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0)
    # float32 on the parameters' own device: no host copy at every check
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()
