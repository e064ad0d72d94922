"""Issue 11 kind 2: aliasing and mutation metadata. Outputs aliasing an input or another
output, and a stage mutating its input, trace and give eager's values and gradients
(gradients of an aliasing output flow to its base)."""

from __future__ import annotations

import pytest
import torch
from exact_helpers import program_grads_vs_eager, train_and_compare
from torch import nn


class Skip(nn.Module):
    def __init__(self, how="same"):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.how = how

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        if self.how == "same":
            return h, x
        if self.how == "view_input":
            return h, x.view(-1)
        return h, h[:, :2], h.view(-1)


def _two_mbs(shape, n=2, seed=0):
    torch.manual_seed(seed)
    return [(torch.randn(*shape, requires_grad=True),) for _ in range(n)]


def test_case_inplace_relu_first_op_of_stage():
    torch.manual_seed(0)
    m = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 6))
    xs = _two_mbs((4, 6))
    program_grads_vs_eager(m, [(x.detach().clone().requires_grad_(),) for (x,) in xs],
                           [torch.randn(4, 6) for _ in range(2)])


def test_add_inplace_on_input_then_linear():
    """Own example: `x.mul_(2)` on the stage input (a received activation) before a Linear."""

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            x.mul_(2.0)
            return self.lin(x)

    torch.manual_seed(1)
    m = Scale()
    xs = [(torch.randn(2, 5),) for _ in range(2)]  # no input grad: in-place on a leaf is legal
    program_grads_vs_eager(m, xs, [torch.randn(2, 3) for _ in range(2)])


@pytest.mark.parametrize("how", ["same", "view_input", "views_of_output"])
def test_case_outputs_aliasing_input_or_output(how):
    m = Skip(how)
    xs = _two_mbs((3, 4), seed=2)
    n_out = 2 if how != "views_of_output" else 3
    shapes = {"same": [(3, 4), (3, 4)], "view_input": [(3, 4), (12,)],
              "views_of_output": [(3, 4), (3, 2), (12,)]}[how]
    torch.manual_seed(3)
    gs = [tuple(torch.randn(*s) for s in shapes[:n_out]) for _ in range(2)]
    program_grads_vs_eager(m, xs, gs)


def test_output_aliases_another_output_transpose():
    """Own example: `return h, h.t()` (a transposed view of another output)."""

    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.lin(x)
            return h, h.t()

    xs = _two_mbs((4, 4), seed=4)
    gs = [(torch.randn(4, 4), torch.randn(4, 4)) for _ in range(2)]
    program_grads_vs_eager(T(), xs, gs)


def test_case_compile_split_right_before_inplace_relu():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )
    X, Y = torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                      split_points=["3"], microbatches=2, opt="sgd")


def test_inplace_on_non_leaf_inside_stage_already_exact():
    """Control: in-place ops on intermediate values (not the stage input) are fine today."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            h.mul_(3.0)
            h.add_(1.0)
            return self.b(torch.relu(h))

    xs = _two_mbs((3, 4), seed=6)
    program_grads_vs_eager(M(), xs, [torch.randn(3, 4) for _ in range(2)])


class MutateThenExpose(nn.Module):
    """Own example: the stage adds a learned bias *in place* to its input (a received
    activation), then returns a result and a view of the mutated input (mutation and an
    output aliasing the input at once)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.randn(6) * 0.1)
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        x.add_(self.b)
        return torch.tanh(self.lin(x)), x[:, :3]


def test_mutated_input_returned_as_view_trace_stage():
    torch.manual_seed(7)
    xs = [(torch.randn(4, 6, requires_grad=True),) for _ in range(2)]
    gs = [(torch.randn(4, 6), torch.randn(4, 3)) for _ in range(2)]
    x0 = [x.detach().clone() for (x,) in xs]
    program_grads_vs_eager(MutateThenExpose(), xs, gs)
    for (x,), before in zip(xs, x0):
        assert torch.equal(x, before)  # the program never writes into the caller's input


class HeadOnPair(nn.Module):
    """A loss stage taking the aliasing pair inside it: `(h, x)` from a block, then a head."""

    def __init__(self, how):
        super().__init__()
        self.skip, self.head = Skip(how), nn.Linear(4, 3)

    def forward(self, x):
        outs = self.skip(x)
        return self.head(outs[0] + outs[1].reshape(outs[0].shape))


@pytest.mark.parametrize("how", ["same", "view_input"])
def test_inplace_first_op_and_aliases_adamw_trace_stage(how):
    """Own example, 2 AdamW steps at trace_stage level: an in-place first op on the stage
    input (LeakyReLU(inplace=True)) feeding a block whose outputs alias its input."""
    from exact_steps import program_adamw_vs_eager

    torch.manual_seed(8)
    m = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), HeadOnPair(how))
    xs = [(torch.randn(5, 4, requires_grad=True),) for _ in range(2)]
    ys = [torch.randint(0, 3, (5,)) for _ in range(2)]
    program_adamw_vs_eager(m, xs, ys, nn.functional.cross_entropy)


def test_compile_stage_starting_inplace_and_view_only_stage_adamw():
    """Own example, compile() with 3 stages and 2 AdamW steps: the middle stage is a pure view
    of its input (Unflatten: its output aliases the received activation), the last starts
    with an in-place Hardtanh on the received tensor."""
    from exact_steps import compile_adamw_vs_eager

    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.Linear(8, 8), nn.Unflatten(1, (2, 4)),
        nn.Hardtanh(-0.5, 0.5, inplace=True),
        nn.Flatten(), nn.Linear(8, 3),
    )
    X, Y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    compile_adamw_vs_eager(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                           split_points=["2", "3"], ranks=3, microbatches=3)


@pytest.mark.parametrize("how", ["same", "view_input"])
def test_first_stage_carries_its_input_without_grad(how):
    """Own example: a first stage (its input needs no gradient) returns its input, or a view
    of it, as a skip connection: that output has no tangent (AOTAutograd's descriptors say
    which outputs have one); the gradient passed for it is ignored, as eager's would be."""
    torch.manual_seed(10)
    xs = [(torch.randn(3, 4),) for _ in range(2)]
    second = (3, 4) if how == "same" else (12,)
    gs = [(torch.randn(3, 4), torch.randn(*second)) for _ in range(2)]
    prog = program_grads_vs_eager(Skip(how), xs, gs)
    assert prog.traced.tangent_outputs == (0,)
