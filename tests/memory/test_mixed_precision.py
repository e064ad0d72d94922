"""mixed_precision="bf16" (issue 15): float32 parameters and .grad, a float32 loss, bfloat16
between stages, equal to eager under the same torch.autocast within bfloat16 tolerance.

Tolerance: inside a stage the graphs are exactly eager autocast's ops (a one-stage program
matches to float32 rounding); between stages activations and gradients are rounded to
bfloat16 once per boundary (relative error <= 2**-8 each), so gradients are compared with
a relative tolerance of 5e-2 of each tensor's largest entry after two AdamW steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile.models import Llama, LlamaConfig

REL_TOL = 5e-2


def lm_loss(o, t):
    return nn.functional.cross_entropy(o.flatten(0, 1), t.flatten())


def _llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=2))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def test_one_stage_equals_eager_autocast():
    model = _llama()
    ref = copy.deepcopy(model)
    x, y = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    prog = tfcompile.trace_stage(model, (x,), loss_fn=lm_loss, example_target=y,
                                 mixed_precision="bf16")
    loss = prog.forward(0, x, target=y)
    prog.backward(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lm_loss(ref(x), y)
    want.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= 1e-6
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.dtype == p.grad.dtype == torch.float32, n
        assert _rel(p.grad, q.grad) <= 1e-5, n


def test_pipeline_bf16_between_stages_equals_eager_autocast():
    model = _llama()
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 40, (4, 8), generator=g), torch.randint(0, 40, (4, 8), generator=g)
    pipe = tfcompile.compile(model, "1F1B", microbatches=2, ranks=2, example_inputs=(x[:2],),
                             loss_fn=lm_loss, example_target=y[:2], split_points=["layers.1"],
                             mixed_precision="bf16")
    # activations and gradients at the boundary are bfloat16: half the bytes of float32
    assert pipe.stage_programs[1].traced.input_specs[0].dtype == torch.bfloat16
    assert pipe.stage_programs[1].traced.tangent_specs[0].dtype == torch.float32  # loss seed
    assert pipe.stage_programs[0].traced.tangent_specs[0].dtype == torch.bfloat16
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        loss = pipe.step(x, y)
        total = 0.0
        for a, b in zip(x.chunk(2), y.chunk(2)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                part = lm_loss(ref(a), b) / 2
            part.backward()
            total += part.item()
        assert abs(loss - total) <= 1e-2 * abs(total), (loss, total)
        got = dict(pipe.named_parameters())
        for n, q in ref.named_parameters():
            assert got[n].grad.dtype == torch.float32, n
            assert _rel(got[n].grad, q.grad) <= REL_TOL, (n, _rel(got[n].grad, q.grad))
        opt.step()
        ref_opt.step()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="mixed_precision"):
        tfcompile.trace_stage(nn.Linear(2, 2), (torch.randn(1, 2),), mixed_precision="fp8")
