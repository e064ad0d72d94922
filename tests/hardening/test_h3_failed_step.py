"""Kind 3: a failed step releases its state. After ``pipe.step`` raised in the middle of the
schedule, the next valid step works and equals eager training (one process); under torchrun
every rank raises (tests/hardening/test_h6_collectives.py, the fault soak)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tfcompile


def ce(logits, target):
    return nn.functional.cross_entropy(logits, target)


def build(first: nn.Module | None = None, schedule="1F1B"):
    torch.manual_seed(0)
    layers = [first] if first is not None else [nn.Linear(8, 8)]
    model = nn.Sequential(*layers, nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5))
    example = torch.zeros(2, dtype=torch.long) if first is not None else torch.zeros(2, 8)
    eager = copy.deepcopy(model)
    pipe = tfcompile.compile(
        model,
        schedule=schedule,
        stages=2,
        microbatches=2,
        example_inputs=(example,),
        loss_fn=ce,
        example_target=torch.zeros(2, dtype=torch.long),
    )
    return pipe, eager


def check_next_step_matches_eager(pipe, eager, x, y):
    loss = pipe.step(x, y)
    expected = ce(eager(x[:2]), y[:2]) / 2 + ce(eager(x[2:]), y[2:]) / 2
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    grads = dict(eager.named_parameters())
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-6, msg=name)
    for stage in pipe.stage_programs.values():
        assert stage.pending == []


@pytest.mark.parametrize("schedule", ["1F1B", "GPipe", "ZBV"])
def test_step_after_bad_targets_works(schedule):
    """The issue's example: a class index out of range fails in the last stage's loss, after
    other microbatches' forwards are pending; every later step used to raise "microbatch 0
    already has a pending forward"."""
    pipe, eager = build(schedule=schedule)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
    bad = y.clone()
    bad[3] = 100
    with pytest.raises((IndexError, RuntimeError)):
        pipe.step(x, bad)
    for p in pipe.parameters():
        p.grad = None
    assert pipe.step_index == 0  # the failed step does not count
    check_next_step_matches_eager(pipe, eager, x, y)


def test_step_after_a_failure_in_the_first_stage_works():
    """Our own example: a token id out of range fails in stage 0's embedding."""
    pipe, eager = build(first=nn.Embedding(10, 8))
    x = torch.tensor([1, 2, 3, 4])
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises((IndexError, RuntimeError)):
        pipe.step(torch.tensor([1, 2, 3, 99]), y)
    for p in pipe.parameters():
        p.grad = None
    check_next_step_matches_eager(pipe, eager, x, y)
