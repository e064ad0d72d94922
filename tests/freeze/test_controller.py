"""The phase controller, given a layout, measured profiles and a fake planner directly."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tfcompile import FreezeConfig, FreezeConfigError
from tfcompile.freeze.controller import Freezer
from tfcompile.freeze.layout import FreezeLayout
from tfcompile.freeze.phases import Phases
from tfcompile.schedules.profile import CostProfile

S, M, G = 3, 4, 4  # stages, microbatches, groups per stage
# measured per-stage times with nothing / everything frozen (I, W); stage 0 truncates (I ~ 0)
F_TIME = [1.0, 1.5, 2.0]
FULL = [(0.5, 3.0), (2.0, 3.0), (2.5, 4.0)]
ALL_FROZEN = [(0.05, 0.0), (2.0, 0.1), (6.6, 0.0)]  # stage 2: slower when frozen (noise)


@dataclass
class FakePlan:
    ratios: dict
    makespan: float
    baseline_makespan: float
    status: str = "optimal"
    solve_seconds: float = 0.0


class FakePlanner:
    """Stands in for the LP: records the profiles it receives, returns a uniform plan.

    ``makespans`` are the plans' step times in turn (default 10 / (1 + solves)),
    ``predictions`` what the plan in force is predicted to take under a refreshed profile.
    """

    def __init__(
        self,
        ratio: float = 0.8,
        cap: float = 0.9,
        makespans: list[float] | None = None,
        predictions: list[float] | None = None,
    ) -> None:
        self.ratio, self.cap = ratio, cap
        self.received: list[CostProfile] = []
        self.makespans = None if makespans is None else iter(makespans)
        self.predictions = None if predictions is None else iter(predictions)

    def plan(self, costs: CostProfile) -> FakePlan:
        self.received.append(costs)
        r = min(self.ratio, self.cap)
        makespan = (
            10.0 / (1 + len(self.received)) if self.makespans is None else next(self.makespans)
        )
        return FakePlan({(s, m): r for s in range(S) for m in range(M)}, makespan, 10.0)

    def makespan(self, costs: CostProfile, ratios: dict) -> float:
        return 5.0 if self.predictions is None else next(self.predictions)


class Run:
    """A deterministic training run around the freezer, stepping it as `Pipeline.step` does:
    parameters, grads, and measured times that depend on what the freezer froze in the
    measured window."""

    def __init__(self, local: list[int] | None = None, seed: int = 0, schedule: Any = None) -> None:
        self.schedule = schedule or SimpleNamespace(num_stages=S, num_microbatches=M)
        self.local_stages = list(range(S)) if local is None else local
        self.step_index = 0
        gen = torch.Generator().manual_seed(seed)
        self.params = {
            f"s{s}.g{g}.w": torch.nn.Parameter(torch.randn(5, generator=gen))
            for s in range(S)
            for g in range(G)
        }
        self.history: list[dict] = []  # frozen mapping per step
        self.profile_calls: list[tuple[int, int]] = []
        self.slowdown = 1.0

    def layout(self) -> FreezeLayout:
        return FreezeLayout.of(
            self.schedule,
            {s: {f"g{g}": [f"s{s}.g{g}.w"] for g in range(G)} for s in self.local_stages},
            {s: {f"g{g}": float(g + 1) for g in range(G)} for s in self.local_stages},
        )

    def freezer(self, config: FreezeConfig, planner: Any = None) -> Freezer:
        return Freezer(config, self.layout(), parameters=self.params, planner=planner)

    def measure(self, window: int, frozen: str | None = None) -> CostProfile:
        self.profile_calls.append((self.step_index, window))
        recent = self.history[-window:]
        stages = []
        for s in range(S):
            frac = sum(len(step.get((s, m), ())) / G for step in recent for m in range(M)) / (
                len(recent) * M
            )
            i = FULL[s][0] + frac * (ALL_FROZEN[s][0] - FULL[s][0])
            w = FULL[s][1] + frac * (ALL_FROZEN[s][1] - FULL[s][1])
            k = self.slowdown if s == S - 1 else 1.0
            stages.append({"F": F_TIME[s] * k, "I": i * k, "W": w * k})
        return CostProfile(stages, 0.25, "ms")

    def run_step(self, freezer: Freezer) -> dict:
        need = freezer.measurement_due(self.step_index)
        profile = self.measure(*need) if need else None
        frozen = freezer.before_step(self.step_index, profile)
        self.history.append(frozen)
        step = self.step_index
        for name, p in self.params.items():
            s, g = int(name[1]), name.split(".")[1]
            count = sum(g not in frozen.get((s, m), ()) for m in range(M))
            if count == 0:
                p.grad = None
                continue
            base = torch.sin(torch.arange(5.0) + step + sum(map(ord, name)) % 7) / (1 + step)
            p.grad = base * count / M  # "drop": seeded 1/M, frozen microbatches add nothing
        self.step_index += 1
        freezer.after_step(0.01, 1.0 / (1 + step))
        with torch.no_grad():
            for p in self.params.values():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        return frozen


def small(**kwargs: Any) -> FreezeConfig:
    base = dict(warmup_steps=5, monitor_steps=4, ramp_steps=6, check_every=2, replan_every=0)
    base.update(kwargs)
    return FreezeConfig(**base)


def advance(freezer: Freezer, run: Run, steps: int) -> list[str]:
    phases = []
    for _ in range(steps):
        run.run_step(freezer)
        phases.append(freezer.phase)
    return phases


def test_phase_transitions_at_configured_steps() -> None:
    planner = FakePlanner()
    run = Run()
    freezer = run.freezer(small(), planner)
    phases = advance(freezer, run, 24)
    expected = (["warmup"] * 5 + ["monitor_wmax"] * 4 + ["monitor_wmin"] * 4 + ["ramp"] * 6) + [
        "steady"
    ] * 5
    assert phases == expected
    assert all(run.history[t] == {} for t in range(9))  # warm-up and w_max: nothing frozen
    everything = {(s, m): frozenset(f"g{g}" for g in range(G)) for s in range(S) for m in range(M)}
    assert all(run.history[t] == everything for t in range(9, 13))
    assert freezer.plan is not None and freezer.plan.makespan == 5.0


def test_lp_receives_the_measured_times() -> None:
    planner = FakePlanner()
    received = planner.received
    run = Run()
    freezer = run.freezer(small(), planner)
    advance(freezer, run, 14)
    # measured at the end of each monitoring window, over exactly that window
    assert run.profile_calls == [(9, 3), (13, 3)]  # a window's first step left out
    assert len(received) == 1
    profile = received[0]
    for s in range(S):
        w_max = sum(FULL[s])
        w_min = sum(ALL_FROZEN[s])
        stage = profile.stages[s]
        assert stage["F"] == pytest.approx(F_TIME[s])
        assert stage["I"] == pytest.approx(w_min)
        assert stage["W"] == pytest.approx(max(w_max - w_min, 0.0))
    assert profile.stages[0]["I"] == pytest.approx(0.05)  # truncated first stage
    assert profile.stages[2]["W"] == 0.0  # frozen looked slower: clipped
    assert profile.comm == 0.25 and profile.unit == "ms"
    assert freezer.profiles["planned"] == profile


def test_ramp_follows_its_config() -> None:
    planner = FakePlanner(ratio=0.6)
    run = Run()
    freezer = run.freezer(small(ramp_steps=6, check_every=2), planner)
    targets = []
    for _ in range(22):
        run.run_step(freezer)
        targets.append(freezer.ratios[(1, 0)])
    ramp = targets[13:19]  # K = 6 / 2 = 3 decision steps of 1/3 each
    assert ramp == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.6, 0.6])
    assert targets[19:] == pytest.approx([0.6] * 3)
    assert targets[:13] == [0.0] * 13
    # the actual (cost-weighted) ratio tracks the target within one group's cost share
    total = sum(range(1, G + 1))
    actual = freezer.actual_ratios
    assert set(actual) == {0, 1, 2}
    assert all(abs(a - 0.6) <= G / total / 2 for a in actual.values())


def test_ramp_rounds_up_partial_decision_windows() -> None:
    planner = FakePlanner(ratio=0.9)
    run = Run()
    freezer = run.freezer(small(ramp_steps=5, check_every=2), planner)
    targets = []
    for _ in range(19):
        run.run_step(freezer)
        targets.append(freezer.ratios[(0, 3)])
    assert targets[13:18] == pytest.approx([0.3, 0.3, 0.6, 0.6, 0.9])
    assert targets[18] == pytest.approx(0.9)


def test_timely_rotates_every_decision_step_and_agrees_across_ranks() -> None:
    planner = FakePlanner(ratio=0.5)
    run = Run()
    freezer = run.freezer(small(ramp_steps=0), planner)
    advance(freezer, run, 30)
    steady = run.history[13:30]
    for t in range(14, 29, 2):  # decision steps are even: constant within a window
        assert run.history[t] == run.history[t + 1]
    assert len({tuple(sorted(h[(1, 0)])) for h in steady}) > 1  # rotates
    # a rank holding only stage 1 decides exactly as the single rank did for stage 1
    rank_run = Run(local=[1])
    rank = rank_run.freezer(small(ramp_steps=0), planner)
    advance(rank, rank_run, 30)
    for full, part in zip(run.history, rank_run.history):
        assert part == {k: v for k, v in full.items() if k[0] == 1}


def test_seed_changes_the_choice() -> None:
    planner = FakePlanner(ratio=0.5)
    histories = []
    for seed in (0, 1):
        run = Run()
        advance(run.freezer(small(ramp_steps=0, seed=seed), planner), run, 25)
        histories.append(run.history[13:])
    assert histories[0] != histories[1]


def test_rescale_factor_per_group_is_m_over_contributing_microbatches() -> None:
    """grad="rescale": the step scales each use (stage, group) by M / count before it is
    accumulated (Freezer.grad_scales); "drop" scales nothing; after_step leaves .grad alone
    (the semantics are applied during the step, so tied uses are scaled once each)."""
    # 3 of 4 microbatches freeze g0 of stage 0, all 4 freeze g1, 2 of 4 freeze g2 of stage 2
    frozen = {(0, m): frozenset({"g0", "g1"}) for m in range(3)}
    frozen[(0, 3)] = frozenset({"g1"})
    frozen.update({(2, m): frozenset({"g2"}) for m in (1, 3)})
    scales = {}
    for mode in ("drop", "rescale"):
        run = Run()
        freezer = run.freezer(FreezeConfig(policy="none", grad=mode))
        freezer.before_step(0)
        scales[mode] = freezer.grad_scales(frozen)
        run.params["s0.g0.w"].grad = torch.ones(5)
        run.params["s0.g1.w"].grad = None
        run.params["s2.g2.w"].grad = torch.full((5,), 2.0)
        freezer.after_step(0.1, None, frozen=frozen)
        assert torch.equal(run.params["s0.g0.w"].grad, torch.ones(5)), mode
        assert run.params["s0.g1.w"].grad is None, mode  # no contribution: stays None
        assert torch.equal(run.params["s2.g2.w"].grad, torch.full((5,), 2.0)), mode
    assert scales["drop"] == {}
    # M / 1 and M / 2; groups every microbatch (or none) contributed to are not scaled
    assert scales["rescale"] == {(0, "g0"): 4.0, (2, "g2"): 2.0}


def test_rescale_uses_the_mapping_the_step_really_used() -> None:
    run = Run()
    freezer = run.freezer(FreezeConfig(policy="none", grad="rescale"))
    assert freezer.before_step(0) == {}
    assert freezer.grad_scales({}) == {}
    override = {(1, m): {"g3"} for m in range(2)}  # the caller froze g3 in 2 of 4 microbatches
    assert freezer.grad_scales(override) == {(1, "g3"): 2.0}
    freezer.after_step(0.1, None, frozen=override)
    assert freezer.actual_ratios[1] == pytest.approx(0.5 * 4 / 10)
    # a rank holding only stage 1 gets the factors of its own groups, the same ones
    rank_run = Run(local=[1])
    rank = rank_run.freezer(FreezeConfig(policy="none", grad="rescale"))
    rank.before_step(0)
    both = {**override, (0, 0): {"g0"}}
    assert rank.grad_scales(both) == {(1, "g3"): 2.0}


def test_replan_only_when_drifted_and_adopted_only_when_faster() -> None:
    planner = FakePlanner(
        ratio=0.5,
        makespans=[8.0, 7.9, 4.0],  # initial plan, then two re-plans
        predictions=[8.1, 9.6, 9.6],  # current plan under re-measured profiles
    )
    solved = planner.received
    run = Run()
    freezer = run.freezer(small(ramp_steps=0, replan_every=4, replan_drift=0.1), planner)
    advance(freezer, run, 18)  # steady from 13; re-measure at 17
    assert len(solved) == 1  # 8.1 vs 8.0: 1% drift, no re-solve
    assert run.profile_calls[-1] == (17, 4)
    run.slowdown = 2.0
    advance(freezer, run, 4)  # step 21: drift 9.6 vs 8.1; new plan 7.9 is faster than 9.6
    assert len(solved) == 2 and freezer.plan.makespan == 7.9 and freezer.replans == 1
    refreshed = solved[1].stages[2]
    assert refreshed["F"] == pytest.approx(2 * F_TIME[2])  # F as measured
    advance(freezer, run, 4)  # step 25: 9.6 vs 7.9 drifts; plan 4.0 adopted
    assert freezer.plan.makespan == 4.0 and freezer.replans == 2


def test_replan_keeps_the_plan_when_not_faster() -> None:
    planner = FakePlanner(ratio=0.5, makespans=[8.0, 9.9], predictions=[9.95] * 10)
    run = Run()
    freezer = run.freezer(small(ramp_steps=0, replan_every=4), planner)
    advance(freezer, run, 18)
    assert freezer.plan.makespan == 8.0 and freezer.replans == 0


def test_refresh_scales_backward_by_measured_over_predicted() -> None:
    from tfcompile.freeze.time_model import refresh_profile

    planned = CostProfile([{"F": 1.0, "I": 2.0, "W": 4.0}], 0.1)
    measured = CostProfile([{"F": 1.5, "I": 3.0, "W": 1.0}], 0.2)
    # ratio 0.5 predicts I + W/2 = 4; measured 4 -> unchanged; F and comm as measured
    assert refresh_profile(planned, measured, [0.5]) == CostProfile(
        [{"F": 1.5, "I": 2.0, "W": 4.0}], 0.2
    )
    measured.stages[0]["W"] = 5.0  # 8 vs 4: the stage became twice as slow
    assert refresh_profile(planned, measured, [0.5]).stages[0] == {"F": 1.5, "I": 4.0, "W": 8.0}


def test_phase_and_plan_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    planner = FakePlanner()
    run = Run()
    freezer = run.freezer(small(), planner)
    with caplog.at_level(logging.INFO, logger="tfcompile.freeze"):
        advance(freezer, run, 20)
    lines = [r.getMessage() for r in caplog.records if r.name == "tfcompile.freeze"]
    assert sum("phase" in line for line in lines) == 5
    assert any("monitor_wmin -> ramp" in line for line in lines)
    plan_lines = [line for line in lines if "plan predicts" in line]
    assert len(plan_lines) == 1 and "10 -> 5 (-50.0%)" in plan_lines[0]


@pytest.mark.parametrize("policy", ["none", "apf", "autofreeze", "freezeout"])
def test_baselines_ignore_phases_and_freeze_whole_steps(policy: str) -> None:
    run = Run()
    cfg = FreezeConfig(
        policy=policy,
        check_every=2,
        autofreeze_every=3,
        total_steps=40,
        freezeout_t0=0.3,
        apf_threshold=0.9,
    )
    freezer = run.freezer(cfg)
    advance(freezer, run, 40)
    assert freezer.phase == ("off" if policy == "none" else "baseline")
    assert run.profile_calls == [] and freezer.plan is None
    for frozen in run.history:
        for s in range(S):  # the same groups in every microbatch of a step
            assert len({frozen.get((s, m), frozenset()) for m in range(M)}) == 1
    froze_something = any(run.history)
    assert froze_something == (policy != "none")


def test_freezeout_follows_its_schedule_over_the_whole_model() -> None:
    run = Run()
    cfg = FreezeConfig(policy="freezeout", total_steps=100, freezeout_t0=0.5)
    freezer = run.freezer(cfg)
    advance(freezer, run, 100)
    layers = S * G  # t_i = 0.5 + 0.5 * i / 11 (cubed): layer i frozen from round(100 t_i^3)
    for i in range(layers):
        s, g = divmod(i, G)
        t = (0.5 + 0.5 * i / (layers - 1)) ** 3
        first = next((k for k, h in enumerate(run.history) if f"g{g}" in h.get((s, 0), ())), None)
        assert first == (None if i == layers - 1 else round(100 * t))
    assert freezer.lr_factor(0, "g0", 0) == pytest.approx(1 / 0.125)


def test_hybrid_metric_picks_the_groups() -> None:
    planner = FakePlanner(ratio=0.5)
    run = Run()
    freezer = run.freezer(small(policy="timely+apf", ramp_steps=0, apf_ema=0.5), planner)
    advance(freezer, run, 16)
    stability = freezer._apf.stability()
    for s in range(S):
        scores = {g: stability[(s, g)] for g in freezer.groups[s]}
        order = sorted(scores, key=lambda g: (scores[g], g))
        chosen = run.history[-1][(s, 0)]
        # greedy over the stability order: its first group is always chosen (target 5 of 10)
        assert order[0] in chosen
        # later microbatches absorb the rounding error of earlier ones: the average follows
        average = sum(
            sum(float(g[1:]) + 1 for g in run.history[-1].get((s, m), ())) / 10 for m in range(M)
        )
        assert abs(average / M - 0.5) <= 0.1
        assert freezer.actual_ratios[s] == pytest.approx(average / M)


def _save(freezer: Freezer, run: Run) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "freezer": freezer.state_dict(),
            "params": {n: p.detach().clone() for n, p in run.params.items()},
            "step": run.step_index,
            "history": run.history,
        },
        buffer,
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    "policy", ["timely", "timely+apf", "timely+autofreeze", "apf", "autofreeze", "freezeout"]
)
def test_resume_reproduces_the_uninterrupted_run(policy: str) -> None:
    planner = FakePlanner(ratio=0.5)
    cfg = small(
        policy=policy,
        replan_every=4,
        total_steps=48,
        autofreeze_every=3,
        apf_threshold=0.9,
        freezeout_t0=0.3,
    )
    steps, cut = 48, 17
    whole = Run()
    uninterrupted = whole.freezer(cfg, planner)
    advance(uninterrupted, whole, steps)

    first = Run()
    before_cut = first.freezer(cfg, planner)
    advance(before_cut, first, cut)
    blob = _save(before_cut, first)
    del before_cut, first
    state = torch.load(io.BytesIO(blob), weights_only=False)
    resumed_run = Run(seed=99)  # different init: everything must come from the checkpoint
    with torch.no_grad():
        for n, p in resumed_run.params.items():
            p.copy_(state["params"][n])
    resumed_run.step_index = state["step"]
    resumed_run.history = state["history"]
    resumed = resumed_run.freezer(cfg, planner)
    resumed.load_state_dict(state["freezer"])
    assert resumed.phase == uninterrupted_phase(cfg, cut - 1)
    advance(resumed, resumed_run, steps - cut)
    assert resumed_run.history == whole.history
    assert resumed.phase == uninterrupted.phase
    for n, p in whole.params.items():
        assert torch.allclose(resumed_run.params[n], p, atol=0, rtol=0)
    if cfg.uses_plan:
        assert resumed.plan.ratios == uninterrupted.plan.ratios


def uninterrupted_phase(cfg: FreezeConfig, step: int) -> str:
    return Phases.of(cfg).at(step)


def test_resume_with_another_policy_is_refused() -> None:
    run = Run()
    freezer = run.freezer(FreezeConfig(policy="apf"))
    advance(freezer, run, 3)
    other = Run().freezer(FreezeConfig(policy="timely"))
    with pytest.raises(FreezeConfigError, match="policy='apf'"):
        other.load_state_dict(freezer.state_dict())


def test_config_type_is_checked() -> None:
    with pytest.raises(FreezeConfigError, match="FreezeConfig"):
        Run().freezer({"policy": "timely"})  # type: ignore[arg-type]


def test_phase_before_first_step() -> None:
    assert Run().freezer(small()).phase == "warmup"
    assert Run().freezer(small(warmup_steps=0)).phase == "monitor_wmax"
    assert math.isclose(sum(Run().freezer(small()).actual_ratios.values()), 0.0)


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "zbh1"])
def test_with_the_real_planner(name: str) -> None:
    lp = pytest.importorskip("tfcompile.planner.plan")
    from tfcompile.schedules.generators import build

    schedule = build(name, S, M)
    run = Run(schedule=schedule)
    cap = 0.7
    freezer = run.freezer(small(max_freeze_ratio=cap, replan_every=4))
    advance(freezer, run, 30)  # plan at 13, steady from 19, re-measured at 23 and 27
    plan = freezer.plan
    assert isinstance(plan, lp.FreezePlan)
    assert plan.makespan < plan.baseline_makespan
    for s in range(S):
        assert sum(plan.ratios.get((s, m), 0.0) for m in range(M)) / M <= cap + 1e-6
    assert freezer.ratios == {k: pytest.approx(plan.ratios.get(k, 0.0)) for k in freezer.ratios}
    frozen_stages = {s for (s, _m) in run.history[-1]}
    assert frozen_stages <= {s for s in range(S) if plan.stage_average()[s] > 0}


def test_paired_wmin_window_gives_wmax_of_the_same_steps() -> None:
    """wmin_microbatches = k < M: the w_min window's unfrozen microbatches give w_max, so a
    machine that was slower during the w_max window does not inflate W = w_max - w_min (the
    first cause of plans over-predicting the measured gain)."""
    planner = FakePlanner()
    run = Run()
    freezer = run.freezer(small(wmin_microbatches=2), planner)
    calls = []

    def measure(window: int, frozen: str | None = None) -> CostProfile:
        calls.append(frozen)
        slow = 2.0 if frozen is None else 1.0  # the w_max window ran on a slower machine
        full = [
            {"F": F_TIME[s] * slow, "I": FULL[s][0] * slow, "W": FULL[s][1] * slow}
            for s in range(S)
        ]
        if frozen != "paired":
            return CostProfile(full, 0.25, "ms")
        all_frozen = [
            {"F": F_TIME[s], "I": ALL_FROZEN[s][0], "W": ALL_FROZEN[s][1]} for s in range(S)
        ]
        unfrozen = CostProfile(full, 0.25).to_dict()
        return CostProfile(all_frozen, 0.25, "ms", meta={"unfrozen": unfrozen})

    run.measure = measure  # type: ignore[method-assign]
    advance(freezer, run, 18)
    assert calls == [None, "paired"]
    (profile,) = planner.received
    for s, stage in enumerate(profile.stages):
        assert stage["F"] == F_TIME[s]
        assert stage["I"] == pytest.approx(sum(ALL_FROZEN[s]))
        assert stage["W"] == pytest.approx(max(sum(FULL[s]) - sum(ALL_FROZEN[s]), 0.0))
    assert freezer.profiles["wmax"].stages[0]["F"] == 2 * F_TIME[0]  # kept for the record
