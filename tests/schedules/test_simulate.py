"""Cost profiles, the DAG and the ASAP simulator against textbook bubble formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfcompile
from tfcompile.errors import CostError
from tfcompile.schedules import build
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.profile import CostProfile
from tfcompile.schedules.simulate import simulate

costs_st = st.tuples(
    st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),  # F
    st.sampled_from([0.5, 1.0, 1.5, 2.0]),  # I
    st.sampled_from([0.25, 0.5, 1.0]),  # W
)


def _uniform(p, f, i, w, comm=0.0):
    return CostProfile.uniform(p, F=f, I=i, W=w, comm=comm)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), m=st.integers(1, 24), c=costs_st,
       name=st.sampled_from(["GPipe", "1F1B"]))  # fmt: skip
def test_gpipe_1f1b_bubble_formula(p, m, c, name):
    f, i, w = c
    tl = simulate(build(name, p, m), _uniform(p, f, i, w))
    b = i + w
    assert tl.makespan == pytest.approx((m + p - 1) * (f + b))
    for frac in tl.bubble_fraction:
        assert frac == pytest.approx((p - 1) / (m + p - 1))


@settings(max_examples=30, deadline=None)
@given(p=st.integers(2, 6), v=st.integers(2, 3), k=st.integers(1, 4), c=costs_st)
def test_interleaved_bubble_formula(p, v, k, c):
    f, i, w = c
    m = p * k
    tl = simulate(build("Interleaved1F1B", p * v, m, ranks=p), _uniform(p * v, f, i, w))
    ideal = v * m * (f + i + w)  # per-rank busy time
    assert tl.busy[0] == pytest.approx(ideal)
    assert (tl.makespan - ideal) / ideal == pytest.approx((p - 1) / (v * m))


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), extra=st.integers(0, 16), c=costs_st)
def test_zbh1_bubble_formula(p, extra, c):
    """Qi et al.: ZB-H1 bubble (p-1)(F + B - W), B the input-gradient time, when W <= F, B."""
    f, i, w = c
    if w > min(f, i):
        w = min(f, i)
    m = p + extra
    tl = simulate(build("ZBH1", p, m), _uniform(p, f, i, w))
    assert tl.makespan - m * (f + i + w) == pytest.approx((p - 1) * (f + i - w))


def test_zbv_beats_1f1b_and_zbh1():
    c8 = _uniform(8, 1.0, 1.0, 1.0)
    zbv = simulate(build("ZBV", 8, 16), c8)
    # same model on 4 ranks, 2 stages per rank: 1F1B on 4 stages of double cost
    c4 = _uniform(4, 2.0, 2.0, 2.0)
    assert zbv.makespan < simulate(build("ZBH1", 4, 16), c4).makespan
    assert zbv.makespan < simulate(build("1F1B", 4, 16), c4).makespan


def test_timeline_fields_and_critical_path():
    sched = build("1F1B", 4, 8)
    tl = tfcompile.simulate(sched, _uniform(4, 1.0, 2.0, 1.0, comm=0.25))
    a = sched.programs[0][0]
    assert tl.start[a] == 0.0 and tl.end[a] == 1.0
    assert len(tl.busy) == 4 and all(0 <= b < 1 for b in tl.bubble_fraction)
    path = tl.critical_path
    assert path[0] == a
    # the critical path is contiguous and its length is the makespan
    length = 0.0
    for x, y in zip(path, path[1:]):
        assert tl.end[x] <= tl.start[y] + 1e-12
        length += tl.end[x] - tl.start[x] + (tl.start[y] - tl.end[x])
    length += tl.end[path[-1]] - tl.start[path[-1]]
    assert length == pytest.approx(tl.makespan)
    assert tl.end[path[-1]] == pytest.approx(tl.makespan)
    assert "rank 3" in tl.summary()


def test_comm_lengthens_makespan():
    sched = build("1F1B", 4, 8)
    t0 = simulate(sched, _uniform(4, 1, 1, 1)).makespan
    t1 = simulate(sched, _uniform(4, 1, 1, 1, comm=0.5)).makespan
    # the first forward and last backward cross 3 links each
    assert t1 >= t0 + 6 * 0.5 - 1e-9


def test_ratios_shorten_freezable_actions():
    sched = build("GPipe", 2, 2)
    c = _uniform(2, 1, 1, 1)
    tl = simulate(sched, c, {(1, 0): 1.0, (1, 1): 0.5})
    from tfcompile.schedules.actions import Action

    assert tl.end[Action(1, "B", 0)] - tl.start[Action(1, "B", 0)] == pytest.approx(1.0)
    assert tl.end[Action(1, "B", 1)] - tl.start[Action(1, "B", 1)] == pytest.approx(1.5)
    assert tl.ratios == {(1, 0): 1.0, (1, 1): 0.5}
    with pytest.raises(CostError, match=r"\[0, 1\]"):
        simulate(sched, c, {(1, 0): 1.5})


def test_per_microbatch_costs():
    prof = CostProfile.from_dict({
        "stages": [{"F": 1, "I": 1, "W": 1}, {"F": 1, "I": 1, "W": 1}],
        "microbatches": [[{"F": 3}, {}], [{}, {"W": 2}]],
    })  # fmt: skip
    arr = prof.arrays(2, 2)
    assert arr["F"][0, 0] == 3 and arr["F"][0, 1] == 1 and arr["W"][1, 1] == 2
    tl = simulate(build("GPipe", 2, 2), prof)
    assert tl.makespan > simulate(build("GPipe", 2, 2), CostProfile.uniform(2)).makespan


def test_profile_forms(tmp_path):
    d = {"stages": [{"F": 2, "B": 3, "W": 1}], "comm": 0.1, "unit": "ms"}
    prof = CostProfile.from_dict(d)
    assert prof.stages[0] == {"F": 2.0, "I": 2.0, "W": 1.0}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    assert CostProfile.load(path).to_dict()["stages"] == prof.to_dict()["stages"]
    fl = CostProfile.from_flops([{"F": 2e12, "I": 2e12, "W": 1e12}], flops_per_second=1e15)
    assert fl.stages[0]["F"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"stages": [{"F": -1, "I": 1, "W": 1}]}, "F must be a finite time >= 0"),
        ({"stages": [{"F": 1, "I": 1}]}, r"missing \['W'\]"),
        ({"stages": []}, "non-empty"),
        ({"stages": [{"F": 1, "I": 1, "W": 1}], "comm": -0.5}, "comm must be"),
        ({"stages": [{"F": 1, "I": 1, "W": 1, "X": 2}]}, "unknown keys"),
        ({"stages": [{"F": "fast", "I": 1, "W": 1}]}, "must be a number"),
        ({"F": 1}, "'stages' list"),
    ],
)
def test_bad_profiles(data, match):
    with pytest.raises(CostError, match=match):
        CostProfile.from_dict(data)


def test_profile_stage_count_mismatch():
    with pytest.raises(CostError, match="2 stages but the schedule has 4"):
        simulate(build("1F1B", 4, 4), CostProfile.uniform(2))


def test_dag_edges_and_symbolic_durations():
    sched = build("ZBH1", 3, 4)
    dag = ScheduleDAG(sched)
    assert dag.num_nodes == 3 * 3 * 4
    kinds = {k for _, _, k in dag.edges(include_implied=True)}
    assert kinds == {"program", "data", "comm"}
    from tfcompile.schedules.actions import Action

    expr = dag.duration_expr(Action(2, "W", 1))
    assert str(expr) == "W_2*(1 - r_2_1)"
    assert str(ScheduleDAG(build("1F1B", 3, 4)).duration_expr(Action(1, "B", 0))) == (
        "I_1 + W_1*(1 - r_1_0)"
    )
    # numeric binding agrees with the symbolic expression
    prof = CostProfile([{"F": 1.5, "I": 2.0, "W": 0.75}] * 3)
    base, wpart, _ = dag.bind(prof)
    syms = dag.symbols()
    v = dag.index[Action(2, "W", 1)]
    val = expr.subs({syms["W_2"]: 0.75, syms["r_2_1"]: 0.4})
    assert float(val) == pytest.approx(base[v] - wpart[v] * 0.4)
    assert "comm" in syms and "r_0_3" in syms


def test_simulate_large():
    """ZBV at 32 ranks x 256 microbatches (49k actions): uniform costs, zero-bubble steady state."""
    sched = build("ZBV", 64, 256)
    tl = simulate(ScheduleDAG(sched), CostProfile.uniform(64))
    assert np.isfinite(tl.makespan)
    assert tl.busy[0] == pytest.approx(2 * 256 * 3.0)
    assert tl.bubble < 0.1
