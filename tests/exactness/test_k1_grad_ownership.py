"""Issue 11 kind 1: gradient ownership. `.grad` must be a tensor tfcompile owns exclusively
(not the caller's grad_output, a receive buffer, another parameter's grad or the input
gradient handed upstream); accumulation behaves like eager AccumulateGrad."""

from __future__ import annotations

import copy

import pytest
import torch
from exact_helpers import (
    assert_grads_match,
    assert_params_match,
    eager_accumulate,
    program_grads_vs_eager,
    train_and_compare,
)
from torch import nn

import tfcompile


class Pos(nn.Module):
    def __init__(self, shape=(1, 3, 4)):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(*shape))

    def forward(self, x):
        return x + self.pos


class Res(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class Head(nn.Module):
    def __init__(self, d=4, classes=3):
        super().__init__()
        self.lin = nn.Linear(d, classes)

    def forward(self, x):
        return self.lin(x.mean(1))


def test_case_two_positional_embeddings_microbatch_size_1():
    torch.manual_seed(0)
    m = nn.Sequential(Pos(), Pos())
    xs = [(torch.randn(1, 3, 4, requires_grad=True),) for _ in range(2)]
    gs = [torch.randn(1, 3, 4) for _ in range(2)]
    program_grads_vs_eager(m, xs, gs)
    assert m[0].pos.grad is not m[1].pos.grad


def test_bias_grads_never_alias_each_other_the_grad_output_or_the_input_grad():
    """Own example: two biases added to the input (their gradients are the grad_output) in one
    block; the input gradient is the grad_output too. Nothing returned may share storage."""

    class TwoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.randn(2, 5))
            self.b = nn.Parameter(torch.randn(2, 5))

        def forward(self, x):
            return x + self.a + self.b

    torch.manual_seed(1)
    m = TwoBias()
    x = torch.randn(2, 5, requires_grad=True)
    prog = tfcompile.trace_stage(m, (x,))
    g = torch.randn(2, 5)
    g_before = g.clone()
    prog.forward(0, x)
    (dx,) = prog.backward(0, g)
    ptrs = [t.untyped_storage().data_ptr() for t in (m.a.grad, m.b.grad, dx, g)]
    assert len(set(ptrs[:3])) == 3 and ptrs[3] not in ptrs[:2], ptrs
    # a second microbatch accumulates into .grad only
    prog.forward(1, x)
    prog.backward(1, g)
    assert torch.equal(g, g_before)
    assert torch.equal(m.a.grad, 2 * g_before) and torch.equal(m.b.grad, 2 * g_before)


def test_linear_bias_microbatch_size_2_already_exact():
    """Control: when every gradient is computed by a kernel (no pass-through), ownership is
    fine today."""
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    xs = [(torch.randn(2, 4, requires_grad=True),) for _ in range(3)]
    program_grads_vs_eager(m, xs, [torch.randn(2, 4) for _ in range(3)])


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_case_compile_pos_res_microbatch_size_1(schedule):
    torch.manual_seed(0)
    model = nn.Sequential(Pos(), Res(), Pos(), Res(), Head())
    X, Y = torch.randn(2, 3, 4), torch.randint(0, 3, (2,))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                      split_points=["2"], schedule=schedule, microbatches=2, opt="adamw")


def test_compile_pos_at_stage_boundaries_accumulates_over_two_steps():
    """Own example: a Pos at the end of stage 0 (its grad is the received gradient) and at the
    start of stage 1 (its grad is the gradient sent upstream); two pipe.step() calls
    accumulate without zero_grad, then SGD with momentum steps."""
    torch.manual_seed(3)
    model = nn.Sequential(Res(), Pos(), Pos(), Res(), Head())
    ref = copy.deepcopy(model)
    X, Y = torch.randn(4, 3, 4), torch.randint(0, 3, (4,))
    loss = nn.functional.cross_entropy
    pipe = tfcompile.compile(model, schedule="1F1B", microbatches=4, ranks=2,
                             example_inputs=(X[:1],), loss_fn=loss, example_target=Y[:1],
                             split_points=["2"])
    for _ in range(2):
        pipe.step(X, Y)
        eager_accumulate(ref, X, Y, 4, loss)
    refs = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, refs[n].grad, atol=1e-5), n


class SharedSum(nn.Module):
    """`tanh(x + a + b)` with `a`, `b` shaped like `x`: the gradients of `a` and `b` are one
    computed value (tanh's backward), which the backward graph returns twice."""

    def __init__(self, shape=(2, 5)):
        super().__init__()
        self.a = nn.Parameter(torch.randn(*shape))
        self.b = nn.Parameter(torch.randn(*shape))

    def forward(self, x):
        return torch.tanh(x + self.a + self.b)


@pytest.mark.parametrize("input_grad", [False, True])
def test_value_returned_twice_by_a_region_is_owned_once(input_grad):
    """Own example: one region output is the gradient of two parameters of one group (and,
    with input_grad, also the input gradient handed out). Each .grad owns its memory, so the
    next microbatch's accumulation adds once to each."""
    torch.manual_seed(4)
    m = SharedSum()
    xs = [(torch.randn(2, 5, requires_grad=input_grad),) for _ in range(3)]
    prog = program_grads_vs_eager(m, xs, [torch.randn(2, 5) for _ in range(3)])
    region = prog.split.regions["_root"]
    assert len(set(region.outputs)) < len(region.outputs)  # the case: one value, two grads
    assert m.a.grad.untyped_storage().data_ptr() != m.b.grad.untyped_storage().data_ptr()


class PassThrough(nn.Module):
    """`lin(x) + pos`: the gradient of `pos` is the grad_output itself (a Linear-free path),
    the input gradient comes from the Linear's kernel."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 3, 4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + self.pos


def test_grad_of_a_pass_through_parameter_under_frozen_linear_and_reused_grad_output():
    """Own example: the grad_output tensor of the caller is reused for every microbatch (as a
    caller that seeds with one tensor does); the Linear's group is frozen in one microbatch, so
    `pos`'s gradient (the grad_output itself) is adopted first in a microbatch of its own."""
    torch.manual_seed(5)
    m = PassThrough()
    g = torch.randn(1, 3, 4)
    xs = [(torch.randn(1, 3, 4, requires_grad=True),) for _ in range(3)]
    prog = tfcompile.trace_stage(m, xs[0], groups="tensor")
    lin_groups = [n for n in prog.groups if n.startswith("lin")]
    del prog
    m2 = copy.deepcopy(m)
    program_grads_vs_eager(m2, xs, [g, g, g], frozen=[lin_groups, [], lin_groups],
                           groups="tensor")
    assert m2.pos.grad.untyped_storage().data_ptr() != g.untyped_storage().data_ptr()


class TwoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(1, 3, 4))
        self.b = nn.Parameter(torch.randn(1, 3, 4))

    def forward(self, x):
        return x + self.a + self.b


def test_compile_two_biases_at_both_boundaries_two_steps_without_zero_grad_then_adamw():
    """Own example (one process, GPipe): two biases at the end of stage 0 (both gradients are
    the gradient stage 1 hands over) and at the start of stage 1 (both are the gradient sent
    upstream); microbatch size 1, two steps accumulate without zero_grad, then 2 AdamW steps
    against eager on a deep copy."""
    torch.manual_seed(6)
    model = nn.Sequential(Res(), TwoBias(), TwoBias(), Res(), Head())
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(7)
    batches = [(torch.randn(3, 3, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen))
               for _ in range(4)]
    loss = nn.functional.cross_entropy
    pipe = tfcompile.compile(model, schedule="GPipe", microbatches=3, ranks=2,
                             example_inputs=(batches[0][0][:1],), loss_fn=loss,
                             example_target=batches[0][1][:1], split_points=["2"])
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for i in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        for X, Y in batches[2 * i : 2 * i + 2]:
            pipe.step(X, Y)
            eager_accumulate(ref, X, Y, 3, loss)
        assert_grads_match(model, ref)
        opt.step()
        ref_opt.step()
        assert_params_match(pipe.named_parameters(), ref)
