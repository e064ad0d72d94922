"""Freeze planning LP (HiGHS through highspy).

Given a schedule and a cost profile, choose a freeze ratio ``r[s, m]`` in [0, 1] for every
freezable action (B on full-backward schedules, W on split ones) so that the step's makespan
is minimal, then - with the makespan held within a small tolerance - so that the
cost-weighted freezing ``sum W[s, m] r[s, m]`` is minimal. Constraints: each stage's average
ratio is at most ``max_freeze_ratio``; optionally the frozen share of all W work is at most
``budget``.

Formulation (longest-path LP, built sparse and directly as a column-wise matrix):

- Program-order chains are collapsed. A node whose only timing predecessor is its program
  predecessor starts exactly when that one ends (ASAP times are optimal for every choice of
  ratios), so its start is an affine expression of the last *anchor* before it on its rank
  (a node with a cross-rank predecessor, or a rank's first node). Only anchors get a start
  variable; a constraint row links an anchor to the end of each of its predecessors, with
  the ratio terms of the chain segment in between. Same-rank data edges are implied by
  program order and dropped (transitive reduction).
- Rows that can never bind are dropped. With every ratio at 1 (the least possible work), the
  makespan ``T_lb`` is a lower bound of the optimum; a path through an edge that is shorter
  than ``T_lb`` even with nothing frozen can never be critical, so the edge's row is left out.
  The plan is always re-checked by simulating the full DAG with the chosen ratios.
- The lexicographic objective is met by one weighted solve plus a check. The solve minimises
  ``T + FREEZE_WEIGHT * sum W r``. For every weight below some (instance-dependent) breakpoint
  the weighted optimum is the lexicographic one, and whether it is can be checked cheaply:
  the objective is changed to ``T`` alone and HiGHS re-optimises from the weighted optimal
  basis with primal simplex (the basis stays primal feasible). If the makespan does not drop
  (normally 0 pivots, a few ms), the weighted solution has the minimal makespan ``T*``, and
  among plans with makespan ``T*`` none freezes less (it would have a smaller weighted
  objective): it is exactly the lexicographic optimum. Otherwise (weight above the breakpoint)
  the instance now holds a min-``T`` basis, and the explicit second solve follows: makespan
  column bounded by ``T* (1 + tolerance)``, objective ``sum W r``, primal simplex from that
  basis. The freezing term also removes the dual degeneracy of a pure ``min T`` (which the
  previous code fought with a tiny start-time cost). Measured (CPU s, 1F1B 16x128): 0.41 s for
  the weighted solve + check against 0.39 + 0.60 s for the two lexicographic solves.

Measured and not used by default (see benchmarks/bench_plan.py): row generation checked by
simulation (``row_generation=True``; exact, but on balanced pipelines almost every edge is
tight at the optimum, so 95% of the rows come back over 10+ rounds); a crash basis from the
all-frozen ASAP tree (dual feasible, 40% fewer pivots, but slower without presolve); IPM and
PDLP (2-20x slower); a starting solution (HiGHS gains ~20% even from the optimum). Also
measured without a gain: other freezing weights (1e-4 .. 3e-2: 10-30% more pivots than 1e-3),
a tiny start-time cost on top of the freezing term, other HiGHS options (dual steepest edge,
the default, is 20-30% slower than Devex; no presolve, other scaling, update limit, cost
perturbation, one thread: within noise or worse), and the crash basis again with the weighted
objective (ZBV 32x256: 28k pivots instead of 81k, but each costs 3x as much; 1F1B 32x256
slower). Fixing ratios of actions that cannot be critical is only sound with every *other*
action unfrozen, and then it is the same test as the edge pruning above, which removes nothing
on these balanced pipelines; so is dropping rows implied by another path (none found).

Measured in CPU seconds (benchmarks/bench_plan.py, 28.3B profile, cap 0.8) against the
paper-style reference (one weighted solve of a 2-variables-per-action model): this LP takes
1F1B 16x128 0.31 vs 0.67, 32x256 4.9 vs 11.5; ZBV 16x128 0.81 vs 1.29, 32x256 13.0 vs 15.9.
It is still a simplex solve of tens of thousands of rows (40-80k pivots at 32x256), so large
instances go to :mod:`tfcompile.planner.decompose` instead (``method="auto"``): column
generation over the stage caps with a native network simplex pricing, 0.03 / 0.18 s (1F1B)
and 0.14 / 1.4 s (ZBV) at those sizes, same plans.
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
from tfcompile.planner import netflow
from tfcompile.schedules.actions import Schedule
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.profile import as_profile
from tfcompile.schedules.simulate import Timeline, longest_path, timeline_from_arrays

#: weight of the cost-weighted freezing ``sum W r`` against the makespan in the first solve
#: (dimensionless: both are times). Small enough that the weighted optimum almost always has
#: the minimal makespan (checked after every solve, with a fallback); large enough against
#: HiGHS's dual feasibility tolerance (1e-7) for any sensible time unit.
FREEZE_WEIGHT = 1e-3

#: ``method="auto"`` decomposes from this many freezable actions up; below, one LP solves in
#: a few ms and is measured slightly faster (4 stages x 8 microbatches: 4 vs 6 ms)
AUTO_DECOMPOSE_MIN = 200


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
    max_freeze_ratio: float = 0.9
    budget: float | None = None
    lp_makespan: float = math.nan
    min_makespan: float = math.nan
    num_rows: int = 0
    num_cols: int = 0
    unit: str = "ms"
    stats: dict[str, Any] = field(default_factory=dict)

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


def _check_args(max_freeze_ratio: float, budget: float | None) -> None:
    for label, val in (("max_freeze_ratio", max_freeze_ratio), ("budget", budget)):
        if val is None and label == "budget":
            continue
        if not isinstance(val, (int, float)) or not (0.0 <= float(val) <= 1.0):
            raise PlanError(f"{label} must be a number in [0, 1], got {val!r}")


def _csc(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, ncol: int):
    order = np.lexsort((rows, cols))
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.zeros(ncol + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=ncol), out=start[1:])
    return start, rows.astype(np.int32), vals.astype(np.float64)


def _segments(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ranges [lo_k, hi_k); return (row id of each element, element)."""
    lens = np.maximum(hi - lo, 0)
    total = int(lens.sum())
    row = np.repeat(np.arange(len(lo)), lens)
    if total == 0:
        return row, np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lens) - lens
    elem = np.arange(total) - np.repeat(offs, lens) + np.repeat(lo, lens)
    return row, elem


class _Model:
    """The reduced LP of one (dag, costs) pair; see the module docstring.

    Columns: ``[anchor starts | ratios of freezable actions | T]``. Rows: one per timing edge
    into an anchor (program or cross-rank), one per sink, then the stage caps and the budget.
    The edge rows are kept as COO arrays so that a subset can be passed to HiGHS and the rest
    checked against a solution (row generation).
    """

    def __init__(
        self,
        dag: ScheduleDAG,
        base: np.ndarray,
        wpart: np.ndarray,
        comm: float,
        cap: float,
        budget: float | None,
        prune_below: float | None,
        collapse: bool = True,
    ) -> None:
        n = dag.num_nodes
        pp, dp = dag.prog_pred, dag.data_pred
        fz = dag.freezable & (wpart > 0)
        self.fz_nodes = np.flatnonzero(fz)
        nfz = len(self.fz_nodes)
        # anchors: rank-first nodes and nodes with a cross-rank predecessor
        is_anchor = (pp < 0) | (dp >= 0) if collapse else np.ones(n, dtype=bool)
        anchors = np.flatnonzero(is_anchor)
        anchor_col = np.full(n, -1, dtype=np.int64)
        anchor_col[anchors] = np.arange(len(anchors))
        # node index == position in the rank-major program listing, so the anchor of v is the
        # last anchor index <= v
        anchor_of = np.maximum.accumulate(np.where(is_anchor, np.arange(n), -1))
        cum_a = np.concatenate([[0.0], np.cumsum(base)])
        cum_f = np.concatenate([[0], np.cumsum(fz)])
        e_prog_v = anchors[pp[anchors] >= 0]
        e_prog_u = pp[e_prog_v]
        e_data_v = np.flatnonzero(dp >= 0)
        e_data_u = dp[e_data_v]
        sinks = dag.sinks
        u_all = np.concatenate([e_prog_u, e_data_u, sinks])
        v_all = np.concatenate([e_prog_v, e_data_v, np.full(len(sinks), -1)])
        c_all = np.concatenate(
            [np.zeros(len(e_prog_u)), np.full(len(e_data_u), comm), np.zeros(len(sinks))]
        )
        self.num_edges_total = len(u_all)
        if prune_below is not None and len(u_all):
            # longest path through each edge with nothing frozen
            _, end0 = longest_path(dag, base, comm)
            tail0 = _tails(dag, base, comm)  # longest path from a node's start to the end
            through = end0[u_all] + c_all + np.where(v_all >= 0, tail0[np.maximum(v_all, 0)], 0)
            keep = through >= prune_below
            u_all, v_all, c_all = u_all[keep], v_all[keep], c_all[keep]
        self.u, self.v, self.c = u_all, v_all, c_all
        m_rows = len(u_all)
        a_u = anchor_of[u_all]
        self.rhs = cum_a[u_all + 1] - cum_a[a_u] + c_all
        n_anc = len(anchors)
        col_T = n_anc + nfz
        self.ncol, self.col_T, self.n_anc = col_T + 1, col_T, n_anc
        r_ids = np.arange(m_rows)
        seg_row, seg_k = _segments(cum_f[a_u], cum_f[u_all + 1])
        self.e_row = np.concatenate([r_ids, r_ids, seg_row])
        self.e_col = np.concatenate(
            [
                np.where(v_all >= 0, anchor_col[np.maximum(v_all, 0)], col_T),
                anchor_col[a_u],
                n_anc + seg_k,
            ]
        )
        self.e_val = np.concatenate(
            [np.ones(m_rows), -np.ones(m_rows), wpart[self.fz_nodes[seg_k]]]
        )
        self.num_edge_rows = m_rows
        # side rows: stage caps (sum_m r[s, m] <= cap * count_s) and the budget
        side_row, side_col, side_val, side_up = [], [], [], []
        stage_of = dag.stage[self.fz_nodes]
        stages = np.unique(stage_of)
        if len(stages) and cap < 1.0:
            counts = np.bincount(dag.stage[dag.freezable], minlength=dag.schedule.num_stages)
            side_row.append(np.searchsorted(stages, stage_of))
            side_col.append(n_anc + np.arange(nfz))
            side_val.append(np.ones(nfz))
            side_up.append(cap * counts[stages].astype(np.float64))
        if budget is not None and nfz and budget < 1.0:
            k = sum(len(x) for x in side_up)
            side_row.append(np.full(nfz, k))
            side_col.append(n_anc + np.arange(nfz))
            side_val.append(wpart[self.fz_nodes])
            side_up.append(np.array([budget * float(np.sum(wpart[dag.freezable]))]))
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
        self.s_row, self.s_col = cat(side_row, np.int64), cat(side_col, np.int64)
        self.s_val, self.s_up = cat(side_val, np.float64), cat(side_up, np.float64)
        self.col_lower = np.zeros(self.ncol)
        self.col_upper = np.concatenate([np.full(n_anc, np.inf), np.ones(nfz), [np.inf]])
        self.wpart_fz = wpart[self.fz_nodes]
        self.anchors = anchors
        self.nrow = 0

    def row_activity(self, x: np.ndarray) -> np.ndarray:
        """Activity of every edge row at column values ``x``."""
        return np.bincount(
            self.e_row, weights=self.e_val * x[self.e_col], minlength=self.num_edge_rows
        )

    def _rows_csr(self, rows: np.ndarray):
        """Row-wise (start, index, value) of the edge rows ``rows`` (sorted ids)."""
        sel_pos = np.full(self.num_edge_rows, -1, dtype=np.int64)
        sel_pos[rows] = np.arange(len(rows))
        keep = sel_pos[self.e_row] >= 0
        r, c, v = sel_pos[self.e_row[keep]], self.e_col[keep], self.e_val[keep]
        order = np.argsort(r, kind="stable")
        start = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(np.bincount(r, minlength=len(rows)), out=start[1:])
        return start[:-1], c[order].astype(np.int32), v[order]

    def highs(self, rows: np.ndarray, freeze_weight: float):
        """A HiGHS instance holding the edge rows ``rows`` plus all side rows, with the
        objective ``T + freeze_weight * sum W r``."""
        import highspy

        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        # Devex dual pricing: a few more pivots than the default (dual steepest edge), each
        # cheaper; measured 20-30% less CPU at 16x128 (1F1B and ZBV)
        h.setOptionValue("simplex_dual_edge_weight_strategy", 1)
        n_side = len(self.s_up)
        row_map = np.full(self.num_edge_rows, -1, dtype=np.int64)
        row_map[rows] = np.arange(len(rows))
        keep = row_map[self.e_row] >= 0
        all_r = np.concatenate([row_map[self.e_row[keep]], len(rows) + self.s_row])
        all_c = np.concatenate([self.e_col[keep], self.s_col])
        all_v = np.concatenate([self.e_val[keep], self.s_val])
        start, index, value = _csc(all_r, all_c, all_v, self.ncol)
        nrow = len(rows) + n_side
        lp = highspy.HighsLp()
        lp.num_col_ = self.ncol
        lp.num_row_ = nrow
        cost = np.zeros(self.ncol)
        cost[self.n_anc : self.col_T] = freeze_weight * self.wpart_fz
        cost[self.col_T] = 1.0
        lp.col_cost_ = cost
        lp.col_lower_ = self.col_lower
        lp.col_upper_ = self.col_upper
        lp.row_lower_ = np.concatenate([self.rhs[rows], np.full(n_side, -np.inf)])
        lp.row_upper_ = np.concatenate([np.full(len(rows), np.inf), self.s_up])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = start
        lp.a_matrix_.index_ = index
        lp.a_matrix_.value_ = value
        lp.a_matrix_.num_col_ = self.ncol
        lp.a_matrix_.num_row_ = nrow
        h.passModel(lp)
        self.nrow = nrow
        return h

    def add_rows(self, h, rows: np.ndarray) -> None:
        start, index, value = self._rows_csr(rows)
        h.addRows(
            len(rows),
            self.rhs[rows],
            np.full(len(rows), np.inf),
            len(index),
            start,
            index,
            value,
        )
        self.nrow += len(rows)


def _tails(dag: ScheduleDAG, dur: np.ndarray, comm: float) -> np.ndarray:
    """Longest path from each node's start to the end of the step."""
    n = dag.num_nodes
    tail = dur.tolist()
    d = dur.tolist()
    pp = dag.prog_pred.tolist()
    dp = dag.data_pred.tolist()
    for v in dag.topo[::-1].tolist():
        tv = tail[v]
        u = pp[v]
        if u >= 0 and d[u] + tv > tail[u]:
            tail[u] = d[u] + tv
        u = dp[v]
        if u >= 0 and d[u] + comm + tv > tail[u]:
            tail[u] = d[u] + comm + tv
    del n
    return np.array(tail)


def _tight(model: _Model, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Edge rows that are tight (zero slack) in an ASAP schedule with these times."""
    span = float(end.max()) if len(end) else 1.0
    sv = np.where(model.v >= 0, start[np.maximum(model.v, 0)], span)
    return sv - (end[model.u] + model.c) <= 1e-9 * max(1.0, span)


def _initial_rows(
    dag: ScheduleDAG,
    model: _Model,
    base: np.ndarray,
    wpart: np.ndarray,
    comm: float,
    cap: float,
) -> np.ndarray:
    """Edge rows to start row generation with: every sink row plus the edges that are tight
    in the ASAP schedule with every ratio at the cap (a guess of the optimum). Other rows are
    added only when the full DAG, simulated with a solution's ratios, is longer than that
    solution's makespan."""
    start, end = longest_path(dag, base - wpart * cap, comm)
    return np.flatnonzero((model.v < 0) | _tight(model, start, end))


def _makespan(dag: ScheduleDAG, dur: np.ndarray, comm: float) -> float:
    if netflow.available():
        return netflow.Makespan(dag)(dur, comm)
    return float(longest_path(dag, dur, comm)[1].max())


def _status(h) -> str:
    return h.modelStatusToString(h.getModelStatus())


def plan_freeze(
    schedule: Schedule | ScheduleDAG,
    costs: Any,
    max_freeze_ratio: float = 0.9,
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
    return _plan(
        schedule, costs, max_freeze_ratio, budget, tolerance, prune, row_generation, None, method
    )


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
        max_freeze_ratio: float = 0.9,
        budget: float | None = None,
        *,
        tolerance: float = 1e-9,
        method: str = "auto",
        warm_start: bool = True,
        prune: bool = False,
    ) -> None:
        _check_args(max_freeze_ratio, budget)
        self.dag = schedule if isinstance(schedule, ScheduleDAG) else ScheduleDAG(schedule)
        self.max_freeze_ratio = max_freeze_ratio
        self.budget = budget
        self.tolerance = tolerance
        self.method = method
        self.warm_start = warm_start
        self.prune = prune
        self._state: dict[str, Any] = {}

    def plan(self, costs: Any) -> FreezePlan:
        """The plan for ``costs``. With ``warm_start=False`` and ``prune=True`` it is exactly
        ``plan_freeze(schedule, costs, ...)``'s, independent of earlier calls (what the
        freezing controller needs for a resumed run to re-plan as an uninterrupted one)."""
        state = self._state if self.warm_start else None
        return _plan(
            self.dag, costs, self.max_freeze_ratio, self.budget, self.tolerance, self.prune,
            False, state, self.method,
        )  # fmt: skip

    def makespan(self, costs: Any, ratios: Mapping[tuple[int, int], float] | None = None) -> float:
        """Step time the simulator predicts for ``ratios`` (none: nothing frozen) under
        ``costs``, on the planner's DAG."""
        from tfcompile.schedules.simulate import simulate

        return float(simulate(self.dag, costs, None if ratios is None else dict(ratios)).makespan)


def _plan(
    schedule: Schedule | ScheduleDAG,
    costs: Any,
    max_freeze_ratio: float,
    budget: float | None,
    tolerance: float,
    prune: bool,
    row_generation: bool,
    state: dict[str, Any] | None,
    method: str = "lp",
) -> FreezePlan:
    _check_args(max_freeze_ratio, budget)
    if method not in ("auto", "lp", "decomposition"):
        raise PlanError(f"method must be 'auto', 'lp' or 'decomposition', got {method!r}")
    t0 = time.perf_counter()
    dag = schedule if isinstance(schedule, ScheduleDAG) else ScheduleDAG(schedule)
    sched = dag.schedule
    prof = as_profile(costs)
    base, wpart, comm = dag.bind(prof)
    baseline = _makespan(dag, base, comm)
    cap = float(max_freeze_ratio)
    stats: dict[str, Any] = {}
    if cap == 0.0 or budget == 0.0 or not np.any(dag.freezable & (wpart > 0)):
        return FreezePlan(
            sched, {}, baseline, baseline, "Optimal (nothing to freeze)", 0.0,
            time.perf_counter() - t0, cap, budget, baseline, baseline, unit=prof.unit,
        )  # fmt: skip
    t_lb = _makespan(dag, base - wpart, comm)
    fallback = None
    if method == "auto":
        large = int(np.count_nonzero(dag.freezable & (wpart > 0))) >= AUTO_DECOMPOSE_MIN
        usable = large and not row_generation and netflow.available()
        method = "decomposition" if usable else "lp"
        if method == "decomposition":
            try:
                return _plan_decomposed(
                    dag, prof, base, wpart, comm, baseline, t_lb, cap, budget, tolerance, t0
                )
            except PlanError as exc:  # never expected; the LP is the safety net
                fallback = f"decomposition failed ({exc}); solved as one LP"
                method = "lp"
    if method == "decomposition":
        return _plan_decomposed(
            dag, prof, base, wpart, comm, baseline, t_lb, cap, budget, tolerance, t0
        )
    prune_below = t_lb * (1 - 1e-9) - 1e-12 if prune else None
    model = _Model(dag, base, wpart, comm, cap, budget, prune_below)
    stats["edge_rows"] = int(model.num_edge_rows)
    if row_generation:
        rows = _initial_rows(dag, model, base, wpart, comm, cap)
    else:
        rows = np.arange(model.num_edge_rows)
    in_model = np.zeros(model.num_edge_rows, dtype=bool)
    in_model[rows] = True
    h = model.highs(rows, FREEZE_WEIGHT)
    shape = (model.ncol, model.nrow)
    stats["warm_start"] = False
    if state is not None and state.get("shape") == shape and not row_generation:
        h.setBasis(state["basis"])
        stats["warm_start"] = True
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    feas_tol = 1e-7 * max(1.0, baseline)

    nfz = len(model.fz_nodes)
    r_nodes = np.zeros(dag.num_nodes)

    def solve(what: str) -> np.ndarray:
        rounds = 0
        while True:
            h.run()
            if h.getModelStatus() != _optimal():
                raise PlanError(
                    f"freeze LP ({what}) not solved: HiGHS status {_status(h)!r}; no plan returned"
                )
            x = np.asarray(h.getSolution().col_value)
            rounds += 1
            if in_model.all():
                break
            # row generation: the relaxed LP's ratios are optimal for the full LP iff the
            # full DAG, simulated with them, is no longer than the relaxed LP's makespan
            r_nodes[model.fz_nodes] = np.clip(x[model.n_anc : model.n_anc + nfz], 0.0, 1.0)
            start, end = longest_path(dag, base - wpart * r_nodes, comm)
            if float(end.max()) <= x[model.col_T] + feas_tol:
                break
            new_rows = np.flatnonzero(_tight(model, start, end) & ~in_model)
            if len(new_rows) == 0:  # cannot happen: some critical edge must be missing
                new_rows = np.flatnonzero(~in_model)
            model.add_rows(h, new_rows)
            in_model[new_rows] = True
            h.setOptionValue("simplex_strategy", 1)  # added rows: dual simplex
        stats[f"{what}_rounds"] = rounds
        stats[f"{what}_iterations"] = int(h.getInfo().simplex_iteration_count)
        return x

    def set_cost(t_cost: float, r_weight: float) -> None:
        h.changeColsCost(len(cost_idx), cost_idx, np.concatenate([[t_cost], r_weight * wfz]))

    cost_idx = np.concatenate([[model.col_T], model.n_anc + np.arange(nfz)]).astype(np.int32)
    wfz = model.wpart_fz
    # -- solve 1: T + FREEZE_WEIGHT * (cost-weighted freezing) -----------------------------
    sol = solve("weighted")
    t_w = float(sol[model.col_T])
    if state is not None:
        state["basis"], state["shape"] = h.getBasis(), shape
    # -- check: is its makespan minimal? Re-optimise min T from its basis (primal simplex:
    # the basis stays primal feasible). Normally the basis is already optimal (0 pivots);
    # then ``sol`` is lexicographically optimal: minimal T, and least freezing among all
    # plans with that T (any such plan with less freezing would have a smaller weighted
    # objective).
    set_cost(1.0, 0.0)
    h.setOptionValue("simplex_strategy", 4)
    x = solve("makespan")
    t_star = float(x[model.col_T])
    stats["fast_path"] = t_w <= t_star * (1 + tolerance) + 1e-12
    bound = t_star * (1 + tolerance) + 1e-12
    if not stats["fast_path"]:
        # -- fallback, solve 2: least freezing with the makespan held (same instance, so
        # HiGHS restarts, with primal simplex, from the min-T basis) -----------------------
        h.changeColBounds(model.col_T, 0.0, bound)
        set_cost(0.0, 1.0)
        sol = solve("freezing")
    stats["rows_used"] = int(in_model.sum())
    st2 = _status(h)
    t_solve = time.perf_counter() - t1
    stats["pruned_edges"] = int(model.num_edges_total - model.num_edge_rows)
    stats["method"] = "lp"
    if fallback:
        stats["fallback"] = fallback
    r_fz = sol[model.n_anc : model.n_anc + len(model.fz_nodes)]
    return _finished_plan(
        dag, prof, base, wpart, comm, model.fz_nodes, r_fz, bound,
        baseline_makespan=baseline, status=st2, solve_seconds=t_solve, build_seconds=t_build,
        max_freeze_ratio=cap, budget=budget, lp_makespan=t_star, min_makespan=t_lb,
        num_rows=model.nrow, num_cols=model.ncol, stats=stats,
    )  # fmt: skip


def _plan_decomposed(
    dag: ScheduleDAG,
    prof: Any,
    base: np.ndarray,
    wpart: np.ndarray,
    comm: float,
    baseline: float,
    t_lb: float,
    cap: float,
    budget: float | None,
    tolerance: float,
    t0: float,
) -> FreezePlan:
    from tfcompile.planner.decompose import plan_dw

    t1 = time.perf_counter()
    res = plan_dw(dag, base, wpart, comm, cap, budget, FREEZE_WEIGHT, tolerance)
    t_solve = time.perf_counter() - t1
    return _finished_plan(
        dag, prof, base, wpart, comm, np.flatnonzero(dag.freezable & (wpart > 0)),
        res.ratios, res.min_makespan * (1 + tolerance) + 1e-12,
        baseline_makespan=baseline, status="Optimal", solve_seconds=t_solve,
        build_seconds=t1 - t0, max_freeze_ratio=cap, budget=budget,
        lp_makespan=res.min_makespan, min_makespan=t_lb,
        num_rows=int(res.stats.get("master_rows", 0)),
        num_cols=int(res.stats.get("columns", 0)),
        stats=dict(res.stats, fast_path=res.fast_path),
    )  # fmt: skip


def _finished_plan(
    dag: ScheduleDAG,
    prof: Any,
    base: np.ndarray,
    wpart: np.ndarray,
    comm: float,
    fz_nodes: np.ndarray,
    r_fz: np.ndarray,
    bound: float,
    **fields: Any,
) -> FreezePlan:
    """The plan of solver ratios ``r_fz`` (one per node of ``fz_nodes``): snapped to 0 and 1
    within 1e-9, simulated, and checked against the makespan ``bound`` the solver promised."""
    r_fz = np.clip(r_fz, 0.0, 1.0)
    r_fz[r_fz < 1e-9] = 0.0
    r_fz[r_fz > 1 - 1e-9] = 1.0
    r = np.zeros(dag.num_nodes)
    r[fz_nodes] = r_fz
    tl = timeline_from_arrays(dag, base - wpart * r, r, comm, prof.unit)
    _check_simulated(tl.makespan, bound)
    ratios = {
        (int(dag.stage[v]), int(dag.microbatch[v])): float(x)
        for v, x in zip(fz_nodes.tolist(), r_fz.tolist())
        if x > 0
    }
    plan = FreezePlan(
        schedule=dag.schedule, ratios=ratios, makespan=tl.makespan, unit=prof.unit, **fields
    )
    plan._timeline = tl  # type: ignore[attr-defined]
    return plan


def _check_simulated(makespan: float, bound: float) -> None:
    if makespan > bound * (1 + 1e-7) + 1e-9:
        raise PlanError(
            f"internal error: the planned ratios simulate to makespan {makespan:.9g} but the "
            f"solver promised {bound:.9g}; please report this with the schedule and profile"
        )


def _optimal():
    import highspy

    return highspy.HighsModelStatus.kOptimal


def timeline_of(plan: FreezePlan, costs: Any) -> Timeline:
    """Simulated timeline of a plan (cached when the plan was just computed)."""
    tl = getattr(plan, "_timeline", None)
    if tl is not None:
        return tl
    from tfcompile.schedules.simulate import simulate

    return simulate(plan.schedule, costs, plan.ratios)


def ratios_from_mapping(ratios: Mapping[Any, float]) -> dict[tuple[int, int], float]:
    return {(int(k[0]), int(k[1])): float(v) for k, v in ratios.items()}
