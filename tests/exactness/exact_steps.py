"""Optimizer steps through one traced stage against eager (issue 11, kinds 2/4/8 examples).

Expected values come from eager PyTorch on ``copy.deepcopy`` of the module (and of an
nn.Module loss_fn, whose parameters are trained with the stage's).
"""

from __future__ import annotations

import copy

import torch
from exact_helpers import ATOL, max_diff, run_eager
from torch import nn

import tfcompile


def _params(module: nn.Module, loss_fn) -> list[tuple[str, torch.Tensor]]:
    out = list(module.named_parameters())
    if isinstance(loss_fn, nn.Module):
        out += [(f"loss_fn.{n}", p) for n, p in loss_fn.named_parameters()]
    return out


def program_adamw_vs_eager(module: nn.Module, inputs: list[tuple], targets: list, loss_fn,
                           steps: int = 2, atol: float = ATOL, **trace_kw):
    """Trace `module` with `loss_fn` (a loss stage), then `steps` AdamW steps over the
    microbatches `inputs`/`targets` through the program and through eager on deep copies:
    losses, .grad and parameters after every step must match, and the caller's inputs are
    left unchanged by tracing and by the program. Returns the program."""
    ref = copy.deepcopy(module)
    ref_loss = copy.deepcopy(loss_fn) if isinstance(loss_fn, nn.Module) else loss_fn
    before = [tuple(x.detach().clone() for x in xs) for xs in inputs]
    prog = tfcompile.trace_stage(module, inputs[0], loss_fn=loss_fn,
                                 example_target=targets[0], **trace_kw)
    mine, theirs = _params(module, loss_fn), _params(ref, ref_loss)
    opt = torch.optim.AdamW([p for _, p in mine], lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([p for _, p in theirs], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        for mb, (xs, y) in enumerate(zip(inputs, targets)):
            loss = prog.forward(mb, *xs, target=y)
            prog.backward(mb)
            # eager's stage input is an activation (a non-leaf): in-place ops on it are legal
            xs_ref = [x.detach().clone().requires_grad_(x.requires_grad) for x in xs]
            want = ref_loss(run_eager(ref, *[x.clone() for x in xs_ref]), y)
            want.backward()
            assert max_diff(loss, want) <= atol, (loss, want)
        for (n, p), (_, q) in zip(mine, theirs):
            err = max_diff(p.grad, q.grad)
            assert err <= atol, f"{n}: grad differs from eager by {err}"
        opt.step()
        ref_opt.step()
        for (n, p), (_, q) in zip(mine, theirs):
            err = max_diff(p, q)
            assert err <= atol, f"{n}: parameter differs from eager by {err}"
    for xs, xs0 in zip(inputs, before):
        for x, x0 in zip(xs, xs0):
            assert torch.equal(x, x0), "the caller's input was modified"
    return prog


def compile_adamw_vs_eager(model: nn.Module, *, inputs, targets, loss_fn, split_points,
                           microbatches: int = 2, ranks: int = 2, steps: int = 2,
                           atol: float = ATOL, **kw):
    """compile() then `steps` AdamW steps against eager on deep copies of the model and of an
    nn.Module loss_fn (whose parameters must be among pipe.parameters())."""
    ref = copy.deepcopy(model)
    ref_loss = copy.deepcopy(loss_fn) if isinstance(loss_fn, nn.Module) else loss_fn
    mb = inputs.shape[0] // microbatches
    pipe = tfcompile.compile(model, schedule="1F1B", microbatches=microbatches, ranks=ranks,
                             example_inputs=(inputs[:mb],), loss_fn=loss_fn,
                             example_target=targets[:mb], split_points=split_points, **kw)
    got = dict(pipe.named_parameters())
    want_names = [n for n, _ in _params(model, loss_fn)]
    assert set(got) == set(want_names), (sorted(got), want_names)
    mine, theirs = _params(model, loss_fn), _params(ref, ref_loss)
    for n, p in mine:
        assert got[n] is p, n
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([p for _, p in theirs], lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        loss = pipe.step(inputs, targets)
        total = 0.0
        for a, b in zip(inputs.chunk(microbatches), targets.chunk(microbatches)):
            part = ref_loss(ref(a), b) / microbatches
            part.backward()
            total += part.item()
        assert abs(loss - total) <= 1e-4 * max(1.0, abs(total)), (loss, total)
        for (n, p), (_, q) in zip(mine, theirs):
            err = max_diff(p.grad, q.grad)
            assert err <= atol, f"{n}: grad differs from eager by {err}"
        opt.step()
        ref_opt.step()
        for (n, p), (_, q) in zip(mine, theirs):
            err = max_diff(p, q)
            assert err <= atol, f"{n}: parameter differs from eager by {err}"
    return pipe
