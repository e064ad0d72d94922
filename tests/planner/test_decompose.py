"""The decomposition planner and its native network simplex: exact against HiGHS."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcompile.errors import PlanError
from tfcompile.planner import decompose, netflow
from tfcompile.planner import plan as plan_mod
from tfcompile.planner.lp import _Model
from tfcompile.planner.plan import plan_freeze
from tfcompile.planner.problem import FreezeProblem, schedule_dag
from tfcompile.schedules import build
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.profile import CostProfile
from tfcompile.schedules.simulate import longest_path

pytestmark = pytest.mark.skipif(not netflow.available(), reason="no C compiler for netflow")


def _random_network(rng: np.random.Generator, n: int):
    """A DAG on nodes 0..n-1 with an uncapacitated spine and random extra arcs."""
    src, dst, cap, cost = [], [], [], []
    for i in range(n - 1):
        src.append(i), dst.append(i + 1), cap.append(netflow.INF_CAP)
        cost.append(-rng.uniform(0, 10))
    for _ in range(int(rng.integers(0, 3 * n))):
        a, b = sorted(rng.choice(n, 2, replace=False).tolist())
        src.append(a), dst.append(b)
        cap.append(
            netflow.INF_CAP
            if rng.random() < 0.4
            else float(rng.choice([0.0, 0.25, 1.0, rng.uniform()]))
        )
        cost.append(-rng.uniform(0, 20) if rng.random() < 0.8 else rng.uniform(0, 5))
    return np.array(src), np.array(dst), np.array(cap), np.array(cost)


@pytest.mark.parametrize("seed", range(40))
def test_unit_min_cost_flow_is_optimal(seed):
    """Against HiGHS (scipy linprog) on random DAGs; the flow is feasible and the potentials
    certify it (complementary slackness)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    src, dst, cap, cost = _random_network(rng, n)
    res = netflow.unit_min_cost_flow(src, dst, cap, cost, n)
    m = len(src)
    a = coo_matrix(
        (np.r_[np.ones(m), -np.ones(m)], (np.r_[src, dst], np.r_[np.arange(m), np.arange(m)])),
        shape=(n, m),
    )
    b = np.zeros(n)
    b[0], b[-1] = 1.0, -1.0
    ref = linprog(cost, A_eq=a, b_eq=b, bounds=list(zip(np.zeros(m), np.minimum(cap, 2.0))),
                  method="highs")  # fmt: skip
    assert cost @ res.flow == pytest.approx(ref.fun, abs=1e-9)
    balance = np.bincount(src, res.flow, n) - np.bincount(dst, res.flow, n)
    np.testing.assert_allclose(balance, b, atol=1e-12)
    assert np.all(res.flow >= -1e-12) and np.all(res.flow <= cap + 1e-12)
    rc = cost + res.potential[src] - res.potential[dst]
    at_lower, at_upper = res.flow <= 1e-12, res.flow >= cap - 1e-12
    assert np.all((at_lower & (rc >= -1e-9)) | (at_upper & (rc <= 1e-9)) | (np.abs(rc) <= 1e-9))


@pytest.mark.parametrize("seed", range(20))
def test_warm_start_after_capacity_changes(seed):
    """Re-solving with the previous basis gives the cold optimum, whether the old basis still
    fits the new capacities (no pivot) or not (cold start)."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 40))
    src, dst, cap, cost = _random_network(rng, n)
    net = netflow.UnitFlowNetwork(src, dst, cost, n)
    first = net.solve(cap)
    again = net.solve(cap, warm=True)  # same capacities: the old basis is optimal as it is
    assert again.pivots == 0 and cost @ again.flow == pytest.approx(cost @ first.flow, abs=1e-12)
    for scale in (1e-6, 1e-2, 0.5):
        capped = cap < 1e17
        cap = cap.copy()
        cap[capped] = np.clip(cap[capped] * (1 + scale * rng.uniform(-1, 1, capped.sum())), 0, 1)
        warm = net.solve(cap, warm=True)
        cold = netflow.unit_min_cost_flow(src, dst, cap, cost, n)
        assert cost @ warm.flow == pytest.approx(cost @ cold.flow, abs=1e-9)
        assert np.all(warm.flow >= -1e-12) and np.all(warm.flow <= cap + 1e-12)


def test_warm_start_when_a_saturated_arc_loses_its_capacity():
    """An arc at its upper bound that becomes uncapacitated cannot keep its flow: the warm
    solve must still give the cold optimum with the unit balanced (a basis holding that arc
    at 1e18 would lose the balance to rounding)."""
    src, dst = np.array([0, 0, 1, 1, 2]), np.array([1, 2, 2, 3, 3])
    cost = np.array([-5.0, -1.0, -5.0, -1.0, -1.0])
    net = netflow.UnitFlowNetwork(src, dst, cost, 4)
    inf = netflow.INF_CAP
    net.solve(np.array([inf, inf, 0.5, inf, inf]))  # arc 1->2 saturated at 0.5
    warm = net.solve(np.array([inf, inf, inf, inf, inf]), warm=True)
    cold = netflow.unit_min_cost_flow(src, dst, np.full(5, inf), cost, 4)
    assert cost @ warm.flow == pytest.approx(cost @ cold.flow)
    balance = np.bincount(src, warm.flow, 4) - np.bincount(dst, warm.flow, 4)
    np.testing.assert_allclose(balance, [1, 0, 0, -1], atol=1e-12)


def _twinned_network(rng: np.random.Generator, n: int):
    """A random network where some capacitated arcs get an uncapacitated twin (parallel, with
    less gain), like the planner's unfrozen/frozen pairs."""
    src, dst, cap, cost = _random_network(rng, n)
    pick = np.flatnonzero((cap < 1e17) & (rng.random(len(src)) < 0.7))
    twin = np.full(len(src) + len(pick), -1)
    twin[pick] = len(src) + np.arange(len(pick))
    extra = cost[pick] + rng.uniform(0.5, 5.0, len(pick))
    return (np.r_[src, src[pick]], np.r_[dst, dst[pick]], np.r_[cap, np.full(len(pick), 1e18)],
            np.r_[cost, extra], twin)  # fmt: skip


def _assert_optimal(res, src, dst, cap, cost, n):
    """Flow feasible and balanced, potentials certify it (the planner reads ratios from
    them), value equal to a cold solve's."""
    cold = netflow.unit_min_cost_flow(src, dst, cap, cost, n)
    assert cost @ res.flow == pytest.approx(cost @ cold.flow, abs=1e-9)
    assert np.all(res.flow >= -1e-12) and np.all(res.flow <= cap + 1e-12)
    balance = np.bincount(src, res.flow, n) - np.bincount(dst, res.flow, n)
    np.testing.assert_allclose(balance[[0, -1]], [1, -1], atol=1e-12)
    np.testing.assert_allclose(balance[1:-1], 0, atol=1e-12)
    rc = cost + res.potential[src] - res.potential[dst]
    at_lower, at_upper = res.flow <= 1e-12, res.flow >= cap - 1e-12
    assert np.all((at_lower & (rc >= -1e-9)) | (at_upper & (rc <= 1e-9)) | (np.abs(rc) <= 1e-9))


@pytest.mark.parametrize("twins", [True, False])
@pytest.mark.parametrize("seed", range(15))
def test_repaired_warm_starts_are_optimal(seed, twins, monkeypatch):
    """Warm starts forced through the repair (every pool basis, any violation, no work
    budget) reach the cold optimum after capacities rise, fall, vanish and go to zero."""
    monkeypatch.setattr(netflow, "REPAIR_FACTOR", np.inf)
    monkeypatch.setattr(netflow, "WARM_BUDGET", 0.0)
    rng = np.random.default_rng(500 + seed)
    n = int(rng.integers(5, 40))
    if twins:
        src, dst, cap, cost, twin = _twinned_network(rng, n)
    else:
        (src, dst, cap, cost), twin = _random_network(rng, n), None
    net = netflow.UnitFlowNetwork(src, dst, cost, n, twin=twin)
    net.solve(cap)
    capped = np.flatnonzero(cap < 1e17)
    for step in range(6):
        cap = cap.copy()
        change = capped[rng.random(len(capped)) < 0.6]
        cap[change] = rng.choice([0.0, 0.05, 0.3, 0.7, 1e18], len(change))
        if step % 2:  # small moves, as between the planner's last rounds
            cap[capped] = np.clip(cap[capped] * rng.uniform(0.9, 1.1, len(capped)), 0, 1e18)
        _assert_optimal(net.solve(cap, warm=True), src, dst, cap, cost, n)
    assert net.starts["repaired"] + net.starts["reused"] > 0


def test_pool_reuses_an_older_basis():
    """Capacities A, then B, then A again: A's basis, second in the pool, is optimal as it
    stands (no pivot), though B's does not fit A."""
    src, dst = np.array([0, 0, 1, 1, 2]), np.array([1, 2, 2, 3, 3])
    cost = np.array([-5.0, -1.0, -5.0, -1.0, -1.0])
    net = netflow.UnitFlowNetwork(src, dst, cost, 4)
    inf = netflow.INF_CAP
    a, b = np.array([inf, inf, 0.2, inf, inf]), np.full(5, inf)  # b: 1->2 carries the unit
    net.solve(a)
    net.solve(b, warm=True)
    again = net.solve(a, warm=True)
    assert again.pivots == 0 and net.last_start == ("reused", 1)
    _assert_optimal(again, src, dst, a, cost, 4)


def test_repair_over_budget_starts_cold_and_stops_repairing(monkeypatch):
    """A repaired start over the work budget is dropped for the cold start (still optimal),
    and that network repairs no more."""
    monkeypatch.setattr(netflow, "REPAIR_FACTOR", np.inf)
    monkeypatch.setattr(netflow, "WARM_BUDGET", 1e-9)  # any repaired start is over budget
    abandoned = 0
    for seed in range(10):
        rng = np.random.default_rng(700 + seed)
        n = int(rng.integers(10, 40))
        src, dst, cap, cost, twin = _twinned_network(rng, n)
        net = netflow.UnitFlowNetwork(src, dst, cost, n, twin=twin)
        net.solve(cap)
        kinds = []
        for _ in range(5):
            cap = cap.copy()
            capped = cap < 1e17
            cap[capped] = rng.uniform(0, 1, capped.sum())
            _assert_optimal(net.solve(cap, warm=True), src, dst, cap, cost, n)
            kinds.append(net.last_start[0])
        assert "repaired" not in kinds and kinds.count("abandoned") <= 1
        assert net.repairs_pay == ("abandoned" not in kinds)
        abandoned += "abandoned" in kinds
    assert abandoned >= 2  # deterministic seeds; the others stayed cold or reused a basis


def test_twins_are_checked():
    src, dst, cost = np.array([0, 0, 1]), np.array([1, 1, 2]), np.zeros(3)
    with pytest.raises(PlanError, match="same two nodes"):
        netflow.UnitFlowNetwork(src, dst, cost, 3, twin=[2, -1, -1])
    with pytest.raises(PlanError, match="one entry per arc"):
        netflow.UnitFlowNetwork(src, dst, cost, 3, twin=[1, -1])
    with pytest.raises(PlanError, match="one to one"):
        netflow.UnitFlowNetwork(src, dst, cost, 3, twin=[1, 0, -1])


def test_unit_min_cost_flow_rejects_bad_networks():
    with pytest.raises(PlanError, match="lower to a higher"):
        netflow.unit_min_cost_flow([1], [0], [netflow.INF_CAP], [0.0], 2)
    with pytest.raises(PlanError, match="unreachable"):  # node 1 only over a capped arc
        netflow.unit_min_cost_flow([0, 1, 0], [1, 2, 2], [0.5, netflow.INF_CAP, 1e18],
                                   [-1.0, 0.0, 0.0], 3)  # fmt: skip


def test_native_makespan_matches_simulation():
    dag = ScheduleDAG(build("ZBV", 8, 16))
    rng = np.random.default_rng(0)
    dur = rng.uniform(0.5, 2.0, dag.num_nodes)
    span = netflow.Makespan(dag)
    assert span(dur, 0.3) == pytest.approx(longest_path(dag, dur, 0.3)[1].max(), rel=1e-12)


@pytest.mark.parametrize(
    "name,stages,m,kw",
    [("GPipe", 4, 8, {}), ("1F1B", 8, 16, {}), ("Interleaved1F1B", 8, 8, {"ranks": 4}),
     ("ZBH1", 6, 12, {}), ("ZBV", 8, 16, {})],
)  # fmt: skip
@pytest.mark.parametrize("split", [False, True])
def test_native_topological_order_matches_python(name, stages, m, kw, split):
    """The pricing network's node numbering (and so its pivot sequence) follows this order,
    so the native order must be the Python one exactly, not just some topological order."""
    sched = build(name, stages, m, **kw)
    dag = ScheduleDAG(sched.with_split_backward() if split else sched)
    native = schedule_dag(dag.schedule).topo
    assert np.array_equal(native, dag.topological_order_python())
    assert sorted(native.tolist()) == list(range(dag.num_nodes))


def test_native_topological_order_stops_at_a_cycle():
    order = netflow.topological_order(np.array([-1, 2, 1]), np.array([-1, -1, -1]))
    assert order.tolist() == [0]


@pytest.mark.parametrize("name,p,m", [("1F1B", 4, 8), ("ZBV", 6, 12), ("Interleaved1F1B", 8, 8)])
def test_pricing_subproblem_matches_highs(name, p, m):
    """The contracted time-cost network solves ``min T + sum rho W r`` exactly: same optimum
    as the HiGHS LP of the full DAG without caps."""
    rng = np.random.default_rng(p * m)
    stages = [{k: float(rng.uniform(0.5, 2.0)) for k in ("F", "I", "W")} for _ in range(p)]
    dag = ScheduleDAG(build(name, p, m))
    problem = FreezeProblem.bind(dag, CostProfile(stages, 0.2), 1.0)
    base, wpart, comm = problem.base, problem.wpart, problem.comm
    net = decompose.TimeCostFlow(problem)
    model = _Model(problem, None)
    rows = np.arange(model.num_edge_rows)
    for trial in range(4):
        rho = rng.choice([0.001, 0.3, 0.9, 1.5], size=len(net.fz_nodes))
        r = net.solve(rho, 1e-12)
        r_node = np.zeros(dag.num_nodes)
        r_node[net.fz_nodes] = r
        ours = longest_path(dag, base - wpart * r_node, comm)[1].max() + float(
            (rho * net.w_fz * r).sum()
        )
        h = model.highs(rows, 0.0)
        cost_idx = (model.n_anc + np.arange(len(model.fz_nodes))).astype(np.int32)
        h.changeColsCost(len(cost_idx), cost_idx, rho * model.wpart_fz)
        h.run()
        assert ours == pytest.approx(h.getInfo().objective_function_value, rel=1e-9), trial


def _frozen_work(plan, prof):
    w = prof.arrays(plan.schedule.num_stages, plan.schedule.num_microbatches)["W"]
    return sum(w[s, mb] * r for (s, mb), r in plan.ratios.items())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["GPipe", "1F1B", "Interleaved1F1B", "ZBH1", "ZBV"]),
    p=st.integers(2, 5),
    extra=st.integers(0, 6),
    seed=st.integers(0, 10**6),
    cap=st.floats(0.1, 1.0),
    budget=st.one_of(st.none(), st.floats(0.05, 0.9)),
)
def test_decomposition_equals_lp(name, p, extra, seed, cap, budget):
    """Same minimal makespan and same least cost-weighted freezing as the HiGHS LP, caps and
    budget respected, on random schedules and uneven costs."""
    rng = np.random.default_rng(seed)
    stages_n = 2 * p if name in ("ZBV", "Interleaved1F1B") else p
    m = {"ZBV": 2 * p, "Interleaved1F1B": p}.get(name, p) + extra
    if name == "Interleaved1F1B":
        m = p * (1 + extra // 3)
    sched = build(name, stages_n, m, ranks=p if name == "Interleaved1F1B" else None)
    stages = [{k: float(rng.uniform(0.3, 2.0)) for k in ("F", "I", "W")} for _ in range(stages_n)]
    prof = CostProfile(stages, float(rng.uniform(0.0, 0.3)))
    lp = plan_freeze(sched, prof, max_freeze_ratio=cap, budget=budget, method="lp")
    dw = plan_freeze(sched, prof, max_freeze_ratio=cap, budget=budget, method="decomposition")
    assert dw.stats["method"] == "decomposition"
    assert dw.makespan == pytest.approx(lp.makespan, rel=1e-7)
    assert _frozen_work(dw, prof) == pytest.approx(_frozen_work(lp, prof), rel=1e-6, abs=1e-7)
    assert all(avg <= cap + 1e-9 for avg in dw.stage_average())
    if budget is not None:
        total_w = prof.arrays(stages_n, m)["W"].sum()
        assert _frozen_work(dw, prof) <= budget * total_w * (1 + 1e-9) + 1e-9


@pytest.mark.parametrize("drift", [0.0, 0.02])
def test_decomposition_with_repaired_warm_starts_equals_lp(drift):
    """A ZBV plan large enough that later pricing rounds start from repaired bases of
    earlier ones: still the LP's makespan and least freezing."""
    rng = np.random.default_rng(11)
    base = {"F": 10.4, "I": 10.2, "W": 7.7}
    stages = [{k: v * (1 + drift * rng.uniform(-1, 1)) for k, v in base.items()} for _ in range(12)]
    stages[0] = {k: v * 1.1 for k, v in stages[0].items()}
    stages[-1] = {k: v * 1.2 for k, v in stages[-1].items()}
    prof = CostProfile(stages, 0.4)
    sched = build("ZBV", 12, 24)
    dw = plan_freeze(sched, prof, 0.8, method="decomposition")
    lp = plan_freeze(sched, prof, 0.8, method="lp")
    assert dw.stats["starts"]["repaired"] > 0
    assert dw.makespan == pytest.approx(lp.makespan, rel=1e-9)
    assert _frozen_work(dw, prof) == pytest.approx(_frozen_work(lp, prof), rel=1e-7)


def test_series_reduction_is_exact(monkeypatch):
    """Merging end nodes into their single successor removes nodes on ZBV (W is mostly
    followed by another rank's F or I) and leaves every pricing optimum unchanged."""
    dag = ScheduleDAG(build("ZBV", 8, 16))
    problem = FreezeProblem.bind(dag, CostProfile([{"F": 1.0, "I": 1.1, "W": 0.8}] * 8, 0.05), 1)
    base, wpart, comm = problem.base, problem.wpart, problem.comm
    merged = decompose.TimeCostFlow(problem)
    monkeypatch.setattr(decompose.TimeCostFlow, "_merge_series_ends", lambda self: None)
    plain = decompose.TimeCostFlow(problem)
    assert merged.num_nodes < 0.8 * plain.num_nodes
    span = netflow.Makespan(dag)
    rng = np.random.default_rng(3)
    for _ in range(5):
        rho = rng.choice([0.0, 0.01, 0.3, 0.9, 2.0], size=len(merged.fz_nodes))
        values = []
        for net in (merged, plain):
            r = net.solve(rho, 1e-12)
            r_node = np.zeros(dag.num_nodes)
            r_node[net.fz_nodes] = r
            values.append(span(base - wpart * r_node, comm) + float((rho * net.w_fz * r).sum()))
        assert values[0] == pytest.approx(values[1], rel=1e-10)


@pytest.mark.parametrize("zero_w", [0, -1])
def test_stage_without_weight_gradient_work(zero_w):
    """A stage whose W costs nothing has nothing to freeze (no cap row, no priced arcs)."""
    stages = [{"F": 1.0, "I": 1.0, "W": 0.8} for _ in range(4)]
    stages[zero_w]["W"] = 0.0
    prof = CostProfile(stages, 0.1)
    sched = build("1F1B", 4, 8)
    lp = plan_freeze(sched, prof, 0.6, method="lp")
    dw = plan_freeze(sched, prof, 0.6, method="decomposition")
    assert dw.makespan == pytest.approx(lp.makespan, rel=1e-7)
    assert not any(s == zero_w % 4 for s, _ in dw.ratios)


def test_auto_uses_lp_without_native_solver(monkeypatch):
    monkeypatch.setattr(netflow, "available", lambda: False)
    plan = plan_freeze(build("1F1B", 3, 6), CostProfile.uniform(3), 0.5)
    assert plan.stats["method"] == "lp"


def test_auto_decomposes_large_instances_only():
    small = plan_freeze(build("1F1B", 3, 6), CostProfile.uniform(3), 0.5)
    large = plan_freeze(build("1F1B", 8, 32), CostProfile.uniform(8), 0.5)
    assert (small.stats["method"], large.stats["method"]) == ("lp", "decomposition")


def test_auto_falls_back_to_lp_when_decomposition_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise PlanError("network simplex stopped at the pivot limit (1)")

    monkeypatch.setattr(decompose, "solve", broken)
    monkeypatch.setattr(plan_mod, "AUTO_DECOMPOSE_MIN", 0)
    plan = plan_freeze(build("1F1B", 3, 6), CostProfile.uniform(3), 0.5)
    assert plan.stats["method"] == "lp"
    assert "pivot limit" in plan.stats["fallback"]
    with pytest.raises(PlanError, match="pivot limit"):
        plan_freeze(build("1F1B", 3, 6), CostProfile.uniform(3), 0.5, method="decomposition")


def test_unknown_method():
    with pytest.raises(PlanError, match="method must be"):
        plan_freeze(build("1F1B", 2, 2), CostProfile.uniform(2), 0.5, method="simplex")


def test_planner_replans_with_the_decomposition():
    from tfcompile.planner import FreezePlanner

    sched = build("ZBV", 4, 16)
    planner = FreezePlanner(sched, max_freeze_ratio=0.7, method="decomposition")
    rng = np.random.default_rng(1)
    for _ in range(3):
        stages = [{k: float(rng.uniform(0.5, 2.0)) for k in ("F", "I", "W")} for _ in range(4)]
        prof = CostProfile(stages, 0.1)
        again = planner.plan(prof)
        fresh = plan_freeze(sched, prof, max_freeze_ratio=0.7, method="lp")
        assert again.stats["method"] == "decomposition"
        assert again.makespan == pytest.approx(fresh.makespan, rel=1e-7)
        assert _frozen_work(again, prof) == pytest.approx(_frozen_work(fresh, prof), rel=1e-6)


def test_the_schedule_dag_does_not_import_the_planner():
    """The schedule IR sits below the planner: its DAG (and simulator) load without it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tfcompile.schedules import build\n"
        "from tfcompile.schedules.simulate import simulate\n"
        "from tfcompile.schedules.profile import CostProfile\n"
        "simulate(build('1F1B', 2, 4), CostProfile.uniform(2))\n"
        "print(sorted(m for m in sys.modules if m.startswith('tfcompile.planner')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
