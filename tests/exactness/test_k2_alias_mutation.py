"""Issue 11 kind 2: aliasing and mutation metadata. Outputs aliasing an input or another
output, and a stage mutating its input, trace and give eager's values and gradients
(gradients of an aliasing output flow to its base)."""

from __future__ import annotations

import pytest
import torch
from exact_helpers import program_grads_vs_eager, train_and_compare
from torch import nn

XFAIL_MUT = pytest.mark.xfail(
    strict=True,
    reason="issue 11 kind 2: trace_stage counts forward outputs (n_mut = outputs - user "
    "outputs) instead of reading ViewAndMutationMeta: a mutated *input* is refused",
)
XFAIL_ALIAS = pytest.mark.xfail(
    strict=True,
    reason="issue 11 kind 2: aliased outputs get no tangent in the AOT backward; "
    "trace_stage matches tangents to float outputs by count",
)


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


@XFAIL_MUT
def test_case_inplace_relu_first_op_of_stage():
    torch.manual_seed(0)
    m = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 6))
    xs = _two_mbs((4, 6))
    program_grads_vs_eager(m, [(x.detach().clone().requires_grad_(),) for (x,) in xs],
                           [torch.randn(4, 6) for _ in range(2)])


@XFAIL_MUT
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


@XFAIL_ALIAS
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


@XFAIL_ALIAS
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


@XFAIL_MUT
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
