"""Kind 2: no freezing policy decides on a non-finite metric. The measurement is skipped,
logged as a warning and counted (Freezer.skipped_measurements)."""

from __future__ import annotations

import logging

import pytest
import torch

from tfcompile import FreezeConfig
from tfcompile.freeze.policies import APF, AutoFreeze
from tfcompile.schedules.profile import CostProfile
from tfcompile.testing import linear_freeze_pipeline

LAYERS = 6


def build(**config):
    pipe = linear_freeze_pipeline(FreezeConfig(**config), layers=LAYERS)
    return pipe, torch.optim.SGD(pipe.parameters(), lr=0.01)


def train(pipe, opt, steps, bad_step=None):
    """Steps with an optimizer that skips a step with non-finite gradients (as GradScaler
    does); at ``bad_step`` the batch holds an inf, so every gradient is inf or NaN."""
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        if step == bad_step:
            x[0, 0] = float("inf")
        opt.zero_grad(set_to_none=True)
        pipe.step(x, y)
        if all(torch.isfinite(p.grad).all() for p in pipe.parameters() if p.grad is not None):
            opt.step()


def test_autofreeze_ignores_a_step_with_inf_gradients(caplog):
    """The issue's example: one inf-gradient step froze the whole model for the rest of the
    run (a NaN percentile makes every comparison read "converged")."""
    config = dict(policy="autofreeze", autofreeze_every=2, total_steps=12)
    clean, opt = build(**config)
    train(clean, opt, 12)
    pipe, opt = build(**config)
    with caplog.at_level(logging.WARNING, logger="tfcompile.freeze"):
        train(pipe, opt, 12, bad_step=3)
    frozen = {g for groups in pipe.last_frozen.values() for g in groups}
    assert len(frozen) < LAYERS, "a non-finite step must not freeze the whole model"
    assert pipe.freezer.skipped_measurements["autofreeze"] == 1
    assert "non-finite" in caplog.text
    assert clean.freezer.skipped_measurements["autofreeze"] == 0


def test_autofreeze_skips_non_finite_norms_from_another_rank():
    policy = AutoFreeze(50.0, freezes=True)
    order = [("a",), ("b",), ("c",)]
    for norms in ({k: 1.0 for k in order}, {order[0]: 1.0, order[1]: 2.0, order[2]: 3.0}):
        policy.observe(norms)
        policy.end_interval()
    policy.end_interval({order[0]: float("nan"), order[1]: 2.0, order[2]: float("inf")})
    assert policy.skipped_nonfinite == 2
    assert all(v == v for v in policy.change.values())  # no NaN change
    assert policy.advance_prefix(order) <= 1


def test_apf_skips_checks_of_non_finite_parameters():
    """APF flipped between stable and unstable on NaN metrics; now the check is skipped."""
    apf = APF(0.9, 0.05, 1, freezes=True)
    values = [torch.tensor([1.0, 2.0]), torch.tensor([1.1, 2.1]), torch.tensor([1.2, 2.2])]
    for step, v in enumerate(values):
        apf.check(step, {"g": [v]})
    before = apf.stability()["g"]
    for step in (3, 4, 5):
        apf.check(step, {"g": [torch.tensor([float("nan"), 2.0])]})
        assert apf.stability()["g"] == before
    assert apf.skipped_nonfinite == 3
    apf.check(6, {"g": [torch.tensor([1.3, 2.3])]})  # back to finite: measured again
    assert apf.stability()["g"] == pytest.approx(1.0)
    state = apf.state_dict()
    restored = APF(0.9, 0.05, 1, freezes=True)
    restored.load_state_dict(state)
    assert restored.skipped_nonfinite == 3


def test_timely_skips_an_empty_measurement(caplog):
    """Our own example: a measured profile with no time at all (an empty window, e.g. a run
    resumed from a checkpoint without samples) is not planned on but re-measured."""
    config = dict(
        policy="timely", warmup_steps=0, monitor_steps=2, ramp_steps=1, check_every=1,
        replan_every=0, total_steps=10,
    )  # fmt: skip
    pipe, _ = build(**config)
    freezer = pipe.freezer
    empty = CostProfile.uniform(2, F=0.0, I=0.0, W=0.0, comm=0.0)
    with caplog.at_level(logging.WARNING, logger="tfcompile.freeze"):
        freezer.before_step(0)
        freezer.before_step(1)
        freezer.before_step(2, empty)
    assert freezer.profiles["wmax"] is None
    assert freezer.skipped_measurements["profile"] == 1
    assert "re-measured" in caplog.text
    assert freezer.measurement_due(3) is not None  # still due: measured at the next step
