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


def lm_loss(o, y):
    return nn.functional.cross_entropy(o.flatten(0, 1), y.flatten())


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


class _Recording:
    """Wraps a transport and records every message put."""

    def __init__(self, inner):
        self.inner, self.sent = inner, []

    def put(self, key, tensors):
        self.sent.append(key)
        self.inner.put(key, tensors)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_three_stages_first_two_frozen_adamw_no_grad_messages():
    """Own example: a 3-stage model whose first two stages are frozen (embedding + two
    LayerNorm/GELU blocks), only the head trains (AdamW, 2 steps, equal to eager). Stages 0
    and 1 are forward-only: no B/I/W runs on them and no gradient message is sent."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(13, 8), nn.Linear(8, 8), nn.GELU(), nn.LayerNorm(8),
                          nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 13))
    for i in range(6):
        model[i].requires_grad_(False)
    X, Y = torch.randint(0, 13, (4, 5)), torch.randint(0, 13, (4, 5))
    ref = copy.deepcopy(model)
    from exact_helpers import compile_pipe, eager_accumulate, make_opt

    pipe = compile_pipe(model, inputs=X, targets=Y, loss_fn=lm_loss, split_points=["2", "5"],
                        ranks=3, microbatches=2)
    assert pipe.forward_only_stages == {0, 1}
    assert [pipe.stage_programs[s].forward_only for s in range(3)] == [True, True, False]
    assert pipe.stage_groups(0) == {} and pipe.group_costs(1) == {}
    pipe.runner.transport = _Recording(pipe.runner.transport)
    opt = make_opt([p for p in pipe.parameters() if p.requires_grad], "adamw")
    ref_opt = make_opt([p for p in ref.parameters() if p.requires_grad], "adamw")
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        loss = pipe.step(X, Y)
        want = eager_accumulate(ref, X, Y, 2, lm_loss)
        assert abs(loss - want) <= 1e-5
        opt.step()
        ref_opt.step()
    assert not [k for k in pipe.runner.transport.sent if k[0] == "grad"]
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
        assert p.requires_grad or p.grad is None, n
    assert not any(pipe.stage_programs[s].pending for s in range(3))


def test_frozen_stage_then_trainable_middle_sends_grads_only_where_needed():
    """Own example: stage 0 frozen, stages 1 and 2 train: stage 1 gets gradients from stage 2
    but sends none to stage 0; parameters equal eager after 2 SGD steps."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    model[0].requires_grad_(False)
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    pipe, _ = train_and_compare(model, inputs=X, targets=Y,
                                loss_fn=nn.functional.cross_entropy, split_points=["2", "4"],
                                ranks=3, microbatches=2, opt="sgd")
    assert pipe.forward_only_stages == {0}
    assert pipe.stage_programs[1].input_requires_grad == (False,)
    assert pipe.stage_programs[2].input_requires_grad == (True,)


def test_forward_only_stage_under_timely_freezing():
    """The freezer and planner take a stage without groups (W cost 0): training through the
    freezing phases with a frozen first stage runs and leaves it untouched."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    model[0].requires_grad_(False)
    before = model[0].weight.detach().clone()
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    from exact_helpers import compile_pipe

    cfg = tfcompile.FreezeConfig(policy="timely", warmup_steps=1, monitor_steps=1,
                                 ramp_steps=1, check_every=1)
    pipe = compile_pipe(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                        split_points=["2"], microbatches=2, freeze=cfg)
    opt = torch.optim.SGD([p for p in pipe.parameters() if p.requires_grad], lr=0.1)
    for _ in range(6):
        opt.zero_grad()
        pipe.step(X, Y)
        opt.step()
    assert torch.equal(model[0].weight, before) and model[0].weight.grad is None
