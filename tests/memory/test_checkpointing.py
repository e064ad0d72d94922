"""Activation checkpointing inside traced stages (issue 15): gradients equal eager with every
policy, on the reference models, under random frozen sets and frozen-prefix truncation; fewer
bytes are kept for the backward; torch.utils.checkpoint regions are honoured.

Expected values come from eager PyTorch on deep copies, after AdamW steps."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import tfcompile
from tfcompile.models import ConvNeXt, Llama, LlamaConfig, ViT
from tfcompile.split import discover_blocks

ATOL = 1e-5
M = 2


def _llama():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=4, n_heads=4, n_kv_heads=2))
    x = torch.randint(0, 40, (4, 8))
    y = torch.randint(0, 40, (4, 8))

    def loss_fn(o, t):
        return nn.functional.cross_entropy(o.flatten(0, 1), t.flatten())

    return model, x, y, loss_fn, ["layers.2"]


def _vision(cls):
    def make():
        torch.manual_seed(0)
        model = cls(depth=4) if cls is ConvNeXt else cls(depth=4)
        x = torch.randn(4, 1, 8, 8)
        y = torch.randint(0, 10, (4,))
        return model, x, y, nn.functional.cross_entropy, ["blocks.2"]

    return make


MODELS = {"llama": _llama, "vit": _vision(ViT), "convnext": _vision(ConvNeXt)}


def _eager_grads(ref, loss_fn, x, y, frozen_of, name_group):
    """Eager .grad of the deep copy: microbatch m's gradient of a group is left out when the
    pipeline froze that group for m (what a frozen weight-gradient region means)."""
    params = dict(ref.named_parameters())
    total = {n: None for n in params}
    for m, (a, b) in enumerate(zip(x.chunk(M), y.chunk(M))):
        loss = loss_fn(ref(a), b) / M
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is None or name_group[n] in frozen_of[m]:
                continue
            total[n] = g if total[n] is None else total[n] + g
    for n, p in params.items():
        p.grad = total[n]


@pytest.mark.slow  # 9 compiles of 2-stage pipelines, 3 optimizer steps each
@pytest.mark.parametrize("policy", ["none", "full", "selective"])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_policy_matches_eager_with_frozen_sets(model_name, policy):
    model, x, y, loss_fn, split = MODELS[model_name]()
    ref = copy.deepcopy(model)
    pipe = tfcompile.compile(
        model, "1F1B", microbatches=M, ranks=2, example_inputs=(x[: len(x) // M],),
        loss_fn=loss_fn, example_target=y[: len(y) // M], split_points=split,
        activation_checkpointing=policy,
    )  # fmt: skip
    assert all(p.traced.activation_checkpointing == policy for p in pipe.stage_programs.values())
    name_group = {}
    for s in pipe.local_stages:
        for g, names in pipe.stage_groups(s).items():
            name_group.update({n: (s, g) for n in names})
    rng = random.Random(hash((model_name, policy)) % 1000)
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        frozen = {}
        for s in pipe.local_stages:
            order = list(pipe.stage_groups(s))
            for m in range(M):
                if step == 0 and s == 0:  # a frozen prefix: truncation on the token stage
                    frozen[(s, m)] = set(order[: m + 1])
                else:
                    frozen[(s, m)] = {g for g in order if rng.random() < 0.4}
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        pipe.step(x, y, frozen=frozen)
        frozen_of = [{(s, g) for (s, mm), gs in frozen.items() if mm == m for g in gs}
                     for m in range(M)]
        _eager_grads(ref, loss_fn, x, y, frozen_of, name_group)
        got = dict(pipe.named_parameters())
        for n, q in ref.named_parameters():
            p = got[n]
            if q.grad is None:
                assert p.grad is None, n
                continue
            err = (p.grad - q.grad).abs().max().item()
            assert err <= ATOL, f"{n}: grad differs from eager by {err} ({policy})"
        opt.step()
        ref_opt.step()
    for n, q in ref.named_parameters():
        assert (dict(pipe.named_parameters())[n] - q).abs().max().item() <= ATOL, n


def _kept_bytes(model, x, policy, **kw):
    prog = tfcompile.trace_stage(model, (x,), activation_checkpointing=policy, **kw)
    prog.forward(0, x)
    kept = prog.activation_bytes()
    prog.release()
    return kept, prog


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_full_and_selective_keep_fewer_bytes(model_name):
    model, x, *_ = MODELS[model_name]()
    named = discover_blocks(model)[0]
    first = next(i for i, (n, _) in enumerate(named) if n.split(".")[0] in ("layers", "blocks"))
    blocks = nn.Sequential(*[b for n, b in named if n.split(".")[0] in ("layers", "blocks")])
    h = nn.Sequential(*[b for _, b in named[:first]])(x[:2]).detach().requires_grad_()
    none, _ = _kept_bytes(blocks, h, "none")
    full, prog = _kept_bytes(blocks, h, "full")
    selective, _ = _kept_bytes(blocks, h, "selective")
    # "full" keeps the input of each block: at most one activation per block
    assert full <= len(blocks) * h.numel() * h.element_size()
    assert full < selective < none, (full, selective, none)
    assert prog.traced.activation_checkpointing == "full"


class _Block(nn.Module):
    def __init__(self, use_checkpoint: bool):
        super().__init__()
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)
        self.use_checkpoint = use_checkpoint

    def mlp(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)).tanh())

    def forward(self, x):
        if self.use_checkpoint:
            return x + checkpoint(self.mlp, x, use_reentrant=False)
        return x + self.mlp(x)


def test_torch_utils_checkpoint_is_recomputed_and_exact():
    torch.manual_seed(0)
    plain = nn.Sequential(_Block(False), _Block(False), _Block(False))
    ckpt = copy.deepcopy(plain)
    for b in ckpt:
        b.use_checkpoint = True
    x = torch.randn(8, 16, requires_grad=True)
    plain_bytes, plain_prog = _kept_bytes(plain, x, "none")
    ckpt_bytes, prog = _kept_bytes(ckpt, x, "none")
    assert len(prog.traced.saved_names) < len(plain_prog.traced.saved_names)
    assert ckpt_bytes < plain_bytes / 2, (ckpt_bytes, plain_bytes)
    # exact: gradients equal eager (eager checkpoint recomputes the same ops)
    ref = copy.deepcopy(ckpt)
    g = torch.randn(8, 16)
    out = prog.forward(1, x)
    gx = prog.backward(1, g)[0]
    xr = x.detach().clone().requires_grad_()
    want = ref(xr)
    want.backward(g)
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    torch.testing.assert_close(gx, xr.grad, atol=ATOL, rtol=0)
    for (n, p), q in zip(ckpt.named_parameters(), ref.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= ATOL, n


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="activation_checkpointing"):
        tfcompile.trace_stage(nn.Linear(2, 2), (torch.randn(1, 2),), activation_checkpointing="x")


def test_truncation_skips_recomputing_frozen_prefix_blocks():
    """On a token-input stage with "full" AC, backward_input variant k (the first k blocks
    frozen) recomputes none of those blocks: its work shrinks with every frozen block and is
    nothing once every block is frozen."""
    from tfcompile.passes.flops import graph_flops

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=3, n_heads=4, n_kv_heads=2))
    blocks = nn.Sequential(model.tok_embeddings, *model.layers)
    tokens = torch.randint(0, 40, (2, 8))
    prog = tfcompile.trace_stage(blocks, (tokens,), activation_checkpointing="full")
    split = prog.split
    n = len(prog.group_order)
    assert prog.group_order[0] == "0"  # the embedding: its dW work (layer 0's input gradient)
    # is its own region's, so variants 0 and 1 differ only in that region
    flops = [float(graph_flops(split.input_variant(k).gm)) for k in range(n + 1)]
    assert flops[0] >= flops[1] and all(a > b for a, b in zip(flops[1:], flops[2:])), flops
    assert flops[-1] == 0
    # the recomputed forward of block k is in the variants that keep block k's stash only
    recomputed_mm = [
        sum(1 for n in split.input_variant(k).gm.graph.nodes if "mm" in str(n.target))
        for k in range(n + 1)
    ]
    assert recomputed_mm[-1] == 0, recomputed_mm
    assert all(a > b for a, b in zip(recomputed_mm[1:], recomputed_mm[2:])), recomputed_mm


def test_reentrant_checkpoint_is_refused_with_the_fix():
    class Reentrant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return checkpoint(self.lin, x, use_reentrant=True)

    with pytest.raises(tfcompile.TraceError, match="use_reentrant=False"):
        tfcompile.trace_stage(Reentrant(), (torch.randn(2, 4, requires_grad=True),))
