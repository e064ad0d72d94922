"""split_weight_grad: regions are disjoint and exact, frozen regions never run, fused kernels are
split, the frozen-prefix backward is truncated, memory is released."""

import operator

import pytest
import torch

import tfcompile
from tfcompile._torch_compat import output_mask_index
from tfcompile.models import Llama
from tfcompile.passes import split_weight_grad
from tfcompile.passes.flops import graph_flops
from tfcompile.passes.split_weight_grad import INPUT
from tfcompile.testing import build_stage, llama_config, lm_loss


def trace(name, **kw):
    case = build_stage(name)
    prog = tfcompile.trace_stage(
        case.module, case.inputs, loss_fn=case.loss_fn, example_target=case.target, **kw
    )
    return case, prog


@pytest.fixture(scope="module")
def llama_first_stage():
    """A first stage with token ids as input (no input gradient) and a loss."""
    torch.manual_seed(0)
    model = Llama(llama_config(n_layers=3)).double()
    tokens = torch.randint(0, 64, (2, 8))
    target = torch.randint(0, 64, (2, 8))
    prog = tfcompile.trace_stage(model, (tokens,), loss_fn=lm_loss, example_target=target)
    return model, tokens, target, prog


def test_each_value_computed_once():
    for name in ("llama_block", "convnext_block", "embed_tied_head"):
        _, prog = trace(name)
        split = prog.split
        seen = set(split.input_nodes)
        for g, r in split.regions.items():
            own = set(r.nodes) - {n for n in r.nodes if n.startswith("_tensor_constant")}
            assert not (own & seen), f"{name}: region {g} recomputes {sorted(own & seen)[:3]}"
            seen |= own
        # region inputs are only backward placeholders or values of the input part
        for r in split.regions.values():
            assert set(r.inputs) <= set(split.placeholders) | split.input_nodes


def test_pass_is_pure():
    _, prog = trace("vit_block")
    before = prog.bw_graph.code
    split_weight_grad(prog.bw_graph, _labels(prog), prog.group_order)
    assert prog.bw_graph.code == before


def _labels(prog):
    out_node = next(n for n in reversed(prog.bw_graph.graph.nodes) if n.op == "output")
    n = len(out_node.args[0])
    labels = [None] * n
    for g, pos in prog.split.region_grads.items():
        for i in pos:
            labels[i] = g
    for i in prog.split.input_grads:
        labels[i] = INPUT
    return labels


@pytest.mark.parametrize("name", ["convnext_block", "vit_block"])
def test_fused_kernels_split_so_dw_lands_in_regions(name):
    _, prog = trace(name)
    # every output_mask kernel in the input part computes no weight gradient ...
    input_region = prog.split.input_variant(0)
    fused_in_input = 0
    for node in input_region.gm.graph.nodes:
        idx = output_mask_index(node.target) if node.op == "call_function" else None
        if idx is not None:
            fused_in_input += 1
            assert list(node.args[idx])[1:] == [False] * (len(node.args[idx]) - 1), (
                node.format_node()
            )
    assert fused_in_input > 0
    # ... and the weight/bias parts sit in the regions
    fused_in_regions = sum(
        1
        for r in prog.split.regions.values()
        for n in r.gm.graph.nodes
        if n.op == "call_function" and output_mask_index(n.target) is not None
    )
    assert fused_in_regions >= fused_in_input


def test_frozen_regions_do_not_execute_and_are_not_zeroed():
    case, prog = trace("llama_block")
    calls = []
    for g, region in prog.split.regions.items():  # wrap the compiled regions to count calls
        orig = region.gm.forward
        region.gm.forward = lambda *a, _g=g, _f=orig: (calls.append(_g), _f(*a))[1]
    frozen = {prog.group_order[0], prog.group_order[2]}
    for mb in range(3):
        prog.forward(mb, *case.inputs)
    for mb in range(3):
        prog.backward(mb, torch.ones(2, 8, 32, dtype=torch.float64), frozen=frozen)
    assert sorted(set(calls)) == sorted(set(prog.group_order) - frozen)
    assert len(calls) == 3 * (len(prog.group_order) - 2)
    for g in frozen:
        assert prog.region_calls[g] == 0
        for pname in prog.groups[g]:
            assert case.module.get_parameter(pname).grad is None  # untouched, not zero-filled


def test_frozen_prefix_truncates_backward(llama_first_stage):
    model, tokens, target, prog = llama_first_stage
    order = prog.group_order
    assert order[:4] == ["tok_embeddings", "layers.0", "layers.1", "layers.2"]
    flops = [graph_flops(prog.split.input_variant(k).gm) for k in range(len(order) + 1)]
    # freezing the embedding alone saves nothing in the input part (layers.0's norm weight needs
    # the same propagation); each further frozen block removes a block's worth of work
    assert flops[1] <= flops[0]
    assert flops[2] < flops[1] and flops[3] < flops[2] and flops[4] < flops[3]
    assert flops[-1] == 0  # everything frozen, no input gradient: nothing at all runs
    assert prog.precompile() is prog and len(prog.split._variants) == len(order) + 1
    nodes = [set(prog.split.input_variant(k).nodes) for k in range(len(order) + 1)]
    for a, b in zip(nodes, nodes[1:]):
        assert b <= a
    # gradients of the unfrozen groups stay exact under truncation
    lm_loss(model(tokens), target).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    frozen = set(order[:3])
    for p in model.parameters():
        p.grad = None
    prog.forward(0, tokens, target=target)
    assert prog.backward(0, frozen=frozen) == (None,)
    owner = {p: g for g, ps in prog.groups.items() for p in ps}
    for n, p in model.named_parameters():
        if owner[n] in frozen:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-10, atol=1e-12)


def test_state_released_and_stash_pruned(llama_first_stage):
    model, tokens, target, prog = llama_first_stage
    frozen = set(prog.group_order[:2])
    prog.forward(7, tokens, target=target)
    kept_after_forward = set(prog._state[7].env)
    prog.backward_input(7, frozen=frozen)
    kept = set(prog._state[7].env)
    allowed = set()
    for g in prog.group_order:
        if g not in frozen:
            allowed |= set(prog.split.regions[g].inputs)
    assert kept <= allowed
    assert len(kept) < len(kept_after_forward)
    with pytest.raises(tfcompile.RuntimeConfigError, match="same frozen set"):
        prog.backward_weight(7, frozen=set())
    prog.backward_weight(7, frozen=frozen)
    assert prog.pending == []
    with pytest.raises(tfcompile.RuntimeConfigError):
        prog.backward_weight(7)


def test_region_flops_counted_from_graph():
    case, prog = trace("mlp")  # Linear(16,32) -> GELU -> Linear(32,8), batch 4
    # dW of the last layer: mm (8x4)@(4x32) = 2*4*32*8, plus bias sum over 4x8 -> 8 outputs
    assert prog.region_flops["layers.1"] == 2 * 4 * 32 * 8 + 8
    assert prog.region_flops["layers.0"] == 2 * 4 * 16 * 32 + 32
    # input part: dX of both layers (2*4*8*32 + 2*4*32*16) + GELU backward (elementwise)
    assert prog.input_flops >= 2 * 4 * 8 * 32 + 2 * 4 * 32 * 16
    _, p_att = trace("llama_block")
    # attention-free weight work of a block dominates; every region has positive cost
    assert all(v > 0 for v in p_att.region_flops.values())
    assert p_att.forward_flops > 0


def test_getitem_only_users_of_fused_nodes():
    """After the split no fused node feeds both the input part and a region."""
    _, prog = trace("convnext_block")
    gm = prog.split.graph
    assign = prog.split.assignment()
    for node in gm.graph.nodes:
        if node.op == "call_function" and output_mask_index(node.target) is not None:
            owners = {assign.get(u.name) for u in node.users if u.target is operator.getitem}
            assert len(owners) == 1, (node.name, owners)


def test_any_frozen_subset_exact_on_first_stage(llama_first_stage):
    """Random frozen sets (prefix or not) on a stage whose input needs no gradient."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    model, tokens, target, prog = llama_first_stage
    for p in model.parameters():
        p.grad = None
    lm_loss(model(tokens), target).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    owner = {p: g for g, ps in prog.groups.items() for p in ps}

    @settings(max_examples=8, deadline=None, derandomize=True)
    @given(st.sets(st.sampled_from(prog.group_order)))
    def check(frozen):
        for p in model.parameters():
            p.grad = None
        prog.region_calls.clear()
        prog.forward(0, tokens, target=target)
        prog.backward_input(0, frozen=frozen)
        prog.backward_weight(0, frozen=frozen)
        for n, p in model.named_parameters():
            if owner[n] in frozen:
                assert p.grad is None
            else:
                torch.testing.assert_close(p.grad, ref[n], rtol=1e-10, atol=1e-12)
        assert set(prog.region_calls) == set(prog.group_order) - set(frozen)

    check()


def _tensor_valued(gm: torch.fx.GraphModule) -> bool:
    """Every placeholder and output of `gm` holds one tensor (none a multi-output tuple)."""
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return all(isinstance(n.meta.get("val"), torch.Tensor) for n in [*ph, *out] if n is not None)


@pytest.mark.parametrize(
    "make",
    [
        # LayerNorm weight and bias in two groups: the fused kernel's weight part serves both
        lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.LayerNorm(8)),
        # the same with GroupNorm (native_group_norm_backward)
        lambda: torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.GroupNorm(2, 4)),
    ],
    ids=["layer_norm", "group_norm"],
)
def test_values_crossing_into_regions_are_single_tensors(make):
    """A multi-output node that two groups share (a fused norm backward whose weight and bias
    gradients belong to two groups under groups="tensor") is computed in backward_input, and
    what crosses into the regions are its items, not its tuple: compiled backends take flat
    tensors only. Gradients equal eager autograd's on every frozen subset."""
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(2, 4, 5, 5) if isinstance(module[0], torch.nn.Conv2d) else torch.randn(4, 8)
    x = x.double().requires_grad_()
    prog = tfcompile.trace_stage(module, (x,), groups="tensor")
    split = prog.split
    for k in range(len(split.group_order) + 1):
        assert _tensor_valued(split.input_variant(k).gm), f"input[{k}]"
    for g, region in split.regions.items():
        assert _tensor_valued(region.gm), g
    g_out = torch.randn_like(module(x))
    ref = torch.autograd.grad(module(x), [x, *module.parameters()], g_out)
    names = [n for n, _ in module.named_parameters()]
    for frozen in ([], [split.group_order[-1]], split.group_order[:1]):
        for p in module.parameters():
            p.grad = None
        prog.forward(0, x)
        (gx,) = prog.backward(0, g_out, frozen=frozen)
        torch.testing.assert_close(gx, ref[0])
        for name, p, r in zip(names, module.parameters(), ref[1:]):
            groups_of = [g for g, ps in prog.groups.items() if name in ps]
            if set(groups_of) <= set(frozen):
                assert p.grad is None, name
            else:
                torch.testing.assert_close(p.grad, r, msg=name)
