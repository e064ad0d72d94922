"""Paper-style reference formulation of the freeze LP (for benchmarking only).

Written from the description of TimelyFreeze's public implementation, not from its code:
one start variable and one duration variable per action, the freeze ratio implied by the
duration of each freezable action (``d = w_max - r (w_max - w_min)``), every DAG edge as a
constraint (program order and all data edges, including the ones implied by program order),
one makespan row per rank (its last action), a per-stage cap on the average ratio, and a
single solve of ``999999 * T + sum(r)`` with ``scipy.optimize.linprog(method="highs")``. The
constraint matrix is passed sparse (a dense one would not fit at 32 stages x 256 microbatches).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tfcompile.schedules.actions import Action, Schedule, action_deps
from tfcompile.schedules.profile import as_profile

MAKESPAN_WEIGHT = 999999.0


def reference_plan(schedule: Schedule, costs: Any, max_freeze_ratio: float = 0.9) -> dict:
    """Solve the reference LP; return makespan, ratios, build and solve seconds."""
    from scipy import sparse
    from scipy.optimize import linprog

    t0 = time.perf_counter()
    prof = as_profile(costs)
    arr = prof.arrays(schedule.num_stages, schedule.num_microbatches)
    actions = [a for prog in schedule.programs for a in prog]
    idx = {a: i for i, a in enumerate(actions)}
    n = len(actions)
    split = {(a.stage, a.microbatch): a.kind == "I" for a in actions if a.kind in ("B", "I")}
    # variables: s_0..s_{n-1}, d_0..d_{n-1}, T
    nv = 2 * n + 1
    T = 2 * n
    d_lo = np.zeros(n)
    d_hi = np.zeros(n)
    freezable = np.zeros(n, dtype=bool)
    for i, a in enumerate(actions):
        f, i_, w = (arr[k][a.stage, a.microbatch] for k in ("F", "I", "W"))
        hi = {"F": f, "I": i_, "B": i_ + w, "W": w}[a.kind]
        lo = {"F": f, "I": i_, "B": i_, "W": 0.0}[a.kind]
        d_lo[i], d_hi[i] = lo, hi
        freezable[i] = a.kind in ("B", "W") and hi > lo
    rows, cols, vals, rhs = [], [], [], []
    r = 0

    def edge(u: int, v: int, c: float) -> None:
        # s_u + d_u + c <= s_v   ->   s_u + d_u - s_v <= -c
        nonlocal r
        rows.extend((r, r, r))
        cols.extend((u, n + u, v))
        vals.extend((1.0, 1.0, -1.0))
        rhs.append(-c)
        r += 1

    rank = np.asarray(schedule.stage_to_rank)
    for prog in schedule.programs:
        for a, b in zip(prog[:-1], prog[1:]):
            edge(idx[a], idx[b], 0.0)
    for v, a in enumerate(actions):
        for dep in action_deps(a, split, schedule.num_stages):
            u = idx[dep]
            edge(u, v, prof.comm if rank[dep.stage] != rank[a.stage] else 0.0)
    for prog in schedule.programs:  # s_v + d_v <= T for the last action of each rank
        if not prog:
            continue
        v = idx[prog[-1]]
        rows.extend((r, r, r))
        cols.extend((v, n + v, T))
        vals.extend((1.0, 1.0, -1.0))
        rhs.append(0.0)
        r += 1
    # per-stage cap: sum_m r <= cap * count, with r = (d_hi - d) / (d_hi - d_lo)
    fz = np.flatnonzero(freezable)
    width = d_hi[fz] - d_lo[fz]
    for s in range(schedule.num_stages):
        sel = fz[[actions[v].stage == s for v in fz]]
        if len(sel) == 0:
            continue
        wd = d_hi[sel] - d_lo[sel]
        # sum (d_hi - d)/wd <= cap*k  ->  -sum d/wd <= cap*k - sum d_hi/wd
        rows.extend([r] * len(sel))
        cols.extend((n + sel).tolist())
        vals.extend((-1.0 / wd).tolist())
        rhs.append(max_freeze_ratio * len(sel) - float(np.sum(d_hi[sel] / wd)))
        r += 1
    a_ub = sparse.csr_matrix((vals, (rows, cols)), shape=(r, nv))
    cost = np.zeros(nv)
    cost[T] = MAKESPAN_WEIGHT
    cost[n + fz] = -1.0 / width  # + sum r = sum (d_hi - d)/width  (constant dropped)
    bounds = [(0, None)] * n + list(zip(d_lo, d_hi)) + [(0, None)]
    t_build = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = linprog(cost, A_ub=a_ub, b_ub=np.array(rhs), bounds=bounds, method="highs")
    t_solve = time.perf_counter() - t1
    if res.status != 0:
        raise RuntimeError(f"reference LP failed: {res.message}")
    d = res.x[n : 2 * n]
    ratios = {
        (actions[v].stage, actions[v].microbatch): float((d_hi[v] - d[v]) / (d_hi[v] - d_lo[v]))
        for v in fz
    }
    return {
        "makespan": float(res.x[T]),
        "ratios": ratios,
        "build_seconds": t_build,
        "solve_seconds": t_solve,
        "rows": r,
        "cols": nv,
    }


__all__ = ["Action", "reference_plan"]
