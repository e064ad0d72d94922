"""Measured profiles -> the LP's cost profile (the paper's linear time model), and when to
re-plan.

A freezable action takes d(r) = w_max - r (w_max - w_min): w_max is the backward measured with
nothing frozen, w_min the backward measured with everything frozen (input gradients still run,
except on a first stage whose truncated backward can take ~0). The planner's profile states
this as I = w_min and W = w_max - w_min, so that its B(r) = I + (1 - r) W is d(r).
Every profile here is a :class:`~tfcompile.schedules.profile.CostProfile`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from tfcompile.schedules.profile import CostProfile


def backward_time(stage: Mapping[str, float]) -> float:
    """Total backward time of a measured stage entry: input-grad plus weight-grad parts."""
    return float(stage["I"]) + float(stage["W"])


def planner_profile(
    wmax: CostProfile, wmin: CostProfile, w_only: Collection[int] = ()
) -> CostProfile:
    """Combine the nothing-frozen and everything-frozen windows into the LP's profile.

    F comes from the nothing-frozen window (freezing does not change it), I = w_min,
    W = w_max - w_min clipped at 0 (noise can make a stage look slower when frozen), and
    communication from the nothing-frozen window.

    ``w_only``: stages whose backward truncates when everything is frozen (no input gradient,
    e.g. token ids; w_min ~ 0) but whose policy freezes groups in any order: there freezing a
    ratio r skips r of the weight-gradient regions only, the input-gradient chain still runs
    to the earliest unfrozen group, so the linear model between w_max and the truncated w_min
    would credit savings that never happen (measured on a 1F1B token stage at r = 0.37: the
    backward took 12.5 ms against 8.0 ms predicted that way). Those stages take I and W as
    measured in the nothing-frozen window.
    """
    stages = []
    for stage, (full, frozen) in enumerate(zip(wmax.stages, wmin.stages, strict=True)):
        if stage in w_only:
            stages.append({"F": float(full["F"]), "I": float(full["I"]), "W": float(full["W"])})
            continue
        w_max = backward_time(full)
        w_min = backward_time(frozen)
        stages.append({"F": float(full["F"]), "I": w_min, "W": max(w_max - w_min, 0.0)})
    return CostProfile(stages, wmax.comm, wmax.unit)


def refresh_profile(
    planned: CostProfile,
    measured: CostProfile,
    mean_ratio: Sequence[float],
    predicted_backward: Sequence[float] | None = None,
) -> CostProfile:
    """A steady-state measurement folded into the planned profile.

    In steady state stage s freezes an average ratio r_s, so its backward should take
    I + (1 - r_s) W (or ``predicted_backward[s]`` when the caller knows better, e.g. token
    stages whose fully frozen actions skip the whole backward). The measured backward over
    the predicted one scales both I and W (the shape w_min / w_max is kept: it cannot be
    re-observed without unfreezing everything); F and communication are taken as measured.
    """
    stages = []
    for s, (old, new, ratio) in enumerate(
        zip(planned.stages, measured.stages, mean_ratio, strict=True)
    ):
        predicted = float(old["I"]) + (1.0 - ratio) * float(old["W"])
        if predicted_backward is not None:
            predicted = float(predicted_backward[s])
        scale = backward_time(new) / predicted if predicted > 0.0 else 1.0
        stages.append(
            {"F": float(new["F"]), "I": float(old["I"]) * scale, "W": float(old["W"]) * scale}
        )
    return CostProfile(stages, measured.comm, measured.unit)


@dataclass(frozen=True)
class Drift:
    """How far the plan in force moved under a refreshed profile."""

    current: float  #: predicted step time of the plan in force under the refreshed profile
    reference: float  #: what it was predicted at when last checked
    relative: float

    def replan(self, tolerance: float) -> bool:
        """Solve again only when the prediction moved by more than ``tolerance``: an LP solve
        on every re-measurement would chase timing noise."""
        return not self.relative <= tolerance  # NaN (a broken measurement) re-plans


def drift(current: float, reference: float | None) -> Drift:
    """The relative change of the plan's predicted step time (0 without a reference)."""
    ref = current if reference is None or reference == 0 else reference
    relative = abs(current - ref) / ref if ref > 0 else 0.0
    return Drift(current, ref, relative)


def adopt(new_makespan: float, current: float, min_gain: float) -> bool:
    """A new plan replaces the one in force only if predicted ``min_gain`` faster: switching
    groups costs convergence, a marginal gain does not pay for it."""
    return new_makespan < current * (1.0 - min_gain)
