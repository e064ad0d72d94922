"""Schedule IR, generators, validation and torch CSV I/O."""

from __future__ import annotations

import glob
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfcompile
from tfcompile.errors import ScheduleError
from tfcompile.schedules import build
from tfcompile.schedules.actions import Action, Schedule

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "planner")


def _check_complete(sched: Schedule) -> None:
    acts = list(sched.actions())
    assert len(acts) == len(set(acts))
    kinds = ("I", "W") if sched.split_backward else ("B",)
    expected = {
        Action(s, k, m)
        for s in range(sched.num_stages)
        for m in range(sched.num_microbatches)
        for k in ("F", *kinds)
    }
    assert set(acts) == expected
    for rank, prog in enumerate(sched.programs):
        assert all(sched.stage_to_rank[a.stage] == rank for a in prog)


def test_action_string_form():
    a = Action(2, "F", 0)
    assert str(a) == "2F0"
    assert Action.parse("1I3") == Action(1, "I", 3)
    assert Action.parse(" 12W7 ") == Action(12, "W", 7)
    assert Action(0, "B", 2).freezable and not Action(0, "I", 2).freezable


def test_public_exports():
    assert tfcompile.schedules.build is build
    assert tfcompile.Action is Action
    assert tfcompile.Schedule is Schedule


@pytest.mark.parametrize(
    "name,stages,ranks,split",
    [("GPipe", 4, 4, False), ("1F1B", 4, 4, False), ("Interleaved1F1B", 8, 4, False),
     ("ZBH1", 4, 4, True), ("ZBV", 8, 4, True)],
)  # fmt: skip
def test_build_shapes(name, stages, ranks, split):
    sched = build(name, stages, 8)
    assert sched.name == name
    assert sched.num_stages == stages and sched.num_microbatches == 8
    assert sched.num_ranks == ranks
    assert sched.split_backward is split
    _check_complete(sched)


def test_zbv_v_shape_mapping():
    sched = build("ZBV", 8, 8)
    for r in range(4):
        assert sched.stages_of(r) == sorted([r, 7 - r])
    assert sched.stage_to_rank[3] == sched.stage_to_rank[4] == 3


def test_interleaved_mapping_and_ranks():
    sched = build("Interleaved1F1B", 8, 8, ranks=2)
    assert sched.num_ranks == 2
    assert sched.stages_of(0) == [0, 2, 4, 6]
    assert build("Interleaved1F1B", 8, 4).stages_of(1) == [1, 5]


def test_one_f_one_b_order():
    sched = build("1F1B", 4, 6)
    assert " ".join(map(str, sched.programs[0][:5])) == "0F0 0F1 0F2 0F3 0B0"
    assert " ".join(map(str, sched.programs[3][:4])) == "3F0 3B0 3F1 3B1"


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["GPipe", "1F1B", "ZBH1", "Interleaved1F1B", "ZBV"]),
    p=st.integers(1, 8),
    k=st.integers(1, 5),
)
def test_generated_schedules_valid_property(name, p, k):
    """Every generated schedule is complete and runs without deadlock (validated on build)."""
    if name == "Interleaved1F1B":
        v = 1 + k % 3
        sched = build(name, p * v, p * k, ranks=p)
    elif name == "ZBV":
        sched = build(name, 2 * p, 2 * p - 1 + k)
    else:
        sched = build(name, p, k + (p if k % 2 else 0))
    _check_complete(sched)
    # re-validate a copy explicitly
    Schedule(sched.programs, sched.stage_to_rank)


@pytest.mark.parametrize("name", ["GPipe", "1F1B", "Interleaved1F1B", "ZBH1", "ZBV"])
def test_csv_round_trip(name, tmp_path):
    sched = build(name, 8, 8)
    text = sched.to_csv()
    assert text.splitlines()[0].split(",")[0] == "0F0"
    again = Schedule.from_csv(text)
    assert again == sched
    path = tmp_path / "s.csv"
    sched.to_csv(path)
    assert Schedule.from_csv(path) == sched
    assert Schedule.from_csv(str(path)).stage_to_rank == sched.stage_to_rank


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DATA, "torch_*.csv"))))
def test_torch_csv_fixtures_load(path):
    sched = Schedule.from_csv(path)
    assert sched.num_stages == 8 and sched.num_ranks == 4
    _check_complete_loose(sched)


def _check_complete_loose(sched: Schedule) -> None:
    acts = list(sched.actions())
    assert len(acts) == len(set(acts))
    assert {(a.stage, a.microbatch) for a in acts if a.kind == "F"} == {
        (s, m) for s in range(sched.num_stages) for m in range(sched.num_microbatches)
    }


def _torch_orders():
    """Generate torch's own schedule orders without process groups, where its API allows."""
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    out = {}
    for label, cls_name in [
        ("Interleaved1F1B", "ScheduleInterleaved1F1B"),
        ("InterleavedZeroBubble", "ScheduleInterleavedZeroBubble"),
        ("ZBVZeroBubble", "ScheduleZBVZeroBubble"),
    ]:
        cls = getattr(schedules, cls_name, None)
        if cls is None:
            continue
        p, v, m = 4, 2, 8
        obj = cls.__new__(cls)
        obj.pp_group_size, obj.n_local_stages, obj._n_microbatches = p, v, m
        obj.number_of_rounds = max(1, m // p)
        obj.microbatches_per_round = m // obj.number_of_rounds
        obj.num_stages = obj._num_stages = p * v
        try:
            rows = [obj._calculate_single_rank_operations(r) for r in range(p)]
        except Exception:  # private API moved: the fixtures still cover the format
            continue
        out[label] = "\n".join(",".join("" if a is None else str(a) for a in row) for row in rows)
    return out


@pytest.mark.slow  # importing torch takes seconds
def test_torch_generated_csv_matches_fixtures():
    orders = _torch_orders()
    if not orders:
        pytest.skip("torch's schedule internals not available")
    for label, text in orders.items():
        sched = Schedule.from_csv(text)
        fixture = Schedule.from_csv(os.path.join(DATA, f"torch_{label}_p4_v2_m8.csv"))
        assert sched == fixture


# -- bad input ------------------------------------------------------------------------------
def test_unknown_schedule():
    with pytest.raises(ScheduleError, match="unknown schedule 'PipeDream'.*1F1B"):
        build("PipeDream", 4, 8)


@pytest.mark.parametrize(
    "args,match",
    [
        (("ZBV", 8, 4), "at least 7 microbatches"),
        (("ZBV", 7, 16), "even"),
        (("Interleaved1F1B", 8, 6), "multiple of ranks"),
        (("Interleaved1F1B", 6, 8, 4), "multiple of ranks"),
        (("1F1B", 4, 0), "positive"),
        (("1F1B", 4, 8, 2), "ranks must equal stages"),
    ],
)
def test_bad_build_args(args, match):
    with pytest.raises(ScheduleError, match=match):
        build(*args)


@pytest.mark.parametrize(
    "text,match",
    [
        ("0F0,0X0\n", "row 1.*column 2.*cannot parse action '0X0'"),
        ("0F0,0B0,0F0\n", "0F0 appears more than once"),
        ("0F0\n", "0B0 is missing"),
        ("0B0,0F0\n", "deadlocks: action 0B0 on rank 0 waits for 0F0"),
        ("0F0,1B0,0B0\n1F0\n", "1B0 is on rank 0 but|stage 1 already has"),
        ("0F0,0B0,0I0,0W0\n", "both a full backward"),
    ],
)
def test_malformed_csv(text, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_csv(text)


def test_cross_rank_deadlock_names_first_action():
    # rank 0 waits for 1B0 before sending 0F1; rank 1 waits for 0F1 before running 1B0
    text = "0F0,0B0,0F1,0B1\n1F0,1F1,1B0,1B1\n"
    with pytest.raises(ScheduleError, match="deadlocks: action 0B0 on rank 0 waits for 1B0"):
        Schedule.from_csv(text)


def test_missing_csv_file():
    with pytest.raises(ScheduleError, match="not found"):
        Schedule.from_csv("/nonexistent/schedule.csv")


def test_split_backward_form_keeps_keys_and_shortens_upstream_waits():
    """B written as I then W: same (stage, microbatch) keys, upstream waits on I only."""
    from tfcompile.schedules.actions import validate_schedule
    from tfcompile.schedules.simulate import simulate

    sched = build("1F1B", 4, 8)
    split = sched.with_split_backward()
    validate_schedule(split)
    assert split.stage_to_rank == sched.stage_to_rank
    assert {(a.stage, a.microbatch) for a in split.actions() if a.kind == "W"} == {
        (a.stage, a.microbatch) for a in sched.actions() if a.kind == "B"
    }
    profile = {"stages": [{"F": 10.0, "I": 10.0, "W": 8.0}] * 4, "comm": 0.0}
    assert simulate(split, profile).makespan < simulate(sched, profile).makespan
    assert build("ZBH1", 4, 8).with_split_backward() is not None
