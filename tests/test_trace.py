"""trace_stage: gradients equal eager autograd, freezing, accumulation, multi-stage, errors."""

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfcompile
from tfcompile import GroupError, TraceError
from tfcompile.models import Llama
from tfcompile.testing import STAGE_NAMES, build_stage, llama_config, lm_loss, split_llama

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@functools.cache
def traced(name, dtype=torch.float64):
    """(case, program) per model, traced once per test session (tests reset .grad)."""
    case = build_stage(name, dtype)
    prog = tfcompile.trace_stage(
        case.module, case.inputs, loss_fn=case.loss_fn, example_target=case.target
    )
    return case, prog


def eager_step(case, inputs, target, grad_out_seed=0):
    """Eager forward+backward; returns (outputs, input grads, grad_outputs used)."""
    xs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
    out = case.module(*xs)
    if case.loss_fn is not None:
        out = case.loss_fn(out, target)
        out.backward()
        gouts = ()
    else:
        g = torch.Generator().manual_seed(1000 + grad_out_seed)
        gouts = (torch.randn(out.shape, generator=g, dtype=out.dtype),)
        out.backward(gouts[0])
    return out.detach(), [x.grad for x in xs], gouts


def grads_of(module):
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def assert_close(a, b, dtype, what):
    torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "name,dtype",
    [(n, torch.float64) for n in STAGE_NAMES] + [("llama_block", torch.float32)],
)
def test_matches_eager_nothing_frozen(name, dtype):
    case, prog = traced(name, dtype)
    case.module.zero_grad(set_to_none=True)
    prog.region_calls.clear()
    out_e, gin_e, gouts = eager_step(case, case.inputs, case.target)
    grads_e = grads_of(case.module)
    case.module.zero_grad(set_to_none=True)

    out = prog.forward(0, *case.inputs, target=case.target)
    gin = prog.backward(0, *gouts)
    assert_close(out, out_e, dtype, "output")
    for a, b in zip(gin, gin_e):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, dtype, "input grad")
    for n, p in case.module.named_parameters():
        assert_close(p.grad, grads_e[n], dtype, f"grad of {n}")
    assert prog.pending == []
    assert set(prog.region_calls) == set(prog.group_order)


def _subsets(groups, limit=6):
    subs = [
        frozenset(c) for r in range(1, len(groups) + 1) for c in itertools.combinations(groups, r)
    ]
    if len(subs) <= limit:
        return subs
    step = len(subs) / limit
    return [subs[int(i * step)] for i in range(limit - 1)] + [frozenset(groups)]


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_frozen_subsets_leave_grad_untouched(name):
    dtype = torch.float64
    case, prog = traced(name, dtype)
    case.module.zero_grad(set_to_none=True)
    _, gin_e, gouts = eager_step(case, case.inputs, case.target)
    grads_e = grads_of(case.module)
    owner = {p: g for g, ps in prog.groups.items() for p in ps}
    for frozen in _subsets(prog.group_order):
        sentinel = {}
        for n, p in case.module.named_parameters():
            p.grad = torch.full_like(p, 7.0)
            sentinel[n] = p.grad
        prog.region_calls.clear()
        prog.forward(0, *case.inputs, target=case.target)
        gin = prog.backward(0, *gouts, frozen=frozen)
        for a, b in zip(gin, gin_e):
            if b is not None:
                assert_close(a, b, dtype, f"input grad with {sorted(frozen)} frozen")
        for n, p in case.module.named_parameters():
            if owner[n] in frozen:
                assert p.grad is sentinel[n] and bool((p.grad == 7.0).all()), n
            else:
                assert_close(p.grad - 7.0, grads_e[n], dtype, f"{n} with {sorted(frozen)} frozen")
        assert not (set(prog.region_calls) & frozen), "a frozen region ran"
        assert set(prog.region_calls) == set(prog.group_order) - frozen


@pytest.mark.parametrize("name", ["llama_block", "embed_tied_head", "convnext_block"])
def test_accumulation_over_microbatches(name):
    dtype = torch.float64
    case, prog = traced(name, dtype)
    case.module.zero_grad(set_to_none=True)
    mbs = [case.make_inputs(seed) for seed in range(3)]
    gouts_all, gins_e = [], []
    for i, (xs, t) in enumerate(mbs):
        _, gin, gouts = eager_step(case, xs, t, grad_out_seed=i)
        gouts_all.append(gouts)
        gins_e.append(gin)
    grads_e = grads_of(case.module)
    case.module.zero_grad(set_to_none=True)
    for i, (xs, t) in enumerate(mbs):  # all forwards first, backwards out of order, split I/W
        prog.forward(i, *xs, target=t)
    gins = {}
    for i in (2, 0, 1):
        gins[i] = prog.backward_input(i, *gouts_all[i])
    for i in (1, 2, 0):
        prog.backward_weight(i)
    for i in range(3):
        for a, b in zip(gins[i], gins_e[i]):
            if b is not None:
                assert_close(a, b, dtype, f"input grad mb{i}")
    for n, p in case.module.named_parameters():
        assert_close(p.grad, grads_e[n], dtype, f"accumulated grad of {n}")


@pytest.mark.parametrize(
    "n_stages",
    [2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)],
)
def test_transformer_cut_into_stages(n_stages):
    dtype = torch.float64
    torch.manual_seed(0)
    model = Llama(llama_config(n_layers=4)).to(dtype)
    stages = split_llama(model, n_stages)
    tokens = torch.randint(0, 64, (2, 8))
    target = torch.randint(0, 64, (2, 8))
    lm_loss(model(tokens), target).backward()
    grads_e = grads_of(model)
    model.zero_grad(set_to_none=True)

    # trace stage by stage, feeding the previous stage's eager output as example input
    progs, x = [], tokens
    for i, st in enumerate(stages):
        last = i == n_stages - 1
        progs.append(
            tfcompile.trace_stage(
                st, (x,), loss_fn=lm_loss if last else None, example_target=target if last else None
            )
        )
        if not last:
            with torch.no_grad():
                x = st(x).requires_grad_()
    # freeze one group per stage in stage 0 and nothing elsewhere
    frozen = [frozenset([progs[0].group_order[0]])] + [frozenset()] * (n_stages - 1)
    for p in model.parameters():
        p.grad = None
    acts = [tokens]
    for i, prog in enumerate(progs):
        out = prog.forward(0, acts[-1], target=target if i == n_stages - 1 else None)
        acts.append(out)
    g = ()
    for i in reversed(range(n_stages)):
        gin = progs[i].backward(0, *g, frozen=frozen[i])
        g = (gin[0],) if i > 0 else ()
    frozen_params = {"tok_embeddings.weight"}  # first group of stage 0 is the embedding
    for n, p in model.named_parameters():
        if n in frozen_params:
            assert p.grad is None
        else:
            assert_close(p.grad, grads_e[n], dtype, f"{n} across {n_stages} stages")


def test_groups_tensor_and_dict_and_tied_weight():
    case = build_stage("embed_tied_head")
    m = case.module
    p_tensor = tfcompile.trace_stage(
        m, case.inputs, loss_fn=case.loss_fn, example_target=case.target, groups="tensor"
    )
    assert all(len(v) == 1 for v in p_tensor.groups.values())
    assert len(p_tensor.groups) == len(list(m.parameters()))
    # tied weight: one parameter, named once, its gradient is the sum of both uses
    assert "output.weight" not in {p for ps in p_tensor.groups.values() for p in ps}
    names = [n for n, _ in m.named_parameters()]
    gmap = {"embed_and_head": ["tok_embeddings.weight"], "rest": names[1:]}
    prog = tfcompile.trace_stage(
        m, case.inputs, loss_fn=case.loss_fn, example_target=case.target, groups=gmap
    )
    assert prog.groups == gmap
    eager_step(case, case.inputs, case.target)
    g_e = m.tok_embeddings.weight.grad.clone()
    m.zero_grad(set_to_none=True)
    prog.forward(0, *case.inputs, target=case.target)
    prog.backward(0, frozen={"rest"})
    assert_close(m.tok_embeddings.weight.grad, g_e, torch.float64, "tied weight grad")
    assert all(p.grad is None for n, p in m.named_parameters() if n != "tok_embeddings.weight")


def test_loss_seed_scales_gradients():
    case, prog = traced("embed_tied_head")
    case.module.zero_grad(set_to_none=True)
    eager_step(case, case.inputs, case.target)
    g_e = grads_of(case.module)
    case.module.zero_grad(set_to_none=True)
    prog.forward(0, *case.inputs, target=case.target)
    prog.backward(0, torch.tensor(0.25, dtype=torch.float64))
    for n, p in case.module.named_parameters():
        assert_close(p.grad, 0.25 * g_e[n], torch.float64, n)


def test_block_groups_layout():
    torch.manual_seed(0)
    model = Llama(llama_config(n_layers=2, tie_weights=True))
    prog = tfcompile.trace_stage(model, (torch.randint(0, 64, (1, 4)),))
    assert prog.group_order == ["tok_embeddings", "layers.0", "layers.1", "norm"]
    assert prog.groups["tok_embeddings"] == ["tok_embeddings.weight"]  # output.weight is tied

    class WithOwn(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4))
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

        def forward(self, x):
            return self.blocks(x * self.scale)

    p = tfcompile.trace_stage(WithOwn(), (torch.randn(2, 4),))
    assert p.group_order == ["_root", "blocks.0", "blocks.1"]
    assert p.groups["_root"] == ["scale"]


# ----------------------------------------------------------------------------- errors
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        if y.sum() > 0:
            return y * 2
        return y


def test_error_data_dependent_control_flow():
    with pytest.raises(TraceError, match="control flow.*torch.where"):
        tfcompile.trace_stage(DataDependent(), (torch.randn(2, 4, requires_grad=True),))


def test_error_wrong_arity_and_dtype():
    m = nn.Linear(4, 4)
    with pytest.raises(TraceError, match="example inputs"):
        tfcompile.trace_stage(m, (torch.randn(2, 4), torch.randn(2, 4)))
    with pytest.raises(TraceError, match="dtype"):
        tfcompile.trace_stage(nn.Embedding(10, 4), (torch.randn(2, 3),))
    prog = tfcompile.trace_stage(m, (torch.randn(2, 4, requires_grad=True),))
    with pytest.raises(TraceError, match="dtype"):
        prog.forward(0, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TraceError, match="inputs"):
        prog.forward(0)


def test_error_group_map():
    # the group rules themselves are tested in tests/test_groups.py; here: errors reach the caller
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(GroupError, match="unknown parameter 'nope'"):
        tfcompile.trace_stage(m, (torch.randn(2, 4),), groups={"a": ["nope"]})
    prog = tfcompile.trace_stage(m, (torch.randn(2, 4, requires_grad=True),))
    prog.forward(0, torch.randn(2, 4))
    with pytest.raises(GroupError, match="unknown groups"):
        prog.backward(0, torch.ones(2, 4), frozen={"2"})


def test_error_non_scalar_loss():
    m = nn.Linear(4, 3)
    with pytest.raises(TraceError, match="scalar"):
        tfcompile.trace_stage(
            m,
            (torch.randn(2, 4),),
            loss_fn=lambda out, t: F.cross_entropy(out, t, reduction="none"),
            example_target=torch.tensor([0, 1]),
        )


def test_batchnorm_running_stats_copied_back():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double().train()
    ref = __import__("copy").deepcopy(m)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    prog = tfcompile.trace_stage(m, (x,))
    # tracing must not have touched the running statistics
    torch.testing.assert_close(m[1].running_mean, torch.zeros(6, dtype=torch.float64))
    g = torch.randn(8, 3, dtype=torch.float64)
    for mb in range(2):
        xe = x.detach().requires_grad_()
        ref(xe).backward(g)
        prog.forward(mb, x)
        (gin,) = prog.backward(mb, g)
        assert_close(gin, xe.grad, torch.float64, "input grad")
    for (n, b), (_, rb) in zip(m.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b, rb, msg=f"buffer {n}")
    for (n, p), (_, rp) in zip(m.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, rp.grad, torch.float64, n)


def test_input_requires_grad_override():
    m = nn.Linear(4, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)  # no requires_grad on the example
    assert tfcompile.trace_stage(m, (x,)).input_requires_grad == (False,)
    prog = tfcompile.trace_stage(m, (x,), input_requires_grad=[True])
    prog.forward(0, x)
    (gin,) = prog.backward(0, torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(gin, torch.ones(2, 3, dtype=torch.float64) @ m.weight)
    with pytest.raises(TraceError, match="cannot get a gradient"):
        tfcompile.trace_stage(nn.Embedding(5, 2), (torch.tensor([1]),), input_requires_grad=[True])


def test_input_modified_in_place_is_detected():
    m = nn.Linear(4, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    prog = tfcompile.trace_stage(m, (x,))
    buf = torch.randn(2, 4, dtype=torch.float64)
    prog.forward(0, buf)
    buf.add_(1.0)  # e.g. a receive buffer reused for the next microbatch
    with pytest.raises(tfcompile.RuntimeConfigError, match="modified in place"):
        prog.backward_input(0, torch.ones(2, 3, dtype=torch.float64))
