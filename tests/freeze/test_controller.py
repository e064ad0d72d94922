"""The phase controller against a fake pipeline that follows the runtime contract."""

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
from tfcompile.freeze import controller as ctl
from tfcompile.freeze.controller import Freezer

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


class FakePipe:
    """Deterministic stand-in for Pipeline: parameters, grads, and measured times that
    depend on what the freezer froze in the measured window."""

    def __init__(self, local: list[int] | None = None, seed: int = 0, schedule: Any = None) -> None:
        self.schedule = schedule or SimpleNamespace(
            num_stages=S,
            num_microbatches=M,
            stage_to_rank=list(range(S)),
            programs=[[] for _ in range(S)],
            split_backward=True,
        )
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

    def stage_groups(self, stage: int) -> dict[str, list[str]]:
        return {f"g{g}": [f"s{stage}.g{g}.w"] for g in range(G)}

    def group_costs(self, stage: int) -> dict[str, float]:
        return {f"g{g}": float(g + 1) for g in range(G)}

    def named_parameters(self):
        return iter(self.params.items())

    def measured_profile(self, window: int) -> dict[str, Any]:
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
        return {"stages": stages, "comm": 0.25, "unit": "ms"}

    def run_step(self, freezer: Freezer) -> dict:
        frozen = freezer.before_step()
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


def fake_planner(monkeypatch: pytest.MonkeyPatch, ratio: float = 0.8) -> list[dict]:
    """Replace the LP: record the profiles it receives, return a uniform plan."""
    received: list[dict] = []

    def solve(schedule: Any, profile: dict, cap: float) -> FakePlan:
        received.append(profile)
        r = min(ratio, cap)
        makespan = 10.0 / (1 + len(received))
        return FakePlan({(s, m): r for s in range(S) for m in range(M)}, makespan, 10.0)

    monkeypatch.setattr(ctl, "solve_plan", solve)
    monkeypatch.setattr(ctl, "predict_makespan", lambda sched, prof, ratios: 5.0)
    return received


def small(**kwargs: Any) -> FreezeConfig:
    base = dict(warmup_steps=5, monitor_steps=4, ramp_steps=6, check_every=2, replan_every=0)
    base.update(kwargs)
    return FreezeConfig(**base)


def run(freezer: Freezer, pipe: FakePipe, steps: int) -> list[str]:
    phases = []
    for _ in range(steps):
        pipe.run_step(freezer)
        phases.append(freezer.phase)
    return phases


def test_phase_transitions_at_configured_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_planner(monkeypatch)
    pipe = FakePipe()
    freezer = Freezer(small(), pipe)
    phases = run(freezer, pipe, 24)
    expected = (["warmup"] * 5 + ["monitor_wmax"] * 4 + ["monitor_wmin"] * 4 + ["ramp"] * 6) + [
        "steady"
    ] * 5
    assert phases == expected
    assert all(pipe.history[t] == {} for t in range(9))  # warm-up and w_max: nothing frozen
    everything = {(s, m): frozenset(f"g{g}" for g in range(G)) for s in range(S) for m in range(M)}
    assert all(pipe.history[t] == everything for t in range(9, 13))
    assert freezer.plan is not None and freezer.plan.makespan == 5.0


def test_lp_receives_the_measured_times(monkeypatch: pytest.MonkeyPatch) -> None:
    received = fake_planner(monkeypatch)
    pipe = FakePipe()
    freezer = Freezer(small(), pipe)
    run(freezer, pipe, 14)
    # measured at the end of each monitoring window, over exactly that window
    assert pipe.profile_calls == [(9, 4), (13, 4)]
    assert len(received) == 1
    profile = received[0]
    for s in range(S):
        w_max = sum(FULL[s])
        w_min = sum(ALL_FROZEN[s])
        stage = profile["stages"][s]
        assert stage["F"] == pytest.approx(F_TIME[s])
        assert stage["I"] == pytest.approx(w_min)
        assert stage["W"] == pytest.approx(max(w_max - w_min, 0.0))
    assert profile["stages"][0]["I"] == pytest.approx(0.05)  # truncated first stage
    assert profile["stages"][2]["W"] == 0.0  # frozen looked slower: clipped
    assert profile["comm"] == 0.25 and profile["unit"] == "ms"
    assert freezer.profiles["planned"] == profile


def test_ramp_follows_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_planner(monkeypatch, ratio=0.6)
    pipe = FakePipe()
    freezer = Freezer(small(ramp_steps=6, check_every=2), pipe)
    targets = []
    for _ in range(22):
        pipe.run_step(freezer)
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


def test_ramp_rounds_up_partial_decision_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_planner(monkeypatch, ratio=0.9)
    pipe = FakePipe()
    freezer = Freezer(small(ramp_steps=5, check_every=2), pipe)
    targets = []
    for _ in range(19):
        pipe.run_step(freezer)
        targets.append(freezer.ratios[(0, 3)])
    assert targets[13:18] == pytest.approx([0.3, 0.3, 0.6, 0.6, 0.9])
    assert targets[18] == pytest.approx(0.9)


def test_timely_rotates_every_decision_step_and_agrees_across_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_planner(monkeypatch, ratio=0.5)
    pipe = FakePipe()
    freezer = Freezer(small(ramp_steps=0), pipe)
    run(freezer, pipe, 30)
    steady = pipe.history[13:30]
    for t in range(14, 29, 2):  # decision steps are even: constant within a window
        assert pipe.history[t] == pipe.history[t + 1]
    assert len({tuple(sorted(h[(1, 0)])) for h in steady}) > 1  # rotates
    # a rank holding only stage 1 decides exactly as the single rank did for stage 1
    rank_pipe = FakePipe(local=[1])
    rank = Freezer(small(ramp_steps=0), rank_pipe)
    run(rank, rank_pipe, 30)
    for full, part in zip(pipe.history, rank_pipe.history):
        assert part == {k: v for k, v in full.items() if k[0] == 1}


def test_seed_changes_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_planner(monkeypatch, ratio=0.5)
    histories = []
    for seed in (0, 1):
        pipe = FakePipe()
        run(Freezer(small(ramp_steps=0, seed=seed), pipe), pipe, 25)
        histories.append(pipe.history[13:])
    assert histories[0] != histories[1]


def test_rescale_divides_by_contributing_microbatches() -> None:
    grads = {}
    for mode in ("drop", "rescale"):
        pipe = FakePipe()
        freezer = Freezer(FreezeConfig(policy="none", grad=mode), pipe)
        freezer.before_step()
        # 3 of 4 microbatches freeze g0 of stage 0; all 4 freeze g1
        freezer._frozen = {(0, m): frozenset({"g0", "g1"}) for m in range(3)}
        freezer._frozen[(0, 3)] = frozenset({"g1"})
        pipe.params["s0.g0.w"].grad = torch.ones(5)
        pipe.params["s0.g1.w"].grad = None
        pipe.params["s0.g2.w"].grad = torch.full((5,), 2.0)
        freezer.after_step(0.1, None)
        grads[mode] = {
            n: None if p.grad is None else p.grad.clone() for n, p in pipe.params.items()
        }
    assert torch.equal(grads["drop"]["s0.g0.w"], torch.ones(5))
    assert torch.equal(grads["rescale"]["s0.g0.w"], torch.full((5,), 4.0))  # M / 1
    assert grads["rescale"]["s0.g1.w"] is None  # no contribution: stays None
    assert torch.equal(grads["rescale"]["s0.g2.w"], torch.full((5,), 2.0))  # all M contributed


def test_rescale_uses_the_mapping_the_step_really_used() -> None:
    pipe = FakePipe()
    freezer = Freezer(FreezeConfig(policy="none", grad="rescale"), pipe)
    assert freezer.before_step() == {}
    pipe.params["s1.g3.w"].grad = torch.ones(5)
    override = {(1, m): {"g3"} for m in range(2)}  # the caller froze g3 in 2 of 4 microbatches
    freezer.after_step(0.1, None, frozen=override)
    assert torch.equal(pipe.params["s1.g3.w"].grad, torch.full((5,), 2.0))
    assert freezer.actual_ratios[1] == pytest.approx(0.5 * 4 / 10)


def test_replan_only_when_drifted_and_adopted_only_when_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    solved: list[dict] = []
    makespans = iter([8.0, 7.9, 4.0])  # initial plan, then two re-plans

    def solve(schedule: Any, profile: dict, cap: float) -> FakePlan:
        solved.append(profile)
        return FakePlan({(s, m): 0.5 for s in range(S) for m in range(M)}, next(makespans), 10.0)

    predictions = iter([8.1, 9.6, 9.6])  # current plan under re-measured profiles

    monkeypatch.setattr(ctl, "solve_plan", solve)
    monkeypatch.setattr(ctl, "predict_makespan", lambda *a: next(predictions))
    pipe = FakePipe()
    freezer = Freezer(small(ramp_steps=0, replan_every=4, replan_drift=0.1), pipe)
    run(freezer, pipe, 18)  # steady from 13; re-measure at 17
    assert len(solved) == 1  # 8.1 vs 8.0: 1% drift, no re-solve
    assert pipe.profile_calls[-1] == (17, 4)
    pipe.slowdown = 2.0
    run(freezer, pipe, 4)  # step 21: drift 9.6 vs 8.1; new plan 7.9 is faster than 9.6
    assert len(solved) == 2 and freezer.plan.makespan == 7.9 and freezer.replans == 1
    refreshed = solved[1]["stages"][2]
    assert refreshed["F"] == pytest.approx(2 * F_TIME[2])  # F as measured
    run(freezer, pipe, 4)  # step 25: 9.6 vs 7.9 drifts; plan 4.0 adopted
    assert freezer.plan.makespan == 4.0 and freezer.replans == 2


def test_replan_keeps_the_plan_when_not_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    makespans = iter([8.0, 9.9])

    def solve(schedule: Any, profile: dict, cap: float) -> FakePlan:
        return FakePlan({(s, m): 0.5 for s in range(S) for m in range(M)}, next(makespans), 10.0)

    monkeypatch.setattr(ctl, "solve_plan", solve)
    monkeypatch.setattr(ctl, "predict_makespan", lambda *a: 9.95)
    pipe = FakePipe()
    freezer = Freezer(small(ramp_steps=0, replan_every=4), pipe)
    run(freezer, pipe, 18)
    assert freezer.plan.makespan == 8.0 and freezer.replans == 0


def test_refresh_scales_backward_by_measured_over_predicted() -> None:
    from tfcompile.freeze.time_model import refresh_profile

    planned = {"stages": [{"F": 1.0, "I": 2.0, "W": 4.0}], "comm": 0.1}
    measured = {"stages": [{"F": 1.5, "I": 3.0, "W": 1.0}], "comm": 0.2}
    # ratio 0.5 predicts I + W/2 = 4; measured 4 -> unchanged; F and comm as measured
    assert refresh_profile(planned, measured, [0.5]) == {
        "stages": [{"F": 1.5, "I": 2.0, "W": 4.0}],
        "comm": 0.2,
    }
    measured["stages"][0]["W"] = 5.0  # 8 vs 4: the stage became twice as slow
    assert refresh_profile(planned, measured, [0.5])["stages"][0] == {"F": 1.5, "I": 4.0, "W": 8.0}


def test_phase_and_plan_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_planner(monkeypatch)
    pipe = FakePipe()
    freezer = Freezer(small(), pipe)
    with caplog.at_level(logging.INFO, logger="tfcompile.freeze"):
        run(freezer, pipe, 20)
    lines = [r.getMessage() for r in caplog.records if r.name == "tfcompile.freeze"]
    assert sum("phase" in line for line in lines) == 5
    assert any("monitor_wmin -> ramp" in line for line in lines)
    plan_lines = [line for line in lines if "plan predicts" in line]
    assert len(plan_lines) == 1 and "10 -> 5 (-50.0%)" in plan_lines[0]


@pytest.mark.parametrize("policy", ["none", "apf", "autofreeze", "freezeout"])
def test_baselines_ignore_phases_and_freeze_whole_steps(policy: str) -> None:
    pipe = FakePipe()
    cfg = FreezeConfig(
        policy=policy,
        check_every=2,
        autofreeze_every=3,
        total_steps=40,
        freezeout_t0=0.3,
        apf_threshold=0.9,
    )
    freezer = Freezer(cfg, pipe)
    run(freezer, pipe, 40)
    assert freezer.phase == ("off" if policy == "none" else "baseline")
    assert pipe.profile_calls == [] and freezer.plan is None
    for frozen in pipe.history:
        for s in range(S):  # the same groups in every microbatch of a step
            assert len({frozen.get((s, m), frozenset()) for m in range(M)}) == 1
    froze_something = any(pipe.history)
    assert froze_something == (policy != "none")


def test_freezeout_follows_its_schedule_over_the_whole_model() -> None:
    pipe = FakePipe()
    cfg = FreezeConfig(policy="freezeout", total_steps=100, freezeout_t0=0.5)
    freezer = Freezer(cfg, pipe)
    run(freezer, pipe, 100)
    layers = S * G  # t_i = 0.5 + 0.5 * i / 11 (cubed): layer i frozen from round(100 t_i^3)
    for i in range(layers):
        s, g = divmod(i, G)
        t = (0.5 + 0.5 * i / (layers - 1)) ** 3
        first = next((k for k, h in enumerate(pipe.history) if f"g{g}" in h.get((s, 0), ())), None)
        assert first == (None if i == layers - 1 else round(100 * t))
    assert freezer.lr_factor(0, "g0", 0) == pytest.approx(1 / 0.125)


def test_hybrid_metric_picks_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_planner(monkeypatch, ratio=0.5)
    pipe = FakePipe()
    freezer = Freezer(small(policy="timely+apf", ramp_steps=0, apf_ema=0.5), pipe)
    run(freezer, pipe, 16)
    stability = freezer._apf.stability()
    for s in range(S):
        scores = {g: stability[(s, g)] for g in freezer.groups[s]}
        order = sorted(scores, key=lambda g: (scores[g], g))
        chosen = pipe.history[-1][(s, 0)]
        # greedy over the stability order: its first group is always chosen (target 5 of 10)
        assert order[0] in chosen
        # later microbatches absorb the rounding error of earlier ones: the average follows
        average = sum(
            sum(float(g[1:]) + 1 for g in pipe.history[-1].get((s, m), ())) / 10 for m in range(M)
        )
        assert abs(average / M - 0.5) <= 0.1
        assert freezer.actual_ratios[s] == pytest.approx(average / M)


def _save(freezer: Freezer, pipe: FakePipe) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "freezer": freezer.state_dict(),
            "params": {n: p.detach().clone() for n, p in pipe.params.items()},
            "step": pipe.step_index,
            "history": pipe.history,
        },
        buffer,
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    "policy", ["timely", "timely+apf", "timely+autofreeze", "apf", "autofreeze", "freezeout"]
)
def test_resume_reproduces_the_uninterrupted_run(
    monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    fake_planner(monkeypatch, ratio=0.5)
    cfg = small(
        policy=policy,
        replan_every=4,
        total_steps=48,
        autofreeze_every=3,
        apf_threshold=0.9,
        freezeout_t0=0.3,
    )
    steps, cut = 48, 17
    whole = FakePipe()
    uninterrupted = Freezer(cfg, whole)
    run(uninterrupted, whole, steps)

    first = FakePipe()
    before_cut = Freezer(cfg, first)
    run(before_cut, first, cut)
    blob = _save(before_cut, first)
    del before_cut, first
    state = torch.load(io.BytesIO(blob), weights_only=False)
    resumed_pipe = FakePipe(seed=99)  # different init: everything must come from the checkpoint
    with torch.no_grad():
        for n, p in resumed_pipe.params.items():
            p.copy_(state["params"][n])
    resumed_pipe.step_index = state["step"]
    resumed_pipe.history = state["history"]
    resumed = Freezer(cfg, resumed_pipe)
    resumed.load_state_dict(state["freezer"])
    assert resumed.phase == uninterrupted_phase(cfg, cut - 1)
    run(resumed, resumed_pipe, steps - cut)
    assert resumed_pipe.history == whole.history
    assert resumed.phase == uninterrupted.phase
    for n, p in whole.params.items():
        assert torch.allclose(resumed_pipe.params[n], p, atol=0, rtol=0)
    if cfg.uses_plan:
        assert resumed.plan.ratios == uninterrupted.plan.ratios


def uninterrupted_phase(cfg: FreezeConfig, step: int) -> str:
    pipe = FakePipe()
    return Freezer(cfg, pipe)._phase_at(step)


def test_resume_with_another_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = FakePipe()
    freezer = Freezer(FreezeConfig(policy="apf"), pipe)
    run(freezer, pipe, 3)
    other = Freezer(FreezeConfig(policy="timely"), FakePipe())
    with pytest.raises(FreezeConfigError, match="policy='apf'"):
        other.load_state_dict(freezer.state_dict())


def test_config_type_is_checked() -> None:
    with pytest.raises(FreezeConfigError, match="FreezeConfig"):
        Freezer({"policy": "timely"}, FakePipe())  # type: ignore[arg-type]


def test_phase_before_first_step() -> None:
    assert Freezer(small(), FakePipe()).phase == "warmup"
    assert Freezer(small(warmup_steps=0), FakePipe()).phase == "monitor_wmax"
    assert math.isclose(sum(Freezer(small(), FakePipe()).actual_ratios.values()), 0.0)


@pytest.mark.parametrize("name", ["1f1b", "gpipe", "zbh1"])
def test_with_the_real_planner(name: str) -> None:
    lp = pytest.importorskip("tfcompile.planner.lp")
    from tfcompile.schedules.generators import build

    schedule = build(name, S, M)
    pipe = FakePipe(schedule=schedule)
    cap = 0.7
    freezer = Freezer(small(max_freeze_ratio=cap, replan_every=4), pipe)
    run(freezer, pipe, 30)  # plan at 13, steady from 19, re-measured at 23 and 27
    plan = freezer.plan
    assert isinstance(plan, lp.FreezePlan)
    assert plan.makespan < plan.baseline_makespan
    for s in range(S):
        assert sum(plan.ratios.get((s, m), 0.0) for m in range(M)) / M <= cap + 1e-6
    assert freezer.ratios == {k: pytest.approx(plan.ratios.get(k, 0.0)) for k in freezer.ratios}
    frozen_stages = {s for (s, _m) in pipe.history[-1]}
    assert frozen_stages <= {s for s in range(S) if plan.stage_average()[s] > 0}
