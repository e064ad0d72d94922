"""Kind 1: a run resumed at any step reproduces the uninterrupted one, monitoring windows
included (the freezer's checkpoint carries the window's timing samples)."""

from __future__ import annotations

import copy

import pytest
import torch

from tfcompile import FreezeConfig
from tfcompile.runtime.timers import ActionTimer, TimedPart
from tfcompile.testing import linear_freeze_pipeline

STEPS = 14
# warm-up 0, w_max 1-3, w_min 4-6, plan at 7, ramp 7-8, steady 9-, re-plan at 11 and 13
CONFIG = dict(
    policy="timely",
    warmup_steps=1,
    monitor_steps=3,
    ramp_steps=2,
    check_every=1,
    replan_every=2,
    replan_drift=0.0,
    replan_min_gain=0.0,
    max_freeze_ratio=0.9,
    seed=5,
    total_steps=STEPS,
)


@pytest.fixture
def synthetic_clock(monkeypatch):
    """Deterministic action times that differ from step to step (so a window's median depends
    on exactly which samples it holds) and between frozen and unfrozen backward parts."""
    clock = {"t": 0.0, "step": -1}
    begin = ActionTimer.begin_step

    def begin_step(self, step):
        clock["step"], clock["t"] = step, float(step)  # the same time base in every run
        begin(self, step)

    def stop(self, token, stage, part, microbatch, frozen="none"):
        base = {"F": 1.0, "I": 1.2, "W": {"none": 2.0, "some": 1.0, "all": 0.1}[frozen]}[part]
        seconds = 1e-3 * base * (1.0 + 0.37 * ((clock["step"] * 7 + stage) % 5))
        start = clock["t"]
        clock["t"] = start + seconds
        self._current.append(
            TimedPart(clock["step"], stage, part, microbatch, start, start + seconds, 0, frozen)
        )

    monkeypatch.setattr(ActionTimer, "begin_step", begin_step)
    monkeypatch.setattr(ActionTimer, "stop", stop)
    return clock


def build():
    pipe = linear_freeze_pipeline(FreezeConfig(**CONFIG), layers=4)
    return pipe, torch.optim.SGD(pipe.parameters(), lr=0.05, momentum=0.9)


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)


def one_step(pipe, opt):
    step = pipe.step_index
    opt.zero_grad(set_to_none=True)
    loss = pipe.step(*batch(step))
    opt.step()
    plan = pipe.freezer.plan
    frozen = {k: sorted(v) for k, v in sorted(pipe.last_frozen.items())}
    ratios = None if plan is None else sorted(plan.ratios.items())
    return (step, loss, pipe.freezer.phase, frozen, ratios)


def test_resume_at_every_step_equals_uninterrupted(synthetic_clock):
    pipe, opt = build()
    log, saved = [], []
    while pipe.step_index < STEPS:
        log.append(one_step(pipe, opt))
        saved.append(
            (
                copy.deepcopy(pipe.freezer.state_dict()),
                copy.deepcopy(opt.state_dict()),
                {n: p.detach().clone() for n, p in pipe.named_parameters()},
                pipe.step_index,
            )
        )
    final = {n: p.detach().clone() for n, p in pipe.named_parameters()}
    phases = {r[2] for r in log}
    assert phases == {"warmup", "monitor_wmax", "monitor_wmin", "ramp", "steady"}
    assert any(r[3] for r in log[7:]), "the plan must freeze something"
    assert pipe.freezer.replans >= 1, "the sweep must cross an adopted re-plan"

    for freezer_state, opt_state, params, step_index in saved[:-1]:
        pipe2, opt2 = build()
        with torch.no_grad():
            for n, p in pipe2.named_parameters():
                p.copy_(params[n])
        opt2.load_state_dict(opt_state)
        pipe2.freezer.load_state_dict(copy.deepcopy(freezer_state))
        pipe2.step_index = step_index
        resumed = list(log[:step_index])
        while pipe2.step_index < STEPS:
            resumed.append(one_step(pipe2, opt2))
        assert resumed == log, f"resumed after step {step_index - 1}"
        for n, p in pipe2.named_parameters():
            torch.testing.assert_close(p, final[n], rtol=0, atol=0, msg=n)
