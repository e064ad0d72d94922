"""Freeze planning: `plan_freeze`, `FreezePlanner` and the `FreezePlan` they return.

Given a schedule and a cost profile, choose a freeze ratio ``r[s, m]`` in [0, 1] for every
freezable action (B on full-backward schedules, W on split ones) so that the step's makespan
is minimal, then - with the makespan held within a small tolerance - so that the
cost-weighted freezing ``sum W[s, m] r[s, m]`` is minimal. This module binds the
:class:`~tfcompile.planner.problem.FreezeProblem`, picks the solver (one HiGHS LP,
:mod:`tfcompile.planner.lp`, or the decomposition, :mod:`tfcompile.planner.decompose`) and
checks the solver's ratios by simulating the full DAG. Measurements: docs/planner.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfcompile.errors import PlanError
from tfcompile.planner import decompose, lp, netflow
from tfcompile.planner.lp import WarmStart
from tfcompile.planner.problem import (
    DEFAULT_MAX_FREEZE_RATIO,
    FreezeProblem,
    Solution,
    schedule_dag,
)
from tfcompile.schedules.actions import Schedule
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.simulate import Timeline, timeline_from_arrays

#: ``method="auto"`` decomposes from this many freezable actions up; below, one LP solves in
#: a few ms and is measured slightly faster (4 stages x 8 microbatches: 4 vs 6 ms)
AUTO_DECOMPOSE_MIN = 200

METHODS = ("auto", "lp", "decomposition")


@dataclass
class FreezePlan:
    """Result of :func:`plan_freeze`."""

    schedule: Schedule
    ratios: dict[tuple[int, int], float]
    makespan: float
    baseline_makespan: float
    status: str
    solve_seconds: float
    build_seconds: float = 0.0
    max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO
    budget: float | None = None
    lp_makespan: float = math.nan
    min_makespan: float = math.nan
    num_rows: int = 0
    num_cols: int = 0
    unit: str = "ms"
    stats: dict[str, Any] = field(default_factory=dict)
    #: the simulated step with these ratios (None for a plan not made by the planner)
    timeline: Timeline | None = field(default=None, repr=False, compare=False)

    @property
    def gain(self) -> float:
        """Relative makespan reduction, ``1 - makespan / baseline_makespan``."""
        return 1.0 - self.makespan / self.baseline_makespan if self.baseline_makespan else 0.0

    @property
    def speedup(self) -> float:
        return self.baseline_makespan / self.makespan if self.makespan else 1.0

    def ratio(self, stage: int, microbatch: int) -> float:
        return self.ratios.get((stage, microbatch), 0.0)

    def stage_average(self) -> list[float]:
        """Average ratio per stage (over its microbatches)."""
        p, m = self.schedule.num_stages, self.schedule.num_microbatches
        sums = [0.0] * p
        for (s, _), r in self.ratios.items():
            sums[s] += r
        return [x / m for x in sums]

    def matrix(self) -> list[list[float]]:
        """Ratios as ``[stage][microbatch]``."""
        p, m = self.schedule.num_stages, self.schedule.num_microbatches
        out = [[0.0] * m for _ in range(p)]
        for (s, mb), r in self.ratios.items():
            out[s][mb] = r
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.name,
            "stages": self.schedule.num_stages,
            "microbatches": self.schedule.num_microbatches,
            "ranks": self.schedule.num_ranks,
            "max_freeze_ratio": self.max_freeze_ratio,
            "budget": self.budget,
            "unit": self.unit,
            "makespan": self.makespan,
            "baseline_makespan": self.baseline_makespan,
            "min_makespan_all_frozen": self.min_makespan,
            "gain": self.gain,
            "status": self.status,
            "solve_seconds": self.solve_seconds,
            "build_seconds": self.build_seconds,
            "lp_rows": self.num_rows,
            "lp_cols": self.num_cols,
            "stage_average": self.stage_average(),
            "ratios": self.matrix(),
            "stats": self.stats,
        }

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def _method_summary(self) -> str:
        st = self.stats
        if st.get("method") == "decomposition":
            starts = st.get("starts", {})
            warm = starts.get("reused", 0) + starts.get("repaired", 0)
            return (
                f"decomposition: {st.get('subproblems', 0)} pricing rounds "
                f"({st.get('pivots', 0)} network-simplex pivots, {warm} warm-started), "
                f"master {self.num_rows} rows x {self.num_cols} columns"
            )
        return f"one LP, {self.num_rows} rows x {self.num_cols} cols"

    def summary(self) -> str:
        u = self.unit
        lines = [
            f"schedule {self.schedule.name}: {self.schedule.num_stages} stages, "
            f"{self.schedule.num_microbatches} microbatches, {self.schedule.num_ranks} ranks",
            f"makespan   before {self.baseline_makespan:10.4g} {u}   after {self.makespan:10.4g}"
            f" {u}   gain {100 * self.gain:5.1f}%   (all frozen: {self.min_makespan:.4g} {u})",
            f"solver     {self.status}, build {self.build_seconds * 1e3:.1f} ms, "
            f"solve {self.solve_seconds * 1e3:.1f} ms, {self._method_summary()}",
            "stage  avg ratio  frozen microbatches",
        ]
        for s, avg in enumerate(self.stage_average()):
            n_frozen = sum(1 for (st, _), r in self.ratios.items() if st == s and r > 1e-9)
            lines.append(f"{s:5d}  {avg:9.3f}  {n_frozen:5d}/{self.schedule.num_microbatches}")
        return "\n".join(lines)


def _check_args(max_freeze_ratio: float, budget: float | None, method: str) -> None:
    for label, val in (("max_freeze_ratio", max_freeze_ratio), ("budget", budget)):
        if val is None and label == "budget":
            continue
        if not isinstance(val, (int, float)) or not (0.0 <= float(val) <= 1.0):
            raise PlanError(f"{label} must be a number in [0, 1], got {val!r}")
    if method not in METHODS:
        raise PlanError(f"method must be 'auto', 'lp' or 'decomposition', got {method!r}")


def plan_freeze(
    schedule: Schedule | ScheduleDAG,
    costs: Any,
    max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO,
    budget: float | None = None,
    *,
    tolerance: float = 1e-9,
    prune: bool = True,
    row_generation: bool = False,
    method: str = "auto",
) -> FreezePlan:
    """Plan per-(stage, microbatch) freeze ratios that minimise the step's makespan.

    ``max_freeze_ratio`` caps each stage's average ratio; ``budget`` (optional) caps the
    frozen share of all weight-gradient work. ``tolerance`` is the relative slack on the
    minimal makespan allowed in the second (least-freezing) solve. Raises
    :class:`~tfcompile.errors.PlanError` when the LP cannot be solved to optimality.

    ``method``: ``"decomposition"`` (column generation over the stage caps, pricing with a
    native network simplex: :mod:`tfcompile.planner.decompose`; compiles a small C file
    once), ``"lp"`` (one HiGHS LP over the whole DAG), or ``"auto"``: the decomposition when
    the native solver loads and there are at least ``AUTO_DECOMPOSE_MIN`` freezable actions,
    else the LP. Both are exact (same makespan and cost-weighted freezing); the
    decomposition is 5-25x faster from 16 stages x 128 microbatches up (bench_plan).
    To re-plan the same schedule as measured costs drift, use :class:`FreezePlanner`.
    """
    _check_args(max_freeze_ratio, budget, method)
    t0 = time.perf_counter()
    problem = FreezeProblem.bind(schedule, costs, max_freeze_ratio, budget, tolerance)
    return _plan(problem, method, t0, prune=prune, row_generation=row_generation)


class FreezePlanner:
    """Re-plans one schedule for changing costs, reusing the schedule's DAG.

    ``planner = FreezePlanner(schedule, max_freeze_ratio=0.8)``; ``planner.plan(costs)`` each
    time new measurements arrive. Results equal :func:`plan_freeze`'s. With ``method="lp"``
    each solve warm-starts HiGHS from the previous optimal basis (the LP keeps its shape):
    with costs that moved a few percent the first solve needs a few hundred pivots instead of
    tens of thousands. The decomposition (the default where it loads) starts afresh, being
    faster than that warm start already.
    """

    def __init__(
        self,
        schedule: Schedule | ScheduleDAG,
        max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO,
        budget: float | None = None,
        *,
        tolerance: float = 1e-9,
        method: str = "auto",
        warm_start: bool = True,
        prune: bool = False,
    ) -> None:
        _check_args(max_freeze_ratio, budget, method)
        self.dag = schedule_dag(schedule)
        self.max_freeze_ratio = max_freeze_ratio
        self.budget = budget
        self.tolerance = tolerance
        self.method = method
        self.prune = prune
        self._warm = WarmStart() if warm_start else None

    def plan(self, costs: Any) -> FreezePlan:
        """The plan for ``costs``. With ``warm_start=False`` and ``prune=True`` it is exactly
        ``plan_freeze(schedule, costs, ...)``'s, independent of earlier calls (what the
        freezing controller needs for a resumed run to re-plan as an uninterrupted one)."""
        t0 = time.perf_counter()
        problem = FreezeProblem.bind(
            self.dag, costs, self.max_freeze_ratio, self.budget, self.tolerance
        )
        return _plan(problem, self.method, t0, prune=self.prune, warm=self._warm)

    def makespan(self, costs: Any, ratios: Mapping[tuple[int, int], float] | None = None) -> float:
        """Step time the simulator predicts for ``ratios`` (none: nothing frozen) under
        ``costs``, on the planner's DAG."""
        from tfcompile.schedules.simulate import simulate

        return float(simulate(self.dag, costs, None if ratios is None else dict(ratios)).makespan)


def _plan(
    problem: FreezeProblem,
    method: str,
    t0: float,
    *,
    prune: bool = True,
    row_generation: bool = False,
    warm: WarmStart | None = None,
) -> FreezePlan:
    """Solve ``problem`` with ``method`` (the decomposition falls back to the LP under
    ``"auto"``) and check the result by simulation. ``t0``: when planning started."""
    baseline = problem.baseline
    if problem.trivial:
        return FreezePlan(
            problem.dag.schedule, {}, baseline, baseline, "Optimal (nothing to freeze)", 0.0,
            time.perf_counter() - t0, problem.cap, problem.budget, baseline, baseline,
            unit=problem.unit,
        )  # fmt: skip
    t_lb = problem.all_frozen
    unit = problem.normalised()  # the solvers see times in units of the longest action
    fallback = None
    if method == "auto":
        large = len(problem.fz_nodes) >= AUTO_DECOMPOSE_MIN
        method = "decomposition" if large and not row_generation and netflow.available() else "lp"
        if method == "decomposition":
            try:
                return _finished_plan(problem, decompose.solve(unit), t0, t_lb)
            except PlanError as exc:  # never expected; the LP is the safety net
                fallback = f"decomposition failed ({exc}); solved as one LP"
                method = "lp"
    if method == "decomposition":
        return _finished_plan(problem, decompose.solve(unit), t0, t_lb)
    solution = lp.solve(unit, prune=prune, row_generation=row_generation, warm=warm)
    if fallback:
        solution.stats["fallback"] = fallback
    return _finished_plan(problem, solution, t0, t_lb)


def _finished_plan(
    problem: FreezeProblem, solution: Solution, t0: float, t_lb: float
) -> FreezePlan:
    """The plan of the solver's ratios: snapped to 0 and 1 within 1e-9, simulated, and
    checked against the makespan the solver promised. The solver solved
    ``problem.normalised()``: its makespan is in units of ``problem.scale``."""
    build_seconds = time.perf_counter() - t0 - solution.solve_seconds
    dag = problem.dag
    r_fz = np.clip(solution.ratios, 0.0, 1.0)
    r_fz[r_fz < 1e-9] = 0.0
    r_fz[r_fz > 1 - 1e-9] = 1.0
    r = np.zeros(dag.num_nodes)
    r[problem.fz_nodes] = r_fz
    tl = timeline_from_arrays(dag, problem.base - problem.wpart * r, r, problem.comm, problem.unit)
    scale = problem.scale
    _check_simulated(tl.makespan / scale, problem.bound(solution.min_makespan))
    min_makespan = solution.min_makespan * scale
    ratios = {
        (int(dag.stage[v]), int(dag.microbatch[v])): float(x)
        for v, x in zip(problem.fz_nodes.tolist(), r_fz.tolist())
        if x > 0
    }
    return FreezePlan(
        schedule=dag.schedule,
        ratios=ratios,
        makespan=tl.makespan,
        baseline_makespan=problem.baseline,
        status=solution.status,
        solve_seconds=solution.solve_seconds,
        build_seconds=build_seconds,
        max_freeze_ratio=problem.cap,
        budget=problem.budget,
        lp_makespan=min_makespan,
        min_makespan=t_lb,
        num_rows=solution.num_rows,
        num_cols=solution.num_cols,
        unit=problem.unit,
        stats=solution.stats,
        timeline=tl,
    )


def _check_simulated(makespan: float, bound: float) -> None:
    if makespan > bound * (1 + 1e-7) + 1e-9:
        raise PlanError(
            f"internal error: the planned ratios simulate to makespan {makespan:.9g} but the "
            f"solver promised {bound:.9g}; please report this with the schedule and profile"
        )


def timeline_of(plan: FreezePlan, costs: Any) -> Timeline:
    """Simulated timeline of a plan (the plan's own when the planner made it)."""
    if plan.timeline is not None:
        return plan.timeline
    from tfcompile.schedules.simulate import simulate

    return simulate(plan.schedule, costs, plan.ratios)


def ratios_from_mapping(ratios: Mapping[Any, float]) -> dict[tuple[int, int], float]:
    return {(int(k[0]), int(k[1])): float(v) for k, v in ratios.items()}
