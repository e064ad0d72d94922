"""Phase lengths scale with the run when total_steps is known; pinned plans (plan files)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_controller import FakePlanner, Run, S

from tfcompile import FreezeConfig, FreezeConfigError
from tfcompile.freeze.config import scaled_unit
from tfcompile.freeze.phases import RAMP, STEADY, WARMUP, Phases
from tfcompile.freeze.pinned import read_plan_file, write_plan_file
from tfcompile.schedules import build


@pytest.mark.parametrize(
    ("total", "unit", "check"),
    [(None, 100, 10), (2000, 100, 10), (100_000, 100, 10), (1000, 50, 5), (100, 5, 1), (10, 1, 1)],
)
def test_unit_is_the_papers_share_of_the_run(total, unit, check) -> None:
    cfg = FreezeConfig(total_steps=total)
    assert scaled_unit(total) == unit
    assert (cfg.warmup_steps, cfg.monitor_steps, cfg.ramp_steps) == (unit, unit, unit)
    assert cfg.check_every == check and cfg.replan_every == 5 * unit
    assert cfg.autofreeze_every == unit


def test_a_100_step_run_reaches_a_plan_and_steady_state() -> None:
    cfg = FreezeConfig(total_steps=100)
    phases = Phases.of(cfg)
    assert phases.steady_start == 20 < 100
    assert [phases.at(s) for s in (0, 4, 15, 19, 20, 99)] == [
        WARMUP, WARMUP, RAMP, RAMP, STEADY, STEADY,
    ]  # fmt: skip
    run = Run()
    freezer = run.freezer(cfg, FakePlanner())
    for _ in range(100):
        run.run_step(freezer)
    assert freezer.plan is not None and freezer.phase == STEADY
    assert run.profile_calls[:2] == [(10, 4), (15, 4)]  # w_max, w_min: window minus its 1st step


def test_explicit_lengths_are_kept_and_checked() -> None:
    cfg = FreezeConfig(total_steps=100, warmup_steps=7, check_every=3)
    assert (cfg.warmup_steps, cfg.monitor_steps, cfg.check_every) == (7, 5, 3)
    with pytest.raises(FreezeConfigError, match="scale with total_steps"):
        FreezeConfig(total_steps=100, warmup_steps=90)


def _plan_file(tmp_path, schedule, ratio=0.5):
    ratios = {(s, m): ratio for s in range(S) for m in range(schedule.num_microbatches)}
    return write_plan_file(tmp_path / "plan.json", schedule, ratios, 6.0, 10.0)


def test_pinned_plan_skips_monitoring_and_the_lp(tmp_path) -> None:
    schedule = build("GPipe", S, 4)
    path = _plan_file(tmp_path, schedule)
    cfg = FreezeConfig(total_steps=100, plan=str(tmp_path))  # a folder holding plan.json
    assert cfg.pinned and cfg.planning_steps == cfg.warmup_steps
    planner = FakePlanner()
    run = Run(schedule=schedule)
    freezer = run.freezer(cfg, planner)
    assert freezer.plan.status == "pinned" and freezer.plan.makespan == 6.0
    for _ in range(40):
        run.run_step(freezer)
    assert planner.received == [] and run.profile_calls == []  # never measured, never solved
    assert freezer.phase == STEADY
    assert all(r == pytest.approx(0.5) for r in freezer.ratios.values())
    assert json.loads(path.read_text())["ratios"][0] == [0.5] * 4


def test_pinned_plan_decisions_repeat(tmp_path) -> None:
    schedule = build("GPipe", S, 4)
    _plan_file(tmp_path, schedule, 0.75)
    cfg = FreezeConfig(total_steps=60, plan=str(tmp_path / "plan.json"), seed=3)
    histories = []
    for _ in range(2):
        run = Run(schedule=schedule)
        freezer = run.freezer(cfg, FakePlanner())
        histories.append([run.run_step(freezer) for _ in range(60)])
    assert histories[0] == histories[1] and any(histories[0][-1].values())


def test_pinned_plan_must_match_the_schedule(tmp_path) -> None:
    _plan_file(tmp_path, build("GPipe", S, 4))
    with pytest.raises(FreezeConfigError, match="3 stages x 4 microbatches"):
        read_plan_file(tmp_path / "plan.json", build("GPipe", S, 8))
    with pytest.raises(FreezeConfigError, match="schedule 'GPipe'"):
        read_plan_file(tmp_path / "plan.json", build("1F1B", S, 4))
    with pytest.raises(FreezeConfigError, match="cannot read a plan file"):
        read_plan_file(tmp_path / "missing.json", build("GPipe", S, 4))
    with pytest.raises(FreezeConfigError, match="only the planned policies"):
        FreezeConfig(policy="apf", plan="plan.json")


def test_cli_plan_file_can_be_pinned(tmp_path) -> None:
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"stages": [{"F": 1.0, "I": 1.0, "W": 2.0}] * 2, "comm": 0.0}))
    subprocess.run(
        [sys.executable, "-m", "tfcompile.cli", "plan", "--schedule", "1F1B", "--stages", "2",
         "--microbatches", "4", "--costs", str(costs), "--out", str(tmp_path / "p")],
        check=True, capture_output=True,
    )  # fmt: skip
    data = read_plan_file(tmp_path / "p", build("1F1B", 2, 4))
    assert data["makespan"] < data["baseline_makespan"] and data["ratios"]
