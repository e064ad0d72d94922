"""Training a zoo model through compile() against eager on a deep copy: shared by the
in-process tests and the torchrun worker."""

from __future__ import annotations

import copy

import torch

import tfcompile
from tfcompile.runtime.pipeline import Pipeline


def adamw(params):
    """AdamW with lr/eps = 10. Adam multiplies a gradient's absolute rounding error by up to
    lr/eps (an entry's update is lr * g / (|g| + eps)); with torch's defaults (1e5) the fp32
    reassociation of a sum (GPT-2's tied embedding, Conv1D's addmm: ~1e-8 absolute) becomes
    a 1e-4 relative parameter difference, a property of the optimizer, not of the pipeline.
    The gradients themselves are compared before the first step (``grads_error``)."""
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-3, eps=1e-4,
                             weight_decay=0.1)


def compile_case(case, stages: int, **kw) -> Pipeline:
    """compile() as a user calls it: the model unchanged, one microbatch's input ids, no loss
    and no target (the adapter's defaults)."""
    microbatches = max(2, stages)
    mb = case.inputs.shape[0] // microbatches
    return tfcompile.compile(case.model, "1F1B", stages=stages, microbatches=microbatches,
                             example_inputs=(case.inputs[:mb],), **kw)


def eager_step(case, ref, microbatches: int) -> float:
    """The mean microbatch loss as the model's library computes it, backward on `ref`."""
    total = 0.0
    for x, y in zip(case.inputs.chunk(microbatches), case.targets.chunk(microbatches)):
        loss = case.eager_loss(ref, x, y) / microbatches
        loss.backward()
        total += loss.item()
    return total


def train_two_steps(case, pipe: Pipeline, microbatches: int):
    """Two AdamW steps through `pipe` and eagerly on a deep copy taken before the first step.
    Returns the pipeline's losses, eager's losses, the eager copy and the gradient error of
    the first step (``grads_error``)."""
    ref = copy.deepcopy(case.model)
    opt, ropt = adamw(case.model.parameters()), adamw(ref.parameters())
    got, want = [], []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ropt.zero_grad(set_to_none=True)
        got.append(pipe.step(case.inputs, case.targets))
        want.append(eager_step(case, ref, microbatches))
        if len(got) == 1:
            grad_err = grads_error(case.model, ref)
        opt.step()
        ropt.step()
    return got, want, ref, grad_err


def worst_relative_error(model, ref) -> float:
    """max |p - p_ref| / (1e-5 * |p_ref| + 1e-7) over every parameter, by model name: <= 1
    means equal at rtol 1e-5 (atol 1e-7 for entries near zero)."""
    refs = dict(ref.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        r = refs[name].detach()
        err = ((p.detach() - r).abs() / (1e-5 * r.abs() + 1e-7)).max().item()
        worst = max(worst, err)
    return worst


def grads_error(model, ref) -> float:
    """max |g - g_ref| / (1e-5 * max |g_ref| + 1e-9) over every trainable parameter: <= 1 means
    each gradient equals eager's at rtol 1e-5 of its tensor's scale (fp32 sums reassociate)."""
    refs = dict(ref.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g, r = p.grad, refs[name].grad
        if (g is None) != (r is None):
            return float("inf")
        if g is not None:
            worst = max(worst, ((g - r).abs().max() / (1e-5 * r.abs().max() + 1e-9)).item())
    return worst
