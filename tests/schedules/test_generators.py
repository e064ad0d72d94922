"""The schedules owner of names, aliases, stages per rank and CSV sources; one dependency rule.

Every alias `schedules.build` accepts must behave like its canonical name wherever a schedule
name is read (`resolve`, `default_ranks`, `compile`, the CLI); `ScheduleDAG`'s vectorised
edges and the executor's messages must follow `action_deps`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest

from tfcompile.errors import ScheduleError
from tfcompile.schedules import (
    Schedule,
    build,
    canonical_name,
    default_ranks,
    is_csv_source,
    resolve,
    stages_per_rank,
    validate_schedule,
)
from tfcompile.schedules.actions import (
    Action,
    action_deps,
    consumed_message,
    produced_message,
)
from tfcompile.schedules.dag import ScheduleDAG
from tfcompile.schedules.generators import _ALIASES

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "planner")
CSVS = sorted(glob.glob(os.path.join(DATA, "*.csv")))


def _generated() -> list[Schedule]:
    out = []
    for name, p, m, ranks in [
        ("GPipe", 3, 4, None),
        ("1F1B", 4, 6, None),
        ("1F1B", 4, 2, None),
        ("ZBH1", 4, 6, None),
        ("Interleaved1F1B", 4, 4, 2),
        ("Interleaved1F1B", 6, 6, 3),
        ("ZBV", 4, 4, None),
        ("ZBV", 6, 8, None),
    ]:
        sched = build(name, p, m, ranks=ranks)
        out += [sched, sched.with_split_backward()]
    return out


def _split(sched: Schedule) -> dict[tuple[int, int], bool]:
    """(stage, microbatch) -> True when it runs as I and W rather than B."""
    split = {(a.stage, a.microbatch): False for a in sched.actions()}
    split.update({(a.stage, a.microbatch): True for a in sched.actions() if a.kind == "I"})
    return split


ALL = _generated() + [Schedule.from_csv(path) for path in CSVS]


@pytest.mark.parametrize("alias", sorted(_ALIASES))
def test_every_alias_resolves_like_its_canonical_name(alias):
    canon = canonical_name(alias)
    assert stages_per_rank(alias) == stages_per_rank(canon)
    assert stages_per_rank(alias.upper()) == stages_per_rank(canon)
    for stages in (None, 4):
        assert default_ranks(alias, stages=stages) == default_ranks(canon, stages=stages)
    ranks = default_ranks(alias, stages=None)
    got = resolve(alias, stages=None, microbatches=4, ranks=ranks)
    want = resolve(canon, stages=None, microbatches=4, ranks=ranks)
    assert got == want and got.name == canon
    assert got.num_stages == ranks * stages_per_rank(canon) and got.num_ranks == ranks


def test_the_two_aliases_that_used_to_diverge():
    """`zbvzerobubble` on 2 ranks raised; `interleaved` built 1 stage per rank."""
    zbv = resolve("zbvzerobubble", stages=None, microbatches=4, ranks=2)
    assert (zbv.num_stages, zbv.num_ranks) == (4, 2)
    inter = resolve("interleaved", stages=None, microbatches=4, ranks=2)
    assert inter == resolve("Interleaved1F1B", stages=None, microbatches=4, ranks=2)
    assert (inter.num_stages, inter.num_ranks) == (4, 2)
    assert default_ranks("interleaved", stages=4) == default_ranks("zbvzerobubble", stages=4) == 2


def test_stages_per_rank_rejects_unknown_names():
    with pytest.raises(ScheduleError, match="unknown schedule"):
        stages_per_rank("2F2B")


def test_is_csv_source(tmp_path):
    existing = tmp_path / "sched"
    existing.write_text("0F0,0B0\n")
    assert is_csv_source("x.csv") and is_csv_source("X.CSV") and is_csv_source(Path("y"))
    assert is_csv_source(str(existing))
    assert not is_csv_source("1F1B") and not is_csv_source("zbv") and not is_csv_source(3)


def test_resolve_reads_csv_and_passes_schedules_through(tmp_path):
    sched = build("1F1B", 2, 3)
    path = tmp_path / "s.csv"
    sched.to_csv(path)
    assert resolve(sched, stages=None, microbatches=1, ranks=None) is sched
    for source in (path, str(path)):
        assert resolve(source, stages=None, microbatches=99, ranks=None) == sched
        assert default_ranks(source, stages=None) == 2
    with pytest.raises(ScheduleError, match="not found"):
        resolve(str(tmp_path / "missing.csv"), stages=None, microbatches=4, ranks=2)
    with pytest.raises(ScheduleError, match="a name, a CSV path or a Schedule"):
        resolve(4, stages=None, microbatches=4, ranks=2)
    with pytest.raises(ScheduleError, match="stages= or ranks="):
        resolve("1F1B", stages=None, microbatches=4, ranks=None)


@pytest.mark.parametrize("sched", ALL, ids=repr)
def test_dag_edges_equal_action_deps(sched):
    """ScheduleDAG builds its data edges vectorised; they must be exactly action_deps."""
    dag = ScheduleDAG(sched)
    split = _split(sched)
    want = {
        (dag.index[d], dag.index[a])
        for a in sched.actions()
        for d in action_deps(a, split, sched.num_stages)
    }
    got = {(int(u), int(v)) for u, v in np.asarray(dag.data_edges)}
    assert got == want and len(dag.data_edges) == len(want)


@pytest.mark.parametrize("sched", ALL, ids=repr)
def test_messages_follow_action_deps(sched):
    """What an action receives is what its cross-stage dependency sends."""
    S = sched.num_stages
    split = _split(sched)
    for a in sched.actions():
        cross = [d for d in action_deps(a, split, S) if d.stage != a.stage]
        message = consumed_message(a, S)
        assert len(cross) == (message is not None)
        if cross:
            assert produced_message(cross[0], S) == message


@pytest.mark.parametrize("sched", ALL, ids=repr)
def test_validate_returns_an_order_that_respects_programs_and_deps(sched):
    order = validate_schedule(sched)
    assert sorted(order) == sorted(sched.actions())
    position = {a: i for i, a in enumerate(order)}
    for prog in sched.programs:
        assert [position[a] for a in prog] == sorted(position[a] for a in prog)
    split = _split(sched)
    for a in order:
        assert all(position[d] < position[a] for d in action_deps(a, split, sched.num_stages))


def test_validate_order_is_round_robin_over_ranks():
    """Rank 0 runs as far as it can, then the next rank that can advance (cyclically)."""
    order = validate_schedule(build("1F1B", 2, 2))
    assert [str(a) for a in order] == ["0F0", "0F1", "1F0", "1B0", "1F1", "1B1", "0B0", "0B1"]
    assert Action(0, "F", 0) == order[0]
