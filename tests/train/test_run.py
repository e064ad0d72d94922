"""RunConfig: the command line is generated from the fields and round-trips exactly."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tfcompile.freeze.config import FreezeConfig
from tfcompile.train.run import RunConfig

CHANGED = RunConfig(
    dim=32, layers=2, heads=2, kv_heads=1, seq=16, schedule="ZBV", ranks=2, stages=4,
    microbatches=8, batch=32, steps=50, lr=1e-3, seed=3, threads=1, freeze="timely+apf",
    max_freeze=0.5, prefix_freeze=True, wmin_microbatches=2, warmup=5, monitor=3,
    check_every=2, grad="rescale", eval_every=10, val_batches=1, log_every=5, out="o",
    no_dumps=True, no_plots=True, tensorboard="tb", save="ck/step{step}", save_every=7,
    resume="ck/step7", stop_at=20,
)  # fmt: skip


def parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    RunConfig.add_arguments(p, **kw)
    return p


def to_argv(config: RunConfig) -> list[str]:
    """Flags that describe ``config`` (the inverse of the generated parser)."""
    argv = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.metadata.get("cli", True) or value is None or value is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def test_defaults_round_trip():
    assert RunConfig.from_args(parser().parse_args([])) == RunConfig()


def test_every_field_round_trips_through_the_command_line():
    assert all(getattr(CHANGED, n) != getattr(RunConfig(), n) for n in ("dim", "grad", "save"))
    assert RunConfig.from_args(parser().parse_args(to_argv(CHANGED))) == CHANGED


def test_every_field_has_help_text_and_a_flag():
    help_text = parser().format_help()
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
        if f.metadata.get("cli", True):
            assert "--" + f.name.replace("_", "-") in help_text
    assert "--freezing" not in help_text  # a nested FreezeConfig is for library callers


def test_flag_names_stay_as_the_examples_had_them():
    flags = set(parser()._option_string_actions)
    for name in ("--kv-heads", "--max-freeze", "--prefix-freeze", "--wmin-microbatches",
                 "--warmup", "--monitor", "--check-every", "--eval-every", "--val-batches",
                 "--no-dumps", "--no-plots", "--save-every", "--stop-at"):  # fmt: skip
        assert name in flags


def test_unknown_fields_and_flags_are_errors():
    with pytest.raises(ValueError, match="unknown RunConfig field.*bogus"):
        RunConfig.from_dict({**RunConfig().to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown RunConfig field.*bogus"):
        parser(only=("dim", "bogus"))
    with pytest.raises(TypeError):
        dataclasses.replace(RunConfig(), bogus=1)
    with pytest.raises(SystemExit):
        parser().parse_args(["--bogus", "1"])
    with pytest.raises(SystemExit):
        parser().parse_args(["--grad", "sideways"])  # choices come from FreezeConfig's


def test_script_defaults_subsets_and_presets():
    mine = RunConfig(batch=64, out="out/digits")
    p = parser(defaults=mine, only=("batch", "out", "steps"))
    assert "--dim" not in p._option_string_actions
    assert RunConfig.from_args(p.parse_args([]), base=mine) == mine
    ns = parser(suppress_defaults=True).parse_args(["--steps", "7"])
    assert RunConfig.from_args(ns, base=mine) == dataclasses.replace(mine, steps=7)
    ns = argparse.Namespace(out="elsewhere", steps=9)  # a script's own --out
    assert RunConfig.from_args(ns, base=mine, only=("steps",)).out == "out/digits"


def test_json_round_trip_with_a_nested_freeze_config(tmp_path):
    config = dataclasses.replace(CHANGED, freezing=FreezeConfig(policy="apf", seed=2))
    config.to_json(tmp_path / "run.json")
    assert RunConfig.from_json(tmp_path / "run.json") == config
    assert RunConfig.from_dict(CHANGED.to_dict()) == CHANGED


def test_freeze_config_from_the_phase_unit():
    assert RunConfig().freeze_config() is None
    cfg = dataclasses.replace(RunConfig(), freeze="timely", steps=100).freeze_config()
    assert (cfg.warmup_steps, cfg.monitor_steps, cfg.ramp_steps, cfg.check_every) == (10,) * 3 + (
        5,
    )
    assert cfg.max_freeze_ratio == FreezeConfig().max_freeze_ratio and cfg.total_steps == 100
    cfg = CHANGED.freeze_config()
    assert (cfg.warmup_steps, cfg.monitor_steps, cfg.check_every, cfg.autofreeze_every) == (
        5, 3, 2, 5,
    )  # fmt: skip
    assert (cfg.grad, cfg.wmin_microbatches, cfg.prefix_on_truncating_stages) == (
        "rescale", 2, True,
    )  # fmt: skip
    explicit = FreezeConfig(policy="apf")
    assert dataclasses.replace(CHANGED, freezing=explicit).freeze_config() is explicit
