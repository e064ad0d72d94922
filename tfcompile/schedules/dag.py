"""ScheduleDAG: one node per action, edges for program order and data dependencies.

Edges (DESIGN.md): program order on each rank; F(s,m) -> F(s+1,m); F(s,m) -> B|I(s,m);
B|I(s+1,m) -> B|I(s,m); I(s,m) -> W(s,m). An edge between ranks carries the communication
term ``comm``. Durations are affine in the cost symbols and the freeze ratios::

    F(s,m): F_s     I(s,m): I_s     B(s,m): I_s + W_s*(1 - r_s_m)     W(s,m): W_s*(1 - r_s_m)

The numeric path (simulation, LP) uses numpy arrays: ``duration = base - wpart * ratio``.
Symbolic sympy expressions are built lazily (``duration_expr``, ``symbols``) for dumps and
inspection only.

For timing purposes every same-rank data edge is implied by program order (a valid schedule
runs the producer earlier on the same rank), so each node has at most two *timing*
predecessors: its program predecessor and at most one cross-rank data predecessor
(``prog_pred``, ``data_pred``; -1 when absent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tfcompile.errors import CostError, ScheduleError
from tfcompile.schedules.actions import Action, Schedule
from tfcompile.schedules.profile import CostProfile, as_profile

KIND_CODE = {"F": 0, "B": 1, "I": 2, "W": 3}


class ScheduleDAG:
    """The DAG of one training step of ``schedule``."""

    def __init__(
        self,
        schedule: Schedule,
        topological_order: Callable[[np.ndarray, np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        """``topological_order(prog_pred, data_pred)`` may compute :attr:`topo` faster (the
        planner passes its native twin of :meth:`topological_order_python`, which must give
        the same order; None falls back to Python)."""
        self.schedule = schedule
        self.actions: list[Action] = [a for prog in schedule.programs for a in prog]
        self.index: dict[Action, int] = {a: i for i, a in enumerate(self.actions)}
        n = len(self.actions)
        self.num_nodes = n
        self.stage = np.fromiter((a.stage for a in self.actions), np.int64, n)
        self.microbatch = np.fromiter((a.microbatch for a in self.actions), np.int64, n)
        self.kind = np.fromiter((KIND_CODE[a.kind] for a in self.actions), np.int64, n)
        self.rank = np.asarray(schedule.stage_to_rank, dtype=np.int64)[self.stage]
        # data dependencies (actions.action_deps), vectorised over a dense action-key table
        S, M = schedule.num_stages, schedule.num_microbatches
        s_, m_, k_ = self.stage, self.microbatch, self.kind
        lookup = np.full(S * M * 4, -1, dtype=np.int64)
        lookup[(s_ * M + m_) * 4 + k_] = np.arange(n)
        split = np.zeros((S, M), dtype=bool)
        is_i = k_ == KIND_CODE["I"]
        split[s_[is_i], m_[is_i]] = True
        kf, kb, ki, kw = (KIND_CODE[k] for k in "FBIW")
        us, vs, order = [], [], []

        def dep(v: np.ndarray, stage: np.ndarray, kind: Any, position: int) -> None:
            us.append(lookup[(stage * M + m_[v]) * 4 + kind])
            vs.append(v)
            order.append(np.full(len(v), position))

        v = np.flatnonzero((k_ == kf) & (s_ > 0))
        dep(v, s_[v] - 1, kf, 0)  # F(s, m) <- F(s-1, m)
        v = np.flatnonzero((k_ == kb) | (k_ == ki))
        dep(v, s_[v], kf, 0)  # B|I(s, m) <- F(s, m)
        v = v[s_[v] + 1 < S]
        dep(v, s_[v] + 1, np.where(split[s_[v] + 1, m_[v]], ki, kb), 1)  # <- B|I(s+1, m)
        v = np.flatnonzero(k_ == kw)
        dep(v, s_[v], ki, 0)  # W(s, m) <- I(s, m)
        u_all, v_all = np.concatenate(us), np.concatenate(vs)
        if np.any(u_all < 0):
            bad = int(v_all[np.argmax(u_all < 0)])
            raise ScheduleError(f"{self.actions[bad]} depends on an action the schedule lacks")
        sort = np.lexsort((np.concatenate(order), v_all))
        self.data_edges = np.stack([u_all[sort], v_all[sort]], axis=1)
        data_pred = np.full(n, -1, dtype=np.int64)
        cross = self.rank[u_all] != self.rank[v_all]
        data_pred[v_all[cross]] = u_all[cross]
        self.data_pred = data_pred
        prog_pred = np.full(n, -1, dtype=np.int64)
        i = 0
        for prog in schedule.programs:
            if prog:
                prog_pred[i + 1 : i + len(prog)] = np.arange(i, i + len(prog) - 1)
            i += len(prog)
        self.prog_pred = prog_pred
        self.freezable = (self.kind == KIND_CODE["B"]) | (self.kind == KIND_CODE["W"])
        order = None if topological_order is None else topological_order(prog_pred, data_pred)
        self.topo = order if order is not None else self.topological_order_python()
        has_succ = np.zeros(n, dtype=bool)
        has_succ[prog_pred[prog_pred >= 0]] = True
        has_succ[data_pred[data_pred >= 0]] = True
        self.sinks = np.flatnonzero(~has_succ)

    # -- structure -------------------------------------------------------------------------
    def topological_order_python(self) -> np.ndarray:
        """Kahn's order with a LIFO stack (depth first along program chains); the planner's
        pricing network numbers its nodes in this order, so its pivot sequence depends on it."""
        n = self.num_nodes
        indeg = (self.prog_pred >= 0).astype(np.int64) + (self.data_pred >= 0)
        succ: list[list[int]] = [[] for _ in range(n)]
        for v in np.flatnonzero(self.prog_pred >= 0).tolist():
            succ[int(self.prog_pred[v])].append(v)
        for v in np.flatnonzero(self.data_pred >= 0).tolist():
            succ[int(self.data_pred[v])].append(v)
        indeg_l = indeg.tolist()
        stack = [v for v in range(n) if indeg_l[v] == 0]
        order: list[int] = []
        while stack:
            u = stack.pop()
            order.append(u)
            for v in succ[u]:
                indeg_l[v] -= 1
                if indeg_l[v] == 0:
                    stack.append(v)
        return np.array(order, dtype=np.int64)

    def edges(self, include_implied: bool = False) -> list[tuple[int, int, str]]:
        """Edges as ``(u, v, kind)`` with kind ``program``, ``data`` or ``comm`` (cross-rank).

        Same-rank data edges are implied by program order and only listed with
        ``include_implied=True``.
        """
        out = [(int(p), v, "program") for v, p in enumerate(self.prog_pred.tolist()) if p >= 0]
        for u, v in self.data_edges.tolist():
            if self.rank[u] != self.rank[v]:
                out.append((u, v, "comm"))
            elif include_implied:
                out.append((u, v, "data"))
        return out

    # -- costs -----------------------------------------------------------------------------
    def bind(
        self, costs: CostProfile | Mapping[str, Any] | str
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Numeric ``(base, wpart, comm)``: duration of node v is ``base[v] - wpart[v]*r[v]``."""
        prof = as_profile(costs)
        arr = prof.arrays(self.schedule.num_stages, self.schedule.num_microbatches)
        s, m, k = self.stage, self.microbatch, self.kind
        f, i_, w = arr["F"][s, m], arr["I"][s, m], arr["W"][s, m]
        base = np.where(k == 0, f, np.where(k == 1, i_ + w, np.where(k == 2, i_, w)))
        wpart = np.where(self.freezable, w, 0.0)
        return base.astype(np.float64), wpart.astype(np.float64), float(prof.comm)

    def ratio_vector(self, ratios: Mapping[tuple[int, int], float] | None) -> np.ndarray:
        """Per-node ratio array from ``{(stage, microbatch): r}`` (missing keys are 0)."""
        r = np.zeros(self.num_nodes)
        if not ratios:
            return r
        nodes = np.flatnonzero(self.freezable)
        for v in nodes.tolist():
            key = (int(self.stage[v]), int(self.microbatch[v]))
            if key in ratios:
                val = float(ratios[key])
                if not (0.0 <= val <= 1.0):
                    raise CostError(
                        f"freeze ratio of {self.actions[v]} must be in [0, 1], got {val}"
                    )
                r[v] = val
        return r

    # -- symbolic view (lazy; never on the numeric hot path) -------------------------------
    def symbols(self) -> dict[str, Any]:
        """Sympy symbols: ``F_s``, ``I_s``, ``W_s`` per stage, ``comm``, ``r_s_m``."""
        import sympy

        p, m = self.schedule.num_stages, self.schedule.num_microbatches
        syms: dict[str, Any] = {"comm": sympy.Symbol("comm", nonnegative=True)}
        for s in range(p):
            for k in ("F", "I", "W"):
                syms[f"{k}_{s}"] = sympy.Symbol(f"{k}_{s}", nonnegative=True)
        for v in np.flatnonzero(self.freezable).tolist():
            name = f"r_{self.stage[v]}_{self.microbatch[v]}"
            syms[name] = sympy.Symbol(name, nonnegative=True)
        del m
        return syms

    def duration_expr(self, action: Action | int) -> Any:
        """Affine sympy expression of an action's duration, e.g. ``I_2 + W_2*(1 - r_2_5)``."""
        import sympy

        v = action if isinstance(action, int) else self.index[Action(*action)]
        a = self.actions[v]
        s = a.stage
        f, i, w = (sympy.Symbol(f"{k}_{s}", nonnegative=True) for k in ("F", "I", "W"))
        r = sympy.Symbol(f"r_{s}_{a.microbatch}", nonnegative=True)
        return {"F": f, "I": i, "B": i + w * (1 - r), "W": w * (1 - r)}[a.kind]

    def edge_expr(self, u: int, v: int) -> Any:
        """Communication term of edge u -> v (``comm`` across ranks, else 0)."""
        import sympy

        return sympy.Symbol("comm", nonnegative=True) if self.rank[u] != self.rank[v] else 0

    def __repr__(self) -> str:
        return (
            f"ScheduleDAG({self.schedule.name!r}, nodes={self.num_nodes}, "
            f"comm_edges={int((self.data_pred >= 0).sum())})"
        )
