"""Issue 11 kind 6: tied parameters under freezing (single process; the torchrun cases are in
test_exactness_dist.py). A parameter frozen everywhere keeps .grad None; grad="rescale" scales
each use of a tied weight by the microbatches that use contributed to, once."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tfcompile


class TiedHead(nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb

    def forward(self, h):
        return (h @ self.emb.weight.t()).flatten(0, 1)


def tied_lm(seed=0):
    torch.manual_seed(seed)
    emb = nn.Embedding(13, 8)
    return nn.Sequential(emb, nn.Linear(8, 8), nn.Tanh(), TiedHead(emb))


def lm_loss(o, y):
    return nn.functional.cross_entropy(o, y.flatten())


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 13, (4, 5), generator=g), torch.randint(0, 13, (4, 5), generator=g)


def compile_lm(model, X, Y, grad="rescale"):
    return tfcompile.compile(model, schedule="1F1B", microbatches=2, ranks=2,
                             example_inputs=(X[:2],), loss_fn=lm_loss, example_target=Y[:2],
                             split_points=["2"],
                             freeze=tfcompile.FreezeConfig(policy="none", grad=grad))


def per_use_grads(model, X, Y, M=2):
    """Eager gradients of the embedding use and of the head use separately, per microbatch
    (loss of each microbatch scaled by 1/M), on an untied deep copy."""
    ref = copy.deepcopy(model)
    head_w = nn.Parameter(ref[0].weight.detach().clone())
    out = []
    for a, b in zip(X.chunk(M), Y.chunk(M)):
        h = ref[2](ref[1](ref[0](a)))
        loss = lm_loss((h @ head_w.t()).flatten(0, 1), b) / M
        e, hw = torch.autograd.grad(loss, [ref[0].weight, head_w])
        out.append((e, hw))
    return out


def test_case_tied_weight_frozen_in_one_microbatch_everywhere_rescale(stage_programs):
    model = tied_lm()
    X, Y = data()
    ref = copy.deepcopy(model)
    lm_loss(ref(X[2:]), Y[2:]).backward()  # expected: the microbatch-1 gradient (mean of 1)
    pipe = compile_lm(model, X, Y)
    progs = stage_programs(pipe)
    pipe.step(X, Y, frozen={(0, 0): frozenset(progs[0].groups),
                            (1, 0): frozenset(progs[1].groups)})
    assert torch.allclose(model[0].weight.grad, ref[0].weight.grad, atol=1e-6)
    assert torch.allclose(model[1].weight.grad, ref[1].weight.grad, atol=1e-6)


def test_rescale_per_use_when_only_the_embedding_use_is_frozen(stage_programs):
    """Own example: only the embedding use is frozen in microbatch 0: the expected gradient is
    the embedding use's mean over microbatch 1 plus the head use's mean over both."""
    model = tied_lm(2)
    X, Y = data(3)
    uses = per_use_grads(model, X, Y)
    want = 2 * uses[1][0] + uses[0][1] + uses[1][1]
    pipe = compile_lm(model, X, Y)
    group0 = next(iter(stage_programs(pipe)[0].groups))  # the embedding's group
    pipe.step(X, Y, frozen={(0, 0): frozenset({group0})})
    assert torch.allclose(model[0].weight.grad, want, atol=1e-6)


def test_tied_weight_frozen_everywhere_keeps_grad_none_and_does_not_move(stage_programs):
    """Own example (single process): frozen in every microbatch on both stages, the tied
    weight's .grad stays None, so AdamW (weight decay, momentum) leaves it alone over two
    steps, while the other parameters train exactly."""
    model = tied_lm(4)
    X, Y = data(5)
    ref = copy.deepcopy(model)
    pipe = compile_lm(model, X, Y, grad="drop")
    progs = stage_programs(pipe)
    g0 = next(g for g, ps in progs[0].groups.items() if "0.weight" in ps)
    g1 = next(g for g, ps in progs[1].groups.items() if any("emb" in p for p in ps))
    frozen = {(0, m): frozenset({g0}) for m in range(2)}
    frozen.update({(1, m): frozenset({g1}) for m in range(2)})
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([p for n, p in ref.named_parameters() if n != "0.weight"],
                                lr=1e-2, weight_decay=0.1)
    before = model[0].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        pipe.step(X, Y, frozen=frozen)
        assert model[0].weight.grad is None
        for a, b in zip(X.chunk(2), Y.chunk(2)):
            (lm_loss(ref(a), b) / 2).backward()
        ref[0].weight.grad = None
        opt.step()
        ref_opt.step()
    assert torch.equal(model[0].weight, before)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5), n


def eager_tied_grads(ref, X, Y, frozen_uses, grad, M=2):
    """Eager .grad of `ref` (a tied_lm deep copy) for one step: the embedding use ("emb") and
    the head use ("head") of the tied weight are separate leaves; frozen_uses[m] names the
    uses frozen in microbatch m; grad="rescale" scales each use by M / its count, "drop" not."""
    head_w = nn.Parameter(ref[0].weight.detach().clone())
    others = [(n, p) for n, p in ref.named_parameters() if n != "0.weight"]
    per_use = {"emb": [], "head": []}
    for m, (a, b) in enumerate(zip(X.chunk(M), Y.chunk(M))):
        h = ref[2](ref[1](ref[0](a)))
        loss = lm_loss((h @ head_w.t()).flatten(0, 1), b) / M
        got = torch.autograd.grad(loss, [ref[0].weight, head_w] + [p for _, p in others])
        for use, g in zip(("emb", "head"), got[:2]):
            if use not in frozen_uses.get(m, ()):
                per_use[use].append(g)
        for (_, p), g in zip(others, got[2:]):
            p.grad = g.clone() if p.grad is None else p.grad + g
    total = None
    for grads in per_use.values():
        if not grads:
            continue
        use = torch.stack(grads).sum(0)
        if grad == "rescale":
            use = use * (M / len(grads))
        total = use if total is None else total + use
    ref[0].weight.grad = total


@pytest.mark.parametrize("grad", ["drop", "rescale"])
@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_tied_partial_freeze_per_use_two_adamw_steps(stage_programs, grad, schedule):
    """Own example: the embedding use is frozen in microbatch 0 and the head use in
    microbatch 1 (so the uses have different contributing microbatches), under "drop" and
    "rescale"; parameters after 2 AdamW steps equal eager's on a deep copy, where each use is
    its own leaf and is scaled by its own count."""
    model = tied_lm(6)
    X, Y = data(7)
    ref = copy.deepcopy(model)
    pipe = tfcompile.compile(model, schedule=schedule, microbatches=2, ranks=2,
                             example_inputs=(X[:2],), loss_fn=lm_loss, example_target=Y[:2],
                             split_points=["2"],
                             freeze=tfcompile.FreezeConfig(policy="none", grad=grad))
    progs = stage_programs(pipe)
    g0 = next(g for g, ps in progs[0].groups.items() if "0.weight" in ps)
    g1 = next(g for g, ps in progs[1].groups.items() if any("emb" in p for p in ps))
    frozen = {(0, 0): frozenset({g0}), (1, 1): frozenset({g1})}
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        pipe.step(X, Y, frozen=frozen)
        eager_tied_grads(ref, X, Y, {0: {"emb"}, 1: {"head"}}, grad)
        for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6), n
        opt.step()
        ref_opt.step()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p, q, atol=1e-5), n


def test_program_grad_scale_multiplies_each_microbatch_gradient_before_accumulating():
    """StageProgram.grad_scale (what grad="rescale" sets per step) scales the gradient of the
    groups it names, per microbatch, before accumulation; other groups are untouched."""
    torch.manual_seed(8)
    m = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    ref = copy.deepcopy(m)
    prog = tfcompile.trace_stage(m, (torch.randn(4, 3),))
    prog.grad_scale = {"0": 3.0}
    xs = [torch.randn(4, 3) for _ in range(2)]
    gs = [torch.randn(4, 2) for _ in range(2)]
    for mb, (x, g) in enumerate(zip(xs, gs)):
        prog.forward(mb, x)
        prog.backward(mb, g, frozen={"2"} if mb == 1 else ())
        ref(x).backward(g)
        if mb == 0:
            keep = ref[2].weight.grad.clone(), ref[2].bias.grad.clone()
    assert torch.allclose(m[0].weight.grad, 3 * ref[0].weight.grad, atol=1e-6)
    assert torch.allclose(m[0].bias.grad, 3 * ref[0].bias.grad, atol=1e-6)
    assert torch.allclose(m[2].weight.grad, keep[0], atol=1e-6)
    assert torch.allclose(m[2].bias.grad, keep[1], atol=1e-6)
