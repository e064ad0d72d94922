"""The freeze problem as one HiGHS LP (through highspy): ``solve(problem) -> Solution``.

A longest-path LP over the schedule's DAG, built sparse and column-wise: program-order chains
are collapsed onto *anchors* (a rank's first action, or one with a cross-rank predecessor),
rows that cannot bind at the optimum are pruned (``prune``), and the lexicographic objective
(minimal makespan, then least cost-weighted freezing) is met by one weighted solve plus a
cheap check, with an explicit second solve only when the check fails. The design choices and
what was measured against them are in docs/planner.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfcompile.errors import PlanError
from tfcompile.planner.highs import new_highs
from tfcompile.planner.problem import FreezeProblem, Solution
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.simulate import longest_path


@dataclass
class WarmStart:
    """The last optimal basis of the LP and the shape it fits, kept by a `FreezePlanner` so
    that its next solve of the same schedule starts from it."""

    basis: Any = None
    shape: tuple[int, int] | None = None


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
    """The reduced LP of one problem; see the module docstring.

    Columns: ``[anchor starts | ratios of freezable actions | T]``. Rows: one per timing edge
    into an anchor (program or cross-rank), one per sink, then the stage caps and the budget.
    The edge rows are kept as COO arrays so that a subset can be passed to HiGHS and the rest
    checked against a solution (row generation).
    """

    def __init__(
        self, problem: FreezeProblem, prune_below: float | None, collapse: bool = True
    ) -> None:
        dag, base, wpart, comm = problem.dag, problem.base, problem.wpart, problem.comm
        cap, budget = problem.cap, problem.budget
        n = dag.num_nodes
        pp, dp = dag.prog_pred, dag.data_pred
        fz = problem.freezable
        self.fz_nodes = problem.fz_nodes
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
            counts = problem.stage_counts()
            side_row.append(np.searchsorted(stages, stage_of))
            side_col.append(n_anc + np.arange(nfz))
            side_val.append(np.ones(nfz))
            side_up.append(cap * counts[stages].astype(np.float64))
        if budget is not None and nfz and budget < 1.0:
            k = sum(len(x) for x in side_up)
            side_row.append(np.full(nfz, k))
            side_col.append(n_anc + np.arange(nfz))
            side_val.append(wpart[self.fz_nodes])
            side_up.append(np.array([problem.frozen_work_bound()]))
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

        h = new_highs()  # no banner on stdout
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


def _initial_rows(problem: FreezeProblem, model: _Model) -> np.ndarray:
    """Edge rows to start row generation with: every sink row plus the edges that are tight
    in the ASAP schedule with every ratio at the cap (a guess of the optimum). Other rows are
    added only when the full DAG, simulated with a solution's ratios, is longer than that
    solution's makespan."""
    p = problem
    start, end = longest_path(p.dag, p.base - p.wpart * p.cap, p.comm)
    return np.flatnonzero((model.v < 0) | _tight(model, start, end))


def solve(
    problem: FreezeProblem,
    *,
    prune: bool = True,
    row_generation: bool = False,
    warm: WarmStart | None = None,
) -> Solution:
    """The lexicographic optimum of ``problem`` as one LP.

    ``prune`` leaves out edge rows that cannot bind (a path through them is shorter than the
    all-frozen makespan even with nothing frozen); ``row_generation`` starts from the rows
    tight at a guess and adds the rows the simulation of a solution shows missing (exact,
    measured slower); ``warm`` starts HiGHS from (and keeps) the last optimal basis.
    Raises PlanError when HiGHS does not reach optimality.
    """
    dag, base, wpart, comm = problem.dag, problem.base, problem.wpart, problem.comm
    t_lb = problem.all_frozen
    stats: dict[str, Any] = {}
    prune_below = t_lb * (1 - 1e-9) - 1e-12 if prune else None
    model = _Model(problem, prune_below)
    stats["edge_rows"] = int(model.num_edge_rows)
    if row_generation:
        rows = _initial_rows(problem, model)
    else:
        rows = np.arange(model.num_edge_rows)
    in_model = np.zeros(model.num_edge_rows, dtype=bool)
    in_model[rows] = True
    h = model.highs(rows, problem.freeze_weight)
    shape = (model.ncol, model.nrow)
    stats["warm_start"] = False
    if warm is not None and warm.shape == shape and not row_generation:
        h.setBasis(warm.basis)
        stats["warm_start"] = True
    t1 = time.perf_counter()
    feas_tol = 1e-7 * max(1.0, problem.baseline)

    nfz = len(model.fz_nodes)
    r_nodes = np.zeros(dag.num_nodes)

    def run(what: str) -> np.ndarray:
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
    # -- solve 1: T + freeze_weight * (cost-weighted freezing) -----------------------------
    sol = run("weighted")
    t_w = float(sol[model.col_T])
    if warm is not None:
        warm.basis, warm.shape = h.getBasis(), shape
    # -- check: is its makespan minimal? Re-optimise min T from its basis (primal simplex:
    # the basis stays primal feasible). Normally the basis is already optimal (0 pivots);
    # then ``sol`` is lexicographically optimal: minimal T, and least freezing among all
    # plans with that T (any such plan with less freezing would have a smaller weighted
    # objective).
    set_cost(1.0, 0.0)
    h.setOptionValue("simplex_strategy", 4)
    x = run("makespan")
    t_star = float(x[model.col_T])
    bound = problem.bound(t_star)
    stats["fast_path"] = t_w <= bound
    if not stats["fast_path"]:
        # -- fallback, solve 2: least freezing with the makespan held (same instance, so
        # HiGHS restarts, with primal simplex, from the min-T basis) -----------------------
        h.changeColBounds(model.col_T, 0.0, bound)
        set_cost(0.0, 1.0)
        sol = run("freezing")
    stats["rows_used"] = int(in_model.sum())
    status = _status(h)
    t_solve = time.perf_counter() - t1
    stats["pruned_edges"] = int(model.num_edges_total - model.num_edge_rows)
    stats["method"] = "lp"
    return Solution(
        ratios=sol[model.n_anc : model.n_anc + nfz],
        min_makespan=t_star,
        status=status,
        num_rows=model.nrow,
        num_cols=model.ncol,
        solve_seconds=t_solve,
        stats=stats,
    )


def _status(h) -> str:
    return h.modelStatusToString(h.getModelStatus())


def _optimal():
    import highspy

    return highspy.HighsModelStatus.kOptimal
