"""Freeze planning by Dantzig-Wolfe decomposition over the stage caps.

The freeze LP (:mod:`tfcompile.planner.lp`) is a longest-path LP plus a handful of linking
rows: one cap per stage, optionally the budget, and in the lexicographic fallback a bound on
the makespan. Without the linking rows it is the linear time-cost trade-off of project
scheduling (Fulkerson 1961), whose dual is a min-cost flow of one unit through the DAG.

Decomposition: a master LP (HiGHS; one row per linking constraint plus convexity) chooses a
convex combination of *columns*, each a ratio vector ``r_k`` with its simulated makespan
``T_k``, its frozen count per stage and its frozen W time. Its duals price the stage caps;
the pricing subproblem ``min T(r) + sum_v c_v r_v`` over ``r`` in ``[0, 1]`` is solved as a
min-cost flow by the native network simplex (:mod:`tfcompile.planner.netflow`), and its
optimal ratios come from the node potentials (complementary slackness). The loop stops when
no column has negative reduced cost; then the master is optimal for the full LP.

Primal recovery is free: ``T(r)`` is convex in ``r`` (a maximum of affine path lengths), so
the combined ratios ``sum_k theta_k r_k`` meet the caps and simulate to a makespan no longer
than the master's ``sum_k theta_k T_k``, which is the optimum. The plan is still re-checked
by simulation in :func:`tfcompile.planner.plan.plan_freeze`.

Why it is fast: on the pipelines measured only one or two stage caps bind (the heaviest
stages), so the loop ends after 4-8 subproblems, and each subproblem is a network simplex
on a tree rather than a general simplex on a factorised basis.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tfcompile.errors import PlanError
from tfcompile.planner import netflow
from tfcompile.planner.highs import new_highs
from tfcompile.planner.problem import FreezeProblem, Solution

#: stop when the best column's reduced cost is above -DW_TOL * |master objective|
DW_TOL = 1e-10
MAX_ITERATIONS = 500


class TimeCostFlow:
    """The pricing subproblem's network for one problem (its caps and budget aside).

    Nodes, numbered topologically: the step's start (0); a start node for every *anchor*
    action (one with a cross-rank predecessor, or none at all); an end node for every
    freezable action; the step's end (last). Any other action starts exactly when its
    program predecessor ends, so it sits on that node at a fixed offset (program chains
    are collapsed; measured 1.3x faster on ZBV, where W actions follow their I directly).
    A freezable action ``v`` has two parallel arcs into its end node: gain ``base_v`` with
    capacity ``rho_v`` (the price per time unit of freezing it), and uncapacitated gain
    ``base_v - W_v`` (frozen). Costs are negated gains. End nodes with a single outgoing arc
    are then merged into its head (:meth:`_merge_series_ends`).
    """

    def __init__(self, problem: FreezeProblem) -> None:
        dag, base, wpart, comm = problem.dag, problem.base, problem.wpart, problem.comm
        n = dag.num_nodes
        fz = problem.freezable
        pp, dp = dag.prog_pred, dag.data_pred
        anchor = (pp < 0) | (dp >= 0)
        self.fz_nodes = problem.fz_nodes
        self.base_fz = base[self.fz_nodes]
        self.w_fz = wpart[self.fz_nodes]
        # node ids in topological order: an anchor's start node, then a freezable's end node
        # (the DAG's depth-first topological order: measured 2x fewer pivots than ordering
        # by ASAP start time, as the pricing scan then follows program chains)
        topo = dag.topo
        width = anchor[topo].astype(np.int64) + fz[topo]
        first_id = np.empty(n, dtype=np.int64)
        first_id[topo] = 1 + np.cumsum(width) - width
        start_node = np.where(anchor, first_id, -1)
        end_node = np.where(fz, first_id + anchor, -1)
        self.num_nodes = int(1 + width.sum() + 1)
        sink = self.num_nodes - 1
        # where each action starts: the last node created on its rank before it, at the
        # offset of the non-freezable work since (nodes are rank-major: pp[v] == v - 1)
        slot_node = np.full(2 * n, -1, dtype=np.int64)
        slot_node[0::2] = start_node  # slot 2v: before v
        slot_node[1::2] = end_node  # slot 2v + 1: after v
        slot_pos = np.where(slot_node >= 0, np.arange(2 * n), -1)
        last = np.maximum.accumulate(slot_pos)  # ranks start with an anchor: no spill-over
        nonfz_dur = np.where(fz, 0.0, base)
        cum = np.concatenate([[0.0], np.cumsum(nonfz_dur)])  # cum[v]: before action v
        # the creating slot 2u (anchor u: offset counts from u) or 2u + 1 (after
        # freezable u: from u + 1)
        src_action = (last + 1) // 2
        in_slot = last[0::2]
        in_node = slot_node[in_slot]
        in_off = cum[np.arange(n)] - cum[src_action[0::2]]
        out_slot = last[1::2]
        out_node = slot_node[out_slot]
        out_off = cum[np.arange(n) + 1] - cum[src_action[1::2]]
        v_p = np.flatnonzero(anchor & (pp >= 0))
        v_d = np.flatnonzero(dp >= 0)
        v_src = np.flatnonzero((pp < 0) & (dp < 0))
        sinks = dag.sinks
        fzn = self.fz_nodes
        self.src = np.concatenate(
            [in_node[fzn], out_node[pp[v_p]], out_node[dp[v_d]], np.zeros(len(v_src), np.int64),
             out_node[sinks]]
        )  # fmt: skip
        self.dst = np.concatenate(
            [end_node[fzn], start_node[v_p], start_node[v_d], start_node[v_src],
             np.full(len(sinks), sink)]
        )  # fmt: skip
        self.cost = -np.concatenate(
            [in_off[fzn] + base[fzn] - wpart[fzn], out_off[pp[v_p]], out_off[dp[v_d]] + comm,
             np.zeros(len(v_src)), out_off[sinks]]
        )  # fmt: skip
        self.start_fz = in_node[fzn]
        self.off_fz = in_off[fzn]
        self.end_fz = end_node[fzn]
        self.extra_fz = np.zeros(len(fzn))  # gain of a merged-in arc after the end node
        self._merge_series_ends()
        # one priced arc per freezable node (gain base_v, capacity rho_v) after the fixed
        # arcs
        k = len(fzn)
        self.num_fixed = len(self.src)
        self.network = netflow.UnitFlowNetwork(
            np.concatenate([self.src, self.start_fz]),
            np.concatenate([self.dst, self.end_fz]),
            np.concatenate([self.cost, -(self.off_fz + self.base_fz + self.extra_fz)]),
            self.num_nodes,
            # the frozen arc (fixed arc i) is the uncapacitated twin of priced arc i
            twin=np.concatenate([np.full(self.num_fixed, -1), np.arange(k)]),
        )
        self.cap = np.full(self.num_fixed + k, netflow.INF_CAP)

    def _merge_series_ends(self) -> None:
        """Series reduction: an end node whose only outgoing arc leads to x is dropped, and
        its two parallel arcs lead to x directly (their gains plus that arc's). Exact: it
        only projects out the end node's time, the latest end that x allows. On ZBV, where
        W is mostly followed by another rank's F or I, that removes 31% of the nodes."""
        nodes = self.num_nodes
        # the first k fixed arcs are the frozen arcs, parallel to the k priced ones
        out_deg = np.bincount(self.src, minlength=nodes)
        out_deg += np.bincount(self.start_fz, minlength=nodes)
        out_arc = np.full(nodes, -1)
        out_arc[self.src] = np.arange(len(self.src))
        merged = np.flatnonzero(out_deg[self.end_fz] == 1)
        if len(merged) == 0:
            return
        arc = out_arc[self.end_fz[merged]]  # a fixed arc (a pair has two)
        gain = -self.cost[arc]
        target = self.dst[arc]
        self.dst[merged] = target  # the frozen arcs
        self.cost[merged] -= gain
        self.extra_fz[merged] = gain
        dropped = self.end_fz[merged]
        self.end_fz[merged] = target
        keep_arc = np.ones(len(self.src), dtype=bool)
        keep_arc[arc] = False
        keep_node = np.ones(nodes, dtype=bool)
        keep_node[dropped] = False
        new_id = np.cumsum(keep_node) - 1  # topological numbering is kept
        self.src = new_id[self.src[keep_arc]]
        self.dst = new_id[self.dst[keep_arc]]
        self.cost = self.cost[keep_arc]
        self.start_fz = new_id[self.start_fz]
        self.end_fz = new_id[self.end_fz]
        self.num_nodes = int(keep_node.sum())

    @property
    def pivots(self) -> int:
        return self.network.pivots

    def solve(self, rho: np.ndarray, tol: float) -> np.ndarray:
        """Optimal ratios of ``min T(r) + sum_v rho_v W_v r_v`` (``rho``: price per time
        unit of freezing, one per freezable node)."""
        # a unit flow never needs more than capacity 1: price >= 1 means never frozen
        self.cap[self.num_fixed :] = np.where(rho >= 1.0, netflow.INF_CAP, np.maximum(rho, 0.0))
        # warm: from earlier rounds' optimal bases. Where one still fits it is optimal (the
        # last rounds: 3 ms instead of 0.1 s at ZBV 32x256); otherwise a repaired one may
        # beat the cold start (ZBV 32x256: 0.03-0.07 s instead of 0.08-0.14 s per round)
        res = self.network.solve(self.cap, tol=tol, warm=True)
        t = -res.potential
        dur = t[self.end_fz] - t[self.start_fz] - self.off_fz - self.extra_fz
        r = np.clip((self.base_fz - dur) / self.w_fz, 0.0, 1.0)
        r[r < 1e-12] = 0.0
        r[r > 1 - 1e-12] = 1.0
        return r


class _Master:
    """The restricted master LP over the columns found so far."""

    def __init__(
        self,
        num_stages: int,
        stage_fz: np.ndarray,
        w_fz: np.ndarray,
        cap_rows: np.ndarray,
        cap_up: np.ndarray,
        budget_up: float | None,
    ) -> None:
        self.stage_fz, self.w_fz = stage_fz, w_fz
        self.cap_rows = cap_rows  # stages that have a cap row, in row order
        self.row_of_stage = np.full(num_stages, -1)
        self.row_of_stage[cap_rows] = np.arange(len(cap_rows))
        self.n_cap = len(cap_rows)
        self.budget_row = self.n_cap if budget_up is not None else -1
        self.conv_row = self.n_cap + (budget_up is not None)
        self.t_row = -1
        h = new_highs()  # no banner on stdout
        h.setOptionValue("output_flag", False)
        nrow = self.conv_row + 1
        lower = np.concatenate([np.full(nrow - 1, -np.inf), [1.0]])
        upper = np.concatenate([cap_up, [budget_up] if budget_up is not None else [], [1.0]])
        h.addRows(nrow, lower, upper, 0, np.zeros(nrow, np.int32), np.zeros(0, np.int32),
                  np.zeros(0))  # fmt: skip
        self.h = h
        self.T: list[float] = []
        self.W: list[float] = []
        self.R: list[np.ndarray] = []
        self.alpha, self.beta = 1.0, 0.0

    def add(self, r: np.ndarray, T: float) -> None:
        counts = np.bincount(self.stage_fz, weights=r, minlength=len(self.row_of_stage))
        W = float((self.w_fz * r).sum())  # no BLAS call: its threads spin
        ind = [np.flatnonzero(counts[self.cap_rows] != 0)]
        val = [counts[self.cap_rows][ind[0]]]
        if self.budget_row >= 0 and W != 0:
            ind.append(np.array([self.budget_row]))
            val.append(np.array([W]))
        if self.t_row >= 0:
            ind.append(np.array([self.t_row]))
            val.append(np.array([T]))
        ind.append(np.array([self.conv_row]))
        val.append(np.array([1.0]))
        idx = np.concatenate(ind).astype(np.int32)
        self.h.addCol(self.alpha * T + self.beta * W, 0.0, np.inf, len(idx), idx,
                      np.concatenate(val).astype(np.float64))  # fmt: skip
        self.T.append(T)
        self.W.append(W)
        self.R.append(r)

    def set_objective(self, alpha: float, beta: float) -> None:
        self.alpha, self.beta = alpha, beta
        k = len(self.T)
        cost = alpha * np.asarray(self.T) + beta * np.asarray(self.W)
        self.h.changeColsCost(k, np.arange(k, dtype=np.int32), cost)

    def add_makespan_row(self, bound: float) -> None:
        """``sum_k theta_k T_k <= bound`` (for the least-freezing solve)."""
        k = len(self.T)
        self.h.addRow(-np.inf, bound, k, np.arange(k, dtype=np.int32), np.asarray(self.T))
        self.t_row = self.conv_row + 1
        self.t_bound = bound

    def solve(self) -> tuple[np.ndarray, float, float, float, float]:
        """Run HiGHS; return (cap duals per stage, budget dual, makespan-row dual,
        convexity dual, objective)."""
        import highspy

        self.h.run()
        if self.h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            status = self.h.modelStatusToString(self.h.getModelStatus())
            raise PlanError(f"freeze master LP not solved: HiGHS status {status!r}")
        y = np.asarray(self.h.getSolution().row_dual)
        pi_stage = np.zeros(len(self.row_of_stage))
        pi_stage[self.cap_rows] = y[: self.n_cap]
        pi_b = float(y[self.budget_row]) if self.budget_row >= 0 else 0.0
        mu = float(y[self.t_row]) if self.t_row >= 0 else 0.0
        obj = self.h.getInfo().objective_function_value
        return pi_stage, pi_b, mu, float(y[self.conv_row]), obj

    def combination(self) -> tuple[np.ndarray, float]:
        theta = np.asarray(self.h.getSolution().col_value)
        theta = np.where(theta > 1e-12, theta, 0.0)
        theta /= theta.sum()
        r = np.zeros_like(self.R[0])
        for th, rk in zip(theta.tolist(), self.R):
            if th:
                r += th * rk
        return np.clip(r, 0.0, 1.0), float((theta * np.asarray(self.T)).sum())


def solve(problem: FreezeProblem) -> Solution:
    """The lexicographic optimum of ``problem`` (see :mod:`tfcompile.planner.plan`) by
    decomposition. Raises PlanError when the native solver is missing or fails."""
    t0 = time.perf_counter()
    dag, base, wpart, comm = problem.dag, problem.base, problem.wpart, problem.comm
    cap, budget = problem.cap, problem.budget
    freeze_weight, tolerance = problem.freeze_weight, problem.tolerance
    net = TimeCostFlow(problem)
    fzn, w = net.fz_nodes, net.w_fz
    stage_fz = dag.stage[fzn]
    num_stages = dag.schedule.num_stages
    counts = problem.stage_counts()
    stages = np.unique(stage_fz)
    cap_rows = stages if cap < 1.0 else np.zeros(0, np.int64)
    budget_up = None
    if budget is not None and budget < 1.0:
        budget_up = problem.frozen_work_bound()
    master = _Master(
        num_stages, stage_fz, w, cap_rows, cap * counts[cap_rows].astype(float), budget_up
    )
    r_node = np.zeros(dag.num_nodes)

    span = netflow.Makespan(dag)

    def makespan(r: np.ndarray) -> float:
        r_node[fzn] = r
        return span(base - wpart * r_node, comm)

    t_base = makespan(np.zeros(len(fzn)))
    tol_rc = 1e-12 * max(1.0, t_base)
    for r in (np.zeros(len(fzn)), np.full(len(fzn), cap), np.ones(len(fzn))):
        master.add(r, makespan(r))
    stats: dict[str, Any] = {"method": "decomposition", "subproblems": 0}
    t_sub = 0.0

    def price(alpha: float, beta: float, duals: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Best column at ``duals = (cap duals per stage..., budget, makespan row)``;
        returns (r, T, Lagrangian part ``kappa T + c r``)."""
        nonlocal t_sub
        pi, pi_b, mu = duals[:-2], duals[-2], duals[-1]
        kappa = alpha - mu
        c = np.maximum(beta * w - pi[stage_fz] - pi_b * w, 0.0)  # price per unit of ratio
        if kappa > 1e-12:
            ts = time.perf_counter()
            r = net.solve(c / (kappa * w), tol_rc)
            t_sub += time.perf_counter() - ts
            stats["subproblems"] += 1
        else:  # the makespan is free: freezing nothing is the cheapest column
            r = np.zeros(len(fzn))
        T = makespan(r)
        return r, T, kappa * T + float((c * r).sum())

    cache: dict[tuple, tuple[np.ndarray, float, float]] = {}

    def run(alpha: float, beta: float, label: str) -> float:
        """Column generation until no column has negative reduced cost (equivalently, the
        best Lagrangian bound meets the master's objective)."""
        master.set_objective(alpha, beta)
        best = -np.inf
        for it in range(MAX_ITERATIONS):
            pi, pi_b, mu, sigma, obj = master.solve()
            duals = np.concatenate([pi, [pi_b, mu]])
            key = (alpha, beta, duals.tobytes())
            if key not in cache:  # the same prices give the same column
                cache[key] = price(alpha, beta, duals)
            r, T, v = cache[key]
            best = max(best, v + float((duals * master_rhs()).sum()))
            reduced = v - sigma
            gap_tol = DW_TOL * max(1.0, abs(obj))
            if obj - best <= gap_tol or reduced >= -gap_tol:
                stats[f"{label}_iterations"] = it + 1
                return obj
            if reduced < -gap_tol:
                master.add(r, T)
        raise PlanError(f"decomposition did not converge in {MAX_ITERATIONS} iterations")

    def master_rhs() -> np.ndarray:
        rhs = np.zeros(num_stages + 2)
        rhs[cap_rows] = cap * counts[cap_rows]
        if budget_up is not None:
            rhs[-2] = budget_up
        if master.t_row >= 0:
            rhs[-1] = master.t_bound
        return rhs

    if freeze_weight > 0:
        run(1.0, freeze_weight, "weighted")
        r_w, t_w = master.combination()
        # lexicographic check: is the weighted optimum's makespan minimal? (see lp.py)
        t_min = run(1.0, 0.0, "makespan")
        fast = t_w <= t_min * (1 + tolerance) + 1e-12
    else:
        t_min = run(1.0, 0.0, "makespan")
        fast = False
    if fast:
        r_out = r_w
    else:
        master.add_makespan_row(problem.bound(t_min))
        run(0.0, 1.0, "freezing")
        r_out, _ = master.combination()
    seconds = time.perf_counter() - t0
    stats.update(
        columns=len(master.T),
        master_rows=master.h.getNumRow(),
        pivots=net.pivots,
        starts=dict(net.network.starts),
        subproblem_seconds=t_sub,
        seconds=seconds,
        fast_path=fast,
    )
    return Solution(
        ratios=r_out,
        min_makespan=t_min,
        status="Optimal",
        num_rows=int(stats["master_rows"]),
        num_cols=int(stats["columns"]),
        solve_seconds=seconds,
        stats=stats,
    )
