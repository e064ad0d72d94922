"""Kind 7: --out is checked before solving, unreachable phases warn, a failed save leaves no
.tmp file. (Exit codes under torchrun: test_h8_fault_soak.py.)"""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile import FreezeConfig
from tfcompile.cli import main
from tfcompile.train.checkpoint import save_checkpoint


def test_plan_out_checked_before_solving(tmp_path, capsys, monkeypatch):
    import tfcompile.planner.plan as plan_mod

    def never(*a, **k):
        raise AssertionError("the planner must not run")

    monkeypatch.setattr(plan_mod, "plan_freeze", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["plan", "--schedule", "1F1B", "--stages", "2", "--microbatches", "4"]
    assert main([*args, "--out", str(blocker)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main([*args, "--out", str(blocker / "sub")]) == 2  # our own: below a file
    assert "is not a folder" in capsys.readouterr().err


def mlp_pipe(freeze):
    torch.manual_seed(0)
    return tfcompile.compile(
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)),
        schedule="1F1B",
        stages=2,
        microbatches=2,
        example_inputs=(torch.zeros(1, 4),),
        loss_fn=nn.functional.mse_loss,
        example_target=torch.zeros(1, 4),
        freeze=freeze,
    )


def test_unreachable_phases_warn_without_total_steps(caplog):
    with caplog.at_level(logging.WARNING, logger="tfcompile.freeze"):
        mlp_pipe(FreezeConfig(policy="timely"))
    assert "total_steps is not given" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfcompile.freeze"):
        mlp_pipe(FreezeConfig(policy="timely", total_steps=400))
        mlp_pipe(FreezeConfig(policy="apf"))  # a baseline has no phases to reach
    assert "total_steps" not in caplog.text


def test_failed_save_leaves_no_tmp(tmp_path):
    pipe = mlp_pipe(None)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint(tmp_path, pipe, None, extra={"bad": lambda: None})  # unpicklable
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):  # our own: a directory in the file's place
        (tmp_path / "rank0.pt.tmp").mkdir()
        save_checkpoint(tmp_path, pipe, None)
    assert not (tmp_path / "rank0.pt").exists()
