"""Issue 11 kind 5: multi-tensor interfaces. Stages compose blocks exactly as the composition
check does (tuples are splatted), stage inputs/outputs/targets are pytrees of tensors, and
non-float tensors may travel between stages without gradients."""

from __future__ import annotations

import pytest
import torch
from exact_helpers import program_grads_vs_eager, train_and_compare
from torch import nn


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def forward(self, x):
        h = self.lin(x)
        return h, torch.tanh(h)


class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h, s):
        return torch.relu(self.lin(h)) + s, s


class Head(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.lin = nn.Linear(8, classes)

    def forward(self, h, s):
        return self.lin(h * s)


@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_case_blocks_passing_two_tensors(schedule):
    torch.manual_seed(0)
    model = nn.Sequential(Stem(), Mix(), Mix(), Head())
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                      split_points=["2"], schedule=schedule, microbatches=2, opt="adamw")


class MixCopy(Mix):
    def forward(self, h, s):
        return torch.relu(self.lin(h)) + s, 2 * s  # no output aliases an input


def test_stage_module_with_two_inputs_at_trace_stage_level_already_exact():
    """trace_stage takes a multi-input module directly (only nn.Sequential stages fail)."""
    torch.manual_seed(1)
    xs = [(torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True))
          for _ in range(2)]
    gs = [(torch.randn(3, 8), torch.randn(3, 8)) for _ in range(2)]
    program_grads_vs_eager(MixCopy(), xs, gs)


def test_case_block_mix_at_trace_stage_level():
    torch.manual_seed(1)
    xs = [(torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True))
          for _ in range(2)]
    gs = [(torch.randn(3, 8), torch.randn(3, 8)) for _ in range(2)]
    program_grads_vs_eager(Mix(), xs, gs)


def test_sequential_stage_of_tuple_blocks_at_trace_stage_level():
    """Own example: the stage module compile() would build, traced directly."""
    torch.manual_seed(2)
    stage = nn.Sequential(MixCopy(), MixCopy())
    xs = [(torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True))
          for _ in range(2)]
    gs = [(torch.randn(3, 8), torch.randn(3, 8)) for _ in range(2)]
    program_grads_vs_eager(stage, xs, gs)


def masked_ce(logits, target):
    labels, mask = target
    return (nn.functional.cross_entropy(logits, labels, reduction="none") * mask).sum() / mask.sum()


def test_case_tuple_target():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    X, L = torch.randn(8, 6), torch.randint(0, 3, (8,))
    K = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    train_and_compare(model, inputs=X, targets=(L, K), loss_fn=masked_ce, split_points=["2"],
                      microbatches=2, opt="sgd")


def test_dict_target():
    """Own example: a dict target {labels, weight}."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    X = torch.randn(8, 6)
    T = {"labels": torch.randint(0, 3, (8,)), "weight": torch.rand(8)}

    def loss(o, t):
        return (nn.functional.cross_entropy(o, t["labels"], reduction="none") * t["weight"]).mean()

    train_and_compare(model, inputs=X, targets=T, loss_fn=loss, split_points=["2"],
                      microbatches=2, opt="adamw")


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)

    def forward(self, ids):
        return self.emb(ids), ids != 0  # hidden + boolean padding mask


class MaskedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h, mask):
        return torch.tanh(self.lin(h)) * mask.unsqueeze(-1), mask


class Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, h, mask):
        return self.lin(h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1))


def test_boolean_mask_travels_between_stages():
    """Own example: a boolean padding mask passed along with the hidden state."""
    torch.manual_seed(5)
    model = nn.Sequential(Embed(), MaskedBlock(), MaskedBlock(), Pool())
    X = torch.randint(0, 11, (4, 5))
    Y = torch.randint(0, 3, (4,))
    train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                      split_points=["2"], microbatches=2, opt="adamw")


# ---------------------------------------------------------------- own example: 3 stages passing
# (hidden, boolean padding mask, position ids) with masked attention-like pooling
class TokenEmbed(nn.Module):
    def __init__(self, vocab=13, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).expand_as(ids)  # int64 position ids
        return self.emb(ids), ids != 0, pos


class MaskedAttnPool(nn.Module):
    """Each token attends to the sequence's non-padding tokens through one learned query."""

    def __init__(self, dim=8, max_len=6):
        super().__init__()
        self.query = nn.Linear(dim, 1)
        self.pos = nn.Embedding(max_len, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h, mask, pos):
        x = h + self.pos(pos)
        scores = self.query(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        pooled = (attn.unsqueeze(-1) * x).sum(1, keepdim=True)
        h = h + torch.tanh(self.out(pooled)) * mask.unsqueeze(-1)
        return h, mask, pos


class MaskedHead(nn.Module):
    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.lin = nn.Linear(dim, classes)

    def forward(self, h, mask, pos):
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.lin((h * m).sum(1) / m.sum(1).clamp_min(1))


def _padded_ids(rows=8, seq=5, seed=6):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 13, (rows, seq), generator=gen)
    lengths = torch.randint(1, seq + 1, (rows,), generator=gen)
    ids[torch.arange(seq).expand(rows, seq) >= lengths.unsqueeze(1)] = 0  # right padding
    return ids


@pytest.mark.parametrize("schedule", ["GPipe", "1F1B"])
def test_three_stages_pass_hidden_bool_mask_and_position_ids(schedule, stage_programs):
    torch.manual_seed(6)
    model = nn.Sequential(TokenEmbed(), MaskedAttnPool(), MaskedAttnPool(), MaskedAttnPool(),
                          MaskedHead())
    X, Y = _padded_ids(), torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(7))
    pipe, _ = train_and_compare(model, inputs=X, targets=Y, loss_fn=nn.functional.cross_entropy,
                                split_points=["1", "3"], schedule=schedule, microbatches=2,
                                ranks=3, opt="adamw")
    progs = stage_programs(pipe)
    for s in (1, 2):  # only the hidden state gets a gradient
        assert progs[s].input_requires_grad == (True, False, False)


def test_sequential_stage_with_mask_inputs_at_trace_stage_level():
    """The middle+last stage as a plain nn.Sequential: three inputs, non-float ones without
    gradients (their backward_input slots are None)."""
    torch.manual_seed(8)
    stage = nn.Sequential(MaskedAttnPool(), MaskedAttnPool(), MaskedHead())
    emb = TokenEmbed()
    xs = []
    for mb in range(2):
        with torch.no_grad():
            h, mask, pos = emb(_padded_ids(rows=3, seed=10 + mb))
        xs.append((h.requires_grad_(True), mask, pos))
    gs = [torch.randn(3, 3) for _ in range(2)]
    prog = program_grads_vs_eager(stage, xs, gs)
    assert prog.input_requires_grad == (True, False, False)
    assert prog.forward(5, *xs[0]).shape == (3, 3)
    assert prog.backward(5, gs[0])[1:] == (None, None)


def test_tuple_target_at_trace_stage_level():
    """Own example: a loss stage whose target is (labels, mask); loss_fn gets the tuple."""
    torch.manual_seed(9)
    stage = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    xs = [(torch.randn(4, 6, requires_grad=True),) for _ in range(2)]
    ts = [(torch.randint(0, 3, (4,)), torch.tensor([1.0, 0.0, 1.0, 1.0])) for _ in range(2)]
    prog = program_grads_vs_eager(stage, xs, [None, None], loss_fn=masked_ce, targets=ts)
    assert len(prog.traced.target_specs) == 2


def test_dict_target_at_trace_stage_level():
    torch.manual_seed(10)
    stage = nn.Linear(6, 3)
    xs = [(torch.randn(4, 6),) for _ in range(2)]
    ts = [{"labels": torch.randint(0, 3, (4,)), "weight": torch.rand(4)} for _ in range(2)]

    def loss(o, t):
        return (nn.functional.cross_entropy(o, t["labels"], reduction="none") * t["weight"]).mean()

    program_grads_vs_eager(stage, xs, [None, None], loss_fn=loss, targets=ts)


def test_tuple_target_with_three_stages_and_accumulation():
    """Tuple target through compile on a 3-rank 1F1B pipeline, 4 microbatches."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    X, L = torch.randn(8, 6), torch.randint(0, 3, (8,))
    K = (torch.arange(8) % 3 != 0).float()
    train_and_compare(model, inputs=X, targets=(L, K), loss_fn=masked_ce,
                      split_points=["2", "4"], microbatches=4, ranks=3, opt="adamw")
