"""`FreezeProblem`: one planning instance, bound once and handed to a solver whole.

Both solvers (:mod:`tfcompile.planner.lp`, :mod:`tfcompile.planner.decompose`) need the same
things: the schedule's DAG, every action's duration with nothing frozen (``base``) and its
freezable weight-gradient part (``wpart``), the communication time, the stage cap, the
optional budget and the makespan tolerance. They travel together here instead of as a clump
of positional parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from tfcompile.planner import netflow
from tfcompile.schedules.actions import Schedule
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.profile import as_profile
from tfcompile.schedules.simulate import longest_path

#: Per-stage cap on the average freeze ratio (the TimelyFreeze paper's default). The one
#: definition: FreezeConfig, plan_freeze, FreezePlanner, the CLI and the run config use it.
DEFAULT_MAX_FREEZE_RATIO = 0.9

#: weight of the cost-weighted freezing ``sum W r`` against the makespan in the first solve
#: (dimensionless: both are times). Small enough that the weighted optimum almost always has
#: the minimal makespan (checked after every solve, with a fallback); large enough against
#: HiGHS's dual feasibility tolerance (1e-7) for any sensible time unit.
FREEZE_WEIGHT = 1e-3


def schedule_dag(schedule: Schedule | ScheduleDAG) -> ScheduleDAG:
    """The DAG of ``schedule``, its topological order computed natively where the network
    simplex library loads (the same order as Python's, 30-60x faster at 32x256)."""
    if isinstance(schedule, ScheduleDAG):
        return schedule
    return ScheduleDAG(schedule, topological_order=netflow.topological_order)


@dataclass(frozen=True)
class FreezeProblem:
    """Minimise the makespan of ``dag`` with durations ``base - wpart * r``, then the
    cost-weighted freezing ``sum wpart r``, for ``r`` in [0, 1] per freezable action, each
    stage's average ratio at most ``cap`` and (optionally) the frozen share of all W work at
    most ``budget``; ``tolerance`` is the relative slack on the minimal makespan allowed in
    the least-freezing solve. Durations are in ``unit``."""

    dag: ScheduleDAG
    base: np.ndarray = field(repr=False)
    wpart: np.ndarray = field(repr=False)
    comm: float
    cap: float
    budget: float | None = None
    tolerance: float = 1e-9
    unit: str = "ms"
    #: weight of the freezing term in the first (weighted) solve; see FREEZE_WEIGHT
    freeze_weight: float = FREEZE_WEIGHT

    @classmethod
    def bind(
        cls,
        schedule: Schedule | ScheduleDAG,
        costs: Any,
        max_freeze_ratio: float,
        budget: float | None = None,
        tolerance: float = 1e-9,
    ) -> FreezeProblem:
        """The problem of ``schedule`` under ``costs`` (CostProfile, dict or JSON path)."""
        dag = schedule_dag(schedule)
        profile = as_profile(costs)
        base, wpart, comm = dag.bind(profile)
        return cls(
            dag, base, wpart, comm, float(max_freeze_ratio), budget, tolerance, profile.unit,
            FREEZE_WEIGHT,  # read now, so that a test can change the module's value
        )  # fmt: skip

    @cached_property
    def scale(self) -> float:
        """The power of two just above the longest action or communication time (1 when
        everything is 0): the unit the
        solvers work in. The problem is homogeneous in time, but HiGHS's and the network
        simplex's tolerances are absolute, so costs of 1e-9 ms or 1e12 ms would otherwise
        give worse plans or solver failures."""
        largest = max(float(np.max(self.base, initial=0.0)), float(self.comm))
        # a power of two: dividing by it is exact, so a plan in ms and one in 2^k ms agree
        return math.ldexp(1.0, math.frexp(largest)[1]) if largest > 0.0 else 1.0

    def normalised(self) -> FreezeProblem:
        """The same problem with every time divided by :attr:`scale` (its plan has the same
        ratios; makespans scale back by :attr:`scale`)."""
        s = self.scale
        return replace(self, base=self.base / s, wpart=self.wpart / s, comm=self.comm / s)

    @cached_property
    def freezable(self) -> np.ndarray:
        """Actions whose freezing saves time (freezable, with a W part > 0)."""
        return self.dag.freezable & (self.wpart > 0)

    @cached_property
    def fz_nodes(self) -> np.ndarray:
        """Node ids of :attr:`freezable`; a solution gives one ratio per entry."""
        return np.flatnonzero(self.freezable)

    @property
    def trivial(self) -> bool:
        """Nothing may or can be frozen: the plan is the unfrozen schedule."""
        return self.cap == 0.0 or self.budget == 0.0 or not np.any(self.freezable)

    def makespan(self, durations: np.ndarray) -> float:
        """Makespan of the DAG with these per-node durations (native where it loads)."""
        if netflow.available():
            return netflow.Makespan(self.dag)(durations, self.comm)
        return float(longest_path(self.dag, durations, self.comm)[1].max())

    @cached_property
    def baseline(self) -> float:
        """The makespan with nothing frozen."""
        return self.makespan(self.base)

    @cached_property
    def all_frozen(self) -> float:
        """The makespan with everything frozen: a lower bound of the optimum."""
        return self.makespan(self.base - self.wpart)

    def stage_counts(self) -> np.ndarray:
        """Freezable actions per stage (the caps bound ``cap * count``)."""
        dag = self.dag
        return np.bincount(dag.stage[dag.freezable], minlength=dag.schedule.num_stages)

    def frozen_work_bound(self) -> float:
        """The budget as a bound on ``sum wpart r`` (only meaningful with a budget)."""
        assert self.budget is not None
        return self.budget * float(np.sum(self.wpart[self.dag.freezable]))

    def bound(self, min_makespan: float) -> float:
        """The makespan a plan may have given the minimal one (the tolerance's slack)."""
        return min_makespan * (1 + self.tolerance) + 1e-12


@dataclass
class Solution:
    """What a solver returns: one ratio per :attr:`FreezeProblem.fz_nodes`, the minimal
    makespan it found (the plan is checked against it by simulation), and how it got there.
    ``solve_seconds`` leaves out the model building that the plan reports as build time."""

    ratios: np.ndarray
    min_makespan: float
    status: str
    num_rows: int
    num_cols: int
    solve_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
