"""Eager references and comparisons for the exactness tests (issue 11).

Every expected value comes from eager PyTorch on a ``copy.deepcopy`` of the module under test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

import tfcompile

ATOL = 1e-5


def run_eager(model: nn.Module, *xs):
    """Eager forward. An nn.Sequential is composed as split.py composes blocks (a tuple
    output is splatted into the next block), which plain nn.Sequential.forward cannot do."""
    if type(model) is not nn.Sequential:
        return model(*xs)
    values = xs
    for block in model:
        out = block(*values)
        values = out if isinstance(out, tuple) else (out,)
    return values[0] if len(values) == 1 else values


def max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    return (a.detach().double() - b.detach().double()).abs().max().item()


def assert_grads_match(got: nn.Module, ref: nn.Module, atol: float = ATOL) -> None:
    """.grad of every parameter equals the eager one (None where eager has None)."""
    refs = dict(ref.named_parameters())
    for name, p in got.named_parameters():
        err = max_diff(p.grad, refs[name].grad)
        assert err <= atol, f"{name}: grad differs from eager by {err}"


def assert_params_match(
    got: Iterable[tuple[str, torch.Tensor]], ref: nn.Module, atol: float = ATOL
) -> None:
    refs = dict(ref.named_parameters())
    for name, p in got:
        err = max_diff(p, refs[name])
        assert err <= atol, f"{name}: parameter differs from eager by {err}"


def make_opt(params, kind: str):
    params = list(params)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def eager_accumulate(ref: nn.Module, inputs, targets, microbatches: int, loss_fn: Callable,
                     frozen_params: dict[int, set[str]] | None = None) -> float:
    """Eager gradient of the mean microbatch loss, as Pipeline.step leaves it; parameters
    named in frozen_params[m] get no gradient from microbatch m. Returns the mean loss."""
    named = dict(ref.named_parameters())
    total = 0.0
    ins = inputs if isinstance(inputs, tuple) else (inputs,)
    chunks = list(zip(*[t.chunk(microbatches) for t in ins]))
    tchunks = _chunk_target(targets, microbatches)
    for m, (xs, ym) in enumerate(zip(chunks, tchunks)):
        loss = loss_fn(run_eager(ref, *xs), ym) / microbatches
        want = [(n, p) for n, p in named.items() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in want], allow_unused=True)
        for (n, p), g in zip(want, grads):
            if g is None or n in (frozen_params or {}).get(m, set()):
                continue
            p.grad = g.clone() if p.grad is None else p.grad + g
        total += loss.item()
    return total


def _chunk_target(targets, microbatches):
    if isinstance(targets, torch.Tensor):
        return list(targets.chunk(microbatches))
    if isinstance(targets, (tuple, list)):
        parts = [_chunk_target(t, microbatches) for t in targets]
        return [type(targets)(p) for p in zip(*parts)]
    if isinstance(targets, dict):
        parts = {k: _chunk_target(v, microbatches) for k, v in targets.items()}
        return [{k: parts[k][m] for k in parts} for m in range(microbatches)]
    raise TypeError(type(targets))


def compile_pipe(model: nn.Module, *, schedule="1F1B", microbatches=2, ranks=2, inputs,
                 targets, loss_fn, split_points, **kw):
    """compile() with every argument after `model` by keyword (compile is becoming
    keyword-only); example inputs/target are the first microbatch of the batch."""
    ins = inputs if isinstance(inputs, tuple) else (inputs,)
    mb = ins[0].shape[0] // microbatches
    return tfcompile.compile(
        model,
        schedule=schedule,
        microbatches=microbatches,
        ranks=ranks,
        example_inputs=tuple(t[:mb] for t in ins),
        loss_fn=loss_fn,
        example_target=_chunk_target(targets, microbatches)[0],
        split_points=split_points,
        **kw,
    )


def train_and_compare(model: nn.Module, *, inputs, targets, loss_fn, split_points,
                      schedule="1F1B", microbatches=2, steps=2, opt="adamw",
                      atol: float = ATOL, **kw):
    """`steps` optimizer steps through compile() against eager on a deep copy: losses,
    gradients and parameters after every step must match."""
    ref = copy.deepcopy(model)
    pipe = compile_pipe(model, schedule=schedule, microbatches=microbatches, inputs=inputs,
                        targets=targets, loss_fn=loss_fn, split_points=split_points, **kw)
    o, ro = make_opt(pipe.parameters(), opt), make_opt(ref.parameters(), opt)
    for _ in range(steps):
        o.zero_grad(set_to_none=True)
        ro.zero_grad(set_to_none=True)
        loss = pipe.step(inputs, targets)
        want = eager_accumulate(ref, inputs, targets, microbatches, loss_fn)
        assert abs(loss - want) <= 1e-4 * max(1.0, abs(want)), (loss, want)
        assert_grads_match(model, ref, atol)
        o.step()
        ro.step()
        assert_params_match(pipe.named_parameters(), ref, atol)
    return pipe, ref


def program_grads_vs_eager(module: nn.Module, inputs: list[tuple], grad_outputs: list,
                           frozen: list | None = None, loss_fn=None, targets=None,
                           atol: float = ATOL, **trace_kw):
    """Trace `module`, run forward+backward for each microbatch, compare outputs, input
    gradients and accumulated .grad with eager autograd on a deep copy. Returns the program."""
    ref = copy.deepcopy(module)
    prog = tfcompile.trace_stage(module, inputs[0], loss_fn=loss_fn,
                                 example_target=None if targets is None else targets[0],
                                 **trace_kw)
    gouts_before = [None if g is None else _clone_tree(g) for g in grad_outputs]
    for mb, xs in enumerate(inputs):
        fr = frozenset() if frozen is None else frozenset(frozen[mb])
        # eager's stage input is a non-leaf (an activation), so in-place ops on it are legal
        leaves_in = [x.detach().clone().requires_grad_(x.requires_grad) for x in xs]
        xs_ref = [x.clone() if x.requires_grad else x.clone() for x in leaves_in]
        if loss_fn is None:
            out = prog.forward(mb, *xs)
            want = run_eager(ref, *xs_ref)
            _assert_tree_close(out, want, atol)
            gin = prog.backward(mb, *_as_tuple(grad_outputs[mb]), frozen=fr)
            wants = [w for w in _flat(want) if w.requires_grad]
            gos = [g for g, w in zip(_flat(grad_outputs[mb]), _flat(want)) if w.requires_grad]
        else:
            out = prog.forward(mb, *xs, target=targets[mb])
            want = loss_fn(run_eager(ref, *xs_ref), targets[mb])
            _assert_tree_close(out, want, atol)
            gin = prog.backward(mb, frozen=fr)
            wants, gos = [want], [None]
        frozen_names = {n for g in fr for n in prog.groups[g]}
        params = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
        leaves = [p for _, p in params] + [x for x in leaves_in if x.requires_grad]
        grads = torch.autograd.grad(wants, leaves, gos, allow_unused=True)
        for (n, p), g in zip(params, grads):
            if g is not None and n not in frozen_names:
                p.grad = g.clone() if p.grad is None else p.grad + g
        xgrads = iter(grads[len(params):])
        for i, x in enumerate(leaves_in):
            if x.requires_grad:
                err = max_diff(gin[i], next(xgrads))
                assert err <= atol, f"microbatch {mb} input {i}: grad differs by {err}"
    assert_grads_match(module, ref, atol)
    for before, after in zip(gouts_before, grad_outputs):
        if before is not None:
            _assert_tree_close(after, before, 0.0)  # the caller's grad_output is not modified
    return prog


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def _flat(v):
    if isinstance(v, torch.Tensor):
        return [v]
    return [t for x in v for t in _flat(x)]


def _clone_tree(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    return type(v)(_clone_tree(x) for x in v)


def _assert_tree_close(a, b, atol):
    fa, fb = _flat(a), _flat(b)
    assert len(fa) == len(fb), (len(fa), len(fb))
    for x, y in zip(fa, fb):
        assert x.shape == y.shape, (x.shape, y.shape)
        err = max_diff(x, y)
        assert err <= atol, f"value differs by {err}"
