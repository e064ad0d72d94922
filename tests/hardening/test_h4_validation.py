"""Kind 4: wrong arguments at the API boundary raise tfcompile errors that say what was
expected (checked against the traced specs), before anything runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile.errors import FreezeConfigError, RuntimeConfigError, TraceError


def compile_mlp(**overrides):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    args = dict(
        schedule="1F1B",
        stages=2,
        microbatches=2,
        example_inputs=(torch.zeros(2, 8),),
        loss_fn=nn.functional.mse_loss,
        example_target=torch.zeros(2, 4),
    )
    return tfcompile.compile(model, **{**args, **overrides})


@pytest.fixture(scope="module")
def pipe():
    return compile_mlp()


X, Y = torch.randn(4, 8), torch.randn(4, 4)


@pytest.mark.parametrize(
    "targets,match",
    [
        (torch.randn(4, 5), r"microbatches of shape \(2, 5\).*compiled for .*\(2, 4\)"),
        (torch.randn(4, 4, dtype=torch.float64), "dtype torch.float64.*compiled for torch.float32"),
        (Y.tolist(), "targets is a Python list of numbers.*must be tensors"),
        ((Y, "x"), r"targets\[1\] is str.*must be tensors"),
    ],
)
def test_step_targets(pipe, targets, match):
    with pytest.raises(RuntimeConfigError, match=match):
        pipe.step(X, targets)


def test_step_inputs_and_frozen(pipe):
    with pytest.raises(RuntimeConfigError, match="inputs is a Python list of numbers"):
        pipe.step(X.tolist(), Y)
    with pytest.raises(RuntimeConfigError, match="frozen= must be a mapping"):
        pipe.step(X, Y, frozen=[(0, 0)])
    with pytest.raises(RuntimeConfigError, match="collection of group names"):
        pipe.step(X, Y, frozen={(0, 0): "0"})
    assert pipe.step(X, Y) > 0  # nothing was left behind by the refusals


def fresh_backward_input(pipe, grad):
    first = pipe.stage_programs[0]
    first.release()
    first.forward(0, torch.randn(2, 8))
    try:
        return first.backward_input(0, grad)
    finally:
        first.release()


@pytest.mark.parametrize(
    "grad,match",
    [
        (
            torch.randn(2, 8, dtype=torch.float64),
            r"dtype torch.float64, expected \(2, 8\) torch.float32",
        ),
        ([[0.0] * 8] * 2, r"grad_output 0 is list, expected a tensor of shape \(2, 8\)"),
        (torch.randn(3, 8), r"shape \(3, 8\) .*expected \(2, 8\)"),
    ],
)
def test_grad_outputs_checked_against_traced_specs(pipe, grad, match):
    with pytest.raises(TraceError, match=match):
        fresh_backward_input(pipe, grad)


def int_loss(out, target):
    return (out - target).abs().sum().long()


LIST_8, LIST_4 = [[0.0] * 8] * 2, [[0.0] * 4] * 2


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (dict(freeze={"policy": "timely"}), FreezeConfigError, r"FreezeConfig\(\*\*that_dict\)"),
        (dict(freeze="timely"), FreezeConfigError, "expects a tfcompile.FreezeConfig"),
        (dict(loss_fn=int_loss), TraceError, "floating-point scalar, it returned torch.int64"),
        (dict(example_inputs=LIST_8), RuntimeConfigError, r"inputs\[0\] is a Python list of"),
        (dict(example_target=LIST_4), RuntimeConfigError, "example_target is a Python list of"),
        (dict(timeout=-5), RuntimeConfigError, "timeout=-5 seconds is not usable"),
        (dict(timeout=0.001), RuntimeConfigError, "timeout=0.001 seconds is not usable"),
        (dict(timeout=float("inf")), RuntimeConfigError, "is not usable"),
        (dict(timeout="10"), RuntimeConfigError, "must be a number of seconds"),
        (dict(recv_lookahead=-1), RuntimeConfigError, "recv_lookahead=-1 must be an integer"),
    ],
)
def test_compile_arguments(overrides, error, match):
    with pytest.raises(error, match=match):
        compile_mlp(**overrides)


def test_model_must_be_a_module():
    with pytest.raises(RuntimeConfigError, match="takes a torch.nn.Module, got function"):
        tfcompile.compile(
            lambda x: x, "1F1B", stages=2, microbatches=2, example_inputs=(torch.zeros(2, 8),),
            loss_fn=nn.functional.mse_loss, example_target=torch.zeros(2, 8),
        )  # fmt: skip
