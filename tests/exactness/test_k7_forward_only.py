"""Issue 11 kind 7: forward-only stages. A stage with no trainable parameter and no input
needing a gradient (frozen lower layers, LoRA-style) runs forward only and takes no part in
the backward (torchrun case in test_exactness_dist.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from exact_helpers import train_and_compare
from torch import nn

import tfcompile

XFAIL = pytest.mark.xfail(
    strict=True,
    reason="issue 11 kind 7: trace_stage raises when AOTAutograd produces no backward graph "
    "(bw_gm is None) instead of returning a forward-only program the runtime skips in B/I/W",
)


def lm_loss(o, y):
    return nn.functional.cross_entropy(o.flatten(0, 1), y.flatten())


@XFAIL
@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_case_frozen_embedding_and_first_layer(schedule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 11))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    X, Y = torch.randint(0, 11, (4, 5)), torch.randint(0, 11, (4, 5))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_and_compare(model, inputs=X, targets=Y, loss_fn=lm_loss, split_points=["2"],
                      schedule=schedule, microbatches=2, opt="adamw")
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]) and p.grad is None, n


@XFAIL
def test_forward_only_program_at_trace_stage_level():
    """Own example: a frozen float stage whose input needs no gradient traces into a program
    whose forward equals eager and whose backward yields no gradient and touches nothing."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.LayerNorm(6)).requires_grad_(False)
    ref = copy.deepcopy(m)
    x = torch.randn(3, 4)
    prog = tfcompile.trace_stage(m, (x,))
    out = prog.forward(0, x)
    assert torch.allclose(out, ref(x), atol=1e-6)
    assert prog.backward(0, torch.randn(3, 6)) == (None,)
    assert all(p.grad is None for p in m.parameters())


@XFAIL
def test_frozen_middle_stage_of_three_with_float_input():
    """Own example: the *first* two stages are frozen (LoRA-style), only the head trains; 3
    ranks, the middle stage gets a float input that needs no gradient."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    model[0].requires_grad_(False)
    model[2].requires_grad_(False)
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                      split_points=["2", "4"], ranks=3, microbatches=2, opt="sgd")
