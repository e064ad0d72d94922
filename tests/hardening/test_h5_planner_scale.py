"""Kind 5: the planner does not care about units. The LP is homogeneous in time, so scaling
every cost by c scales every makespan by c and leaves the ratios alone, from 1e-12 to 1e12;
non-finite costs are refused with a CostError."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tfcompile.errors import CostError
from tfcompile.planner import netflow, plan_freeze
from tfcompile.schedules import build
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.profile import CostProfile
from tfcompile.schedules.simulate import simulate

SCALES = [1e-12, 1e-9, 1e-7, 1e-3, 1.0, 1e3, 1e7, 1e12]
METHODS = [
    "lp",
    pytest.param(
        "decomposition",
        marks=pytest.mark.skipif(not netflow.available(), reason="no C compiler for netflow"),
    ),
]


def profile(p: int, scale: float) -> CostProfile:
    stages = [{"F": 2.0, "I": 2.0, "W": 1.0} for _ in range(p)]
    stages[0] = {"F": 2.6, "I": 2.2, "W": 1.4}
    stages[-1] = {"F": 3.0, "I": 2.8, "W": 1.2}
    return CostProfile([{k: v * scale for k, v in s.items()} for s in stages], 0.2 * scale)


def brute_force(sched, prof, cap, levels=(0.0, 0.5, 1.0)) -> float:
    """Every ratio on a grid within the per-stage cap; the best simulated makespan."""
    dag = ScheduleDAG(sched)
    keys = sorted(
        {(int(dag.stage[v]), int(dag.microbatch[v])) for v in np.flatnonzero(dag.freezable)}
    )
    m, best = sched.num_microbatches, np.inf
    for combo in itertools.product(levels, repeat=len(keys)):
        ratios = dict(zip(keys, combo))
        if all(
            sum(ratios[(s, mb)] for mb in range(m)) <= cap * m + 1e-12
            for s in range(sched.num_stages)
        ):
            best = min(best, simulate(dag, prof, ratios).makespan)
    return best


@pytest.mark.parametrize("name", ["GPipe", "1F1B", "Interleaved1F1B", "ZBH1", "ZBV"])
@pytest.mark.parametrize("method", METHODS)
def test_same_plan_at_every_scale(name, method):
    sched = build(name, 4, 8)
    reference = plan_freeze(sched, profile(4, 1.0), max_freeze_ratio=0.5, method=method)
    assert reference.makespan < reference.baseline_makespan, "the instance must freeze"
    for scale in SCALES:
        plan = plan_freeze(sched, profile(4, scale), max_freeze_ratio=0.5, method=method)
        assert plan.makespan / scale == pytest.approx(reference.makespan, rel=1e-7), scale
        assert plan.baseline_makespan / scale == pytest.approx(reference.baseline_makespan)
        # the second objective: least cost-weighted freezing (ties between equally good
        # ratio sets may break differently once the costs are rounded differently)
        assert frozen_work(plan, 4) == pytest.approx(frozen_work(reference, 4), rel=1e-6)
        assert max(plan.stage_average()) <= 0.5 + 1e-9


def frozen_work(plan, p: int) -> float:
    w = [s["W"] for s in profile(p, 1.0).to_dict()["stages"]]
    return sum(w[s] * r for (s, _), r in plan.ratios.items())


@pytest.mark.parametrize("name", ["1F1B", "ZBV"])
@pytest.mark.parametrize("scale", [1e-12, 1e-9, 1e12])
def test_matches_brute_force_at_extreme_scales(name, scale):
    sched = build(name, 2, 2)
    prof = profile(2, scale)
    plan = plan_freeze(sched, prof, max_freeze_ratio=0.5)
    best = brute_force(sched, prof, 0.5)
    assert plan.makespan <= best * (1 + 1e-7)
    assert plan.makespan == pytest.approx(best, rel=1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_costs_refused(bad):
    sched = build("1F1B", 2, 2)
    with pytest.raises(CostError, match="finite time >= 0"):
        plan_freeze(sched, {"stages": [{"F": 1, "I": 1, "W": bad}, {"F": 1, "I": 1, "W": 1}]})
    with pytest.raises(CostError, match="comm must be a finite time"):
        plan_freeze(sched, {"stages": [{"F": 1, "I": 1, "W": 1}] * 2, "comm": bad})
