"""FreezeConfig: paper defaults and clear errors for bad values."""

import math

import pytest

import tfcompile
from tfcompile import FreezeConfig, FreezeConfigError


def test_defaults_are_the_papers() -> None:
    cfg = tfcompile.FreezeConfig()
    assert cfg.policy == "timely"
    assert cfg.max_freeze_ratio == 0.9
    assert (cfg.warmup_steps, cfg.monitor_steps, cfg.ramp_steps) == (100, 100, 100)
    assert cfg.check_every == 10
    assert cfg.grad == "drop"
    assert (cfg.apf_ema, cfg.apf_threshold) == (0.99, 0.05)
    assert cfg.uses_plan and cfg.planning_steps == 300


@pytest.mark.parametrize("cap", [-0.1, 1.01, math.nan, "0.5", True])
def test_cap_outside_unit_interval_raises(cap: object) -> None:
    with pytest.raises(FreezeConfigError, match="max_freeze_ratio"):
        FreezeConfig(max_freeze_ratio=cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [0.0, 1.0, 0.7])
def test_cap_edges_accepted(cap: float) -> None:
    assert FreezeConfig(max_freeze_ratio=cap).max_freeze_ratio == cap


def test_unknown_policy_lists_choices() -> None:
    with pytest.raises(FreezeConfigError, match="unknown policy 'timley'.*'timely'"):
        FreezeConfig(policy="timley")


def test_unknown_grad_mode() -> None:
    with pytest.raises(FreezeConfigError, match="unknown grad 'mean'"):
        FreezeConfig(grad="mean")


PAPER_PHASES = dict(warmup_steps=100, monitor_steps=100, ramp_steps=100)


def test_phases_longer_than_training_raise() -> None:
    with pytest.raises(FreezeConfigError, match="need 400 steps.*only 399"):
        FreezeConfig(total_steps=399, **PAPER_PHASES)
    FreezeConfig(total_steps=400, **PAPER_PHASES)  # exactly fits
    cfg = FreezeConfig()
    with pytest.raises(FreezeConfigError, match="only 10"):
        cfg.check_training_length(10)


def test_baselines_have_no_phases_to_fit() -> None:
    FreezeConfig(policy="apf", total_steps=10)
    FreezeConfig(policy="none", total_steps=1)


def test_freezeout_needs_training_length() -> None:
    with pytest.raises(FreezeConfigError, match="total_steps"):
        FreezeConfig(policy="freezeout")
    assert FreezeConfig(policy="freezeout", total_steps=1000).total_steps == 1000


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"check_every": 0}, "check_every"),
        ({"monitor_steps": 0}, "monitor_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"ramp_steps": 2.5}, "ramp_steps"),
        ({"apf_threshold": 0.0}, "apf_threshold"),
        ({"autofreeze_percentile": 101}, "autofreeze_percentile"),
        ({"freezeout_schedule": "cosine"}, "freezeout_schedule"),
        ({"replan_drift": 2}, "replan_drift"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(FreezeConfigError, match=field):
        FreezeConfig(**kwargs)


def test_monitoring_may_be_empty_for_baselines() -> None:
    assert FreezeConfig(policy="autofreeze", monitor_steps=0).monitor_steps == 0


def test_config_is_immutable_and_serialisable() -> None:
    cfg = FreezeConfig(policy="timely+apf", seed=3)
    with pytest.raises(AttributeError):
        cfg.policy = "none"  # type: ignore[misc]
    assert FreezeConfig(**cfg.to_dict()) == cfg
