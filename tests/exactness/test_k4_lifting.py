"""Issue 11 kind 4: tensors not lifted into the trace. Plain tensor attributes trace as
constants; loss_fn tensors trace as constants and loss_fn parameters are trained (they belong
to the last stage and pipe.parameters())."""

from __future__ import annotations

import copy

import pytest
import torch
from exact_helpers import program_grads_vs_eager, train_and_compare
from torch import nn

import tfcompile


class Causal(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.mask = torch.tril(torch.ones(5, 5))  # plain attribute, not a buffer

    def forward(self, x):
        a = (x @ x.transpose(-1, -2)).masked_fill(self.mask == 0, float("-inf")).softmax(-1)
        return self.lin(a @ x)


class Scaled(nn.Module):
    """Own example: a plain 0-d tensor attribute used arithmetically, plus a plain tensor
    table indexed by an integer input."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = torch.tensor(0.5)
        self.table = torch.randn(7, 4)

    def forward(self, x, ids):
        return self.lin(x * self.scale + self.table[ids])


def test_case_causal_mask_plain_attribute():
    torch.manual_seed(0)
    xs = [(torch.randn(2, 5, 8, requires_grad=True),) for _ in range(2)]
    program_grads_vs_eager(Causal(), xs, [torch.randn(2, 5, 8) for _ in range(2)])


def test_plain_scalar_and_table_attributes():
    torch.manual_seed(1)
    m = Scaled()
    xs = [(torch.randn(3, 4, requires_grad=True), torch.randint(0, 7, (3,))) for _ in range(2)]
    program_grads_vs_eager(m, xs, [torch.randn(3, 4) for _ in range(2)])


def test_case_weighted_cross_entropy_loss_fn():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=loss, split_points=["2"],
                      microbatches=2, opt="adamw")


def test_loss_fn_closure_over_a_tensor_at_trace_stage_level():
    """Own example: a plain function closing over a class-weight tensor, trace_stage level."""
    torch.manual_seed(3)
    w = torch.tensor([0.2, 1.0, 3.0])

    def loss(o, y):
        return nn.functional.cross_entropy(o, y, weight=w)

    m = nn.Sequential(nn.Linear(6, 3))
    xs = [(torch.randn(4, 6),) for _ in range(2)]
    ys = [torch.randint(0, 3, (4,)) for _ in range(2)]
    program_grads_vs_eager(m, xs, [None, None], loss_fn=loss, targets=ys)


class TempLoss(nn.Module):
    """A learnable loss temperature (CLIP-style)."""

    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.tensor(0.3))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits * self.log_t.exp(), y)


def test_learnable_loss_temperature_is_trained_and_exposed():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    loss = TempLoss()
    ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    pipe = tfcompile.compile(model, schedule="1F1B", microbatches=2, ranks=2,
                             example_inputs=(X[:4],), loss_fn=loss, example_target=Y[:4],
                             split_points=["2"])
    assert any(p is loss.log_t for p in pipe.parameters())
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2)
    ref_params = [*ref_model.parameters(), *ref_loss.parameters()]
    ref_opt = torch.optim.AdamW(ref_params, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        ref_opt.zero_grad()
        pipe.step(X, Y)
        for a, b in zip(X.chunk(2), Y.chunk(2)):
            (ref_loss(ref_model(a), b) / 2).backward()
        opt.step()
        ref_opt.step()
        assert torch.allclose(loss.log_t, ref_loss.log_t, atol=1e-6)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.allclose(p, q, atol=1e-5)


def test_buffer_mask_already_exact():
    """Control: the same mask registered as a buffer traces today."""

    class CausalBuf(Causal):
        def __init__(self):
            super().__init__()
            mask = self.mask
            del self.mask
            self.register_buffer("mask", mask)

    torch.manual_seed(5)
    xs = [(torch.randn(2, 5, 8, requires_grad=True),) for _ in range(2)]
    program_grads_vs_eager(CausalBuf(), xs, [torch.randn(2, 5, 8) for _ in range(2)])


class PosTable(nn.Module):
    """Own example: a sinusoidal position table kept as a plain attribute (not a buffer),
    added to the input before a Linear."""

    def __init__(self, t=5, d=8):
        super().__init__()
        pos = torch.arange(t).unsqueeze(1) * torch.exp(torch.arange(0, d, 2) * -0.5)
        self.pe = torch.cat([pos.sin(), pos.cos()], dim=-1)  # (t, d), plain attribute
        self.lin = nn.Linear(d, 3)

    def forward(self, x):
        return self.lin((x + self.pe).mean(1))


class SmoothedTempLoss(nn.Module):
    """Own example: a loss module with a plain-tensor class weight (not a buffer), a
    registered buffer and a learnable temperature."""

    def __init__(self):
        super().__init__()
        self.class_w = torch.tensor([1.0, 0.5, 2.0])  # plain attribute: a constant
        self.register_buffer("bias", torch.tensor([0.1, -0.1, 0.0]))
        self.t = nn.Parameter(torch.tensor(0.7))

    def forward(self, logits, y):
        return nn.functional.cross_entropy(logits / self.t + self.bias, y, weight=self.class_w)


def test_plain_table_and_loss_module_with_parameter_adamw_trace_stage():
    """2 AdamW steps at trace_stage level; the loss temperature is trained (group loss_fn)."""
    from exact_steps import program_adamw_vs_eager

    torch.manual_seed(6)
    loss = SmoothedTempLoss()
    xs = [(torch.randn(4, 5, 8, requires_grad=True),) for _ in range(2)]
    ys = [torch.randint(0, 3, (4,)) for _ in range(2)]
    prog = program_adamw_vs_eager(PosTable(), xs, ys, loss)
    assert prog.groups["loss_fn"] == ["loss_fn.t"]
    assert prog.traced.params["loss_fn.t"] is loss.t
    assert "loss_fn.bias" in prog.traced.buffer_names


def test_compile_causal_mask_and_learnable_loss_adamw():
    """compile() with a plain-attribute causal mask in the last stage and a loss module with a
    learnable temperature: 2 AdamW steps like eager; the temperature is in
    pipe.named_parameters() as 'loss_fn.t'."""
    from exact_steps import compile_adamw_vs_eager

    class Pool(nn.Module):
        def forward(self, x):
            return x.mean(1)

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 8), Causal(), Pool(), nn.Linear(8, 3))
    X, Y = torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
    pipe = compile_adamw_vs_eager(model, inputs=X, targets=Y, loss_fn=SmoothedTempLoss(),
                                  split_points=["1"])
    assert "loss_fn.t" in dict(pipe.named_parameters())
    assert any("loss_fn.t" in names for names in pipe.stage_groups(1).values())


class GradAttr(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = torch.ones(4, requires_grad=True)  # would silently be a constant

    def forward(self, x):
        return self.lin(x) * self.scale


def test_plain_attribute_requiring_grad_is_refused_naming_it():
    m = nn.Sequential(GradAttr())
    with pytest.raises(tfcompile.TraceError) as e:
        tfcompile.trace_stage(m, (torch.randn(2, 4),))
    msg = str(e.value)
    assert "GradAttr" in msg and "scale" in msg and "nn.Parameter" in msg
    assert "register_buffer" in msg


def test_closure_tensor_requiring_grad_in_loss_fn_is_refused():
    w = torch.ones(3, requires_grad=True)

    def loss(o, y):
        return nn.functional.cross_entropy(o * w, y)

    with pytest.raises(tfcompile.TraceError, match="nn.Parameter"):
        tfcompile.trace_stage(nn.Linear(6, 3), (torch.randn(4, 6),), loss_fn=loss,
                              example_target=torch.randint(0, 3, (4,)))


def test_global_tensor_requiring_grad_is_refused_after_tracing():
    """Generic net: a tensor reached neither as attribute nor closure (a module global)
    that requires grad ends up a graph constant and is refused."""

    class UsesGlobal(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x) * _GLOBAL_SCALE

    with pytest.raises(tfcompile.TraceError, match="requires grad"):
        tfcompile.trace_stage(UsesGlobal(), (torch.randn(2, 4),))


_GLOBAL_SCALE = torch.full((4,), 2.0, requires_grad=True)
