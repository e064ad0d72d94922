"""Measured profiles -> the LP's cost profile (the paper's linear time model).

A freezable action takes d(r) = w_max - r (w_max - w_min): w_max is the backward measured with
nothing frozen, w_min the backward measured with everything frozen (input gradients still run,
except on a first stage whose truncated backward can take ~0). The planner's profile states
this as I = w_min and W = w_max - w_min, so that its B(r) = I + (1 - r) W is d(r).
Profiles are plain dicts in the shape of ``CostProfile.from_dict``:
``{"stages": [{"F": .., "I": .., "W": ..}, ...], "comm": .., ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Profile = dict[str, Any]


def backward_time(stage: Mapping[str, float]) -> float:
    """Total backward time of a measured stage entry: input-grad plus weight-grad parts."""
    return float(stage["I"]) + float(stage["W"])


def planner_profile(wmax: Mapping[str, Any], wmin: Mapping[str, Any]) -> Profile:
    """Combine the nothing-frozen and everything-frozen windows into the LP's profile.

    F comes from the nothing-frozen window (freezing does not change it), I = w_min,
    W = w_max - w_min clipped at 0 (noise can make a stage look slower when frozen), and
    communication from the nothing-frozen window.
    """
    stages = []
    for full, frozen in zip(wmax["stages"], wmin["stages"], strict=True):
        w_max = backward_time(full)
        w_min = backward_time(frozen)
        stages.append({"F": float(full["F"]), "I": w_min, "W": max(w_max - w_min, 0.0)})
    return _with_extras(wmax, stages)


def refresh_profile(
    planned: Mapping[str, Any], measured: Mapping[str, Any], mean_ratio: Sequence[float]
) -> Profile:
    """A steady-state measurement folded into the planned profile.

    In steady state stage s freezes an average ratio r_s, so its backward should take
    I + (1 - r_s) W. The measured backward over the predicted one scales both I and W (the
    shape w_min / w_max is kept: it cannot be re-observed without unfreezing everything);
    F and communication are taken as measured.
    """
    stages = []
    for old, new, ratio in zip(planned["stages"], measured["stages"], mean_ratio, strict=True):
        predicted = float(old["I"]) + (1.0 - ratio) * float(old["W"])
        scale = backward_time(new) / predicted if predicted > 0.0 else 1.0
        stages.append(
            {"F": float(new["F"]), "I": float(old["I"]) * scale, "W": float(old["W"]) * scale}
        )
    return _with_extras(measured, stages)


def _with_extras(source: Mapping[str, Any], stages: list[dict[str, float]]) -> Profile:
    profile: Profile = {"stages": stages, "comm": float(source.get("comm", 0.0))}
    if "unit" in source:
        profile["unit"] = source["unit"]
    return profile
