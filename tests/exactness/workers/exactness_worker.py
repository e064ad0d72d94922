"""Run under torchrun (2 ranks, gloo) by tests/exactness/test_exactness_dist.py.

Each case trains with tfcompile and with eager on a deep copy of the same model (every rank
trains the eager copy in-process: CPU is deterministic) and writes one JSON verdict per rank:
{case: {"err": worst error, "error": exception text or None, ...}}.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import worker_main  # noqa: E402 - beside this script
from exact_helpers import eager_accumulate  # noqa: E402
from test_k6_tied_freezing import eager_tied_grads  # noqa: E402

import tfcompile  # noqa: E402

_spec = importlib.util.spec_from_file_location("exactness_conftest", HERE / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
stage_programs = _conftest.stage_programs


worst = worker_main.worst_param_error


# ------------------------------------------------------------------ kind 1
class Pos(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 3, 4))

    def forward(self, x):
        return x + self.pos


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x.mean(1))


def case_k1_accumulate_two_steps(schedule: str) -> dict:
    """Pos at the end of stage 0 (its grad is the receive buffer) and at the start of stage 1
    (its grad is the gradient sent upstream), microbatch size 1; two pipe.step() calls
    accumulate without zero_grad, then AdamW; then one more zeroed step and AdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(Res(), Pos(), Pos(), Res(), Head())
    ref = copy.deepcopy(model)
    loss = nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 4, generator=gen), torch.randint(0, 3, (4,), generator=gen))
               for _ in range(3)]
    pipe = tfcompile.compile(model, schedule=schedule, microbatches=4,
                             example_inputs=(batches[0][0][:1],), loss_fn=loss,
                             example_target=batches[0][1][:1], split_points=["2"])
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    errs = {}
    for X, Y in batches[:2]:
        pipe.step(X, Y)
        eager_accumulate(ref, X, Y, 4, loss)
    errs["grad_after_2_steps"] = worst(pipe, ref, "grad")
    opt.step()
    ref_opt.step()
    opt.zero_grad(set_to_none=True)
    ref_opt.zero_grad(set_to_none=True)
    X, Y = batches[2]
    pipe.step(X, Y)
    eager_accumulate(ref, X, Y, 4, loss)
    errs["grad_step_3"] = worst(pipe, ref, "grad")
    opt.step()
    ref_opt.step()
    errs["params"] = worst(pipe, ref)
    pipe.close()
    return {"err": max(errs.values()), "parts": errs}


class TwoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(1, 3, 4))
        self.b = nn.Parameter(torch.randn(1, 3, 4))

    def forward(self, x):
        return x + self.a + self.b


def case_k1_two_biases_two_steps(schedule: str) -> dict:
    """Own example: two biases at the end of stage 0 (both gradients are the receive buffer)
    and two at the start of stage 1 (both are the gradient sent upstream), microbatch size 1;
    per optimizer step two pipe.step() calls accumulate without zero_grad, 2 AdamW steps."""
    torch.manual_seed(6)
    model = nn.Sequential(Res(), TwoBias(), TwoBias(), Res(), Head())
    ref = copy.deepcopy(model)
    loss = nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(7)
    batches = [(torch.randn(3, 3, 4, generator=gen), torch.randint(0, 3, (3,), generator=gen))
               for _ in range(4)]
    pipe = tfcompile.compile(model, schedule=schedule, microbatches=3,
                             example_inputs=(batches[0][0][:1],), loss_fn=loss,
                             example_target=batches[0][1][:1], split_points=["2"])
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    errs = {}
    for i in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        for X, Y in batches[2 * i : 2 * i + 2]:
            pipe.step(X, Y)
            eager_accumulate(ref, X, Y, 3, loss)
        errs[f"grad_{i}"] = worst(pipe, ref, "grad")
        opt.step()
        ref_opt.step()
        errs[f"params_{i}"] = worst(pipe, ref)
    pipe.close()
    return {"err": max(errs.values()), "parts": errs}


# ------------------------------------------------------------------ kind 6
class TiedHead(nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb

    def forward(self, h):
        return (h @ self.emb.weight.t()).flatten(0, 1)


def tied_lm(seed):
    torch.manual_seed(seed)
    emb = nn.Embedding(13, 8)
    return nn.Sequential(emb, nn.Linear(8, 8), nn.Tanh(), TiedHead(emb))


def lm_loss(o, y):
    return nn.functional.cross_entropy(o, y.flatten())


def lm_data(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 13, (4, 5), generator=g), torch.randint(0, 13, (4, 5), generator=g)


def compile_lm(model, X, Y, grad):
    return tfcompile.compile(model, schedule="1F1B", microbatches=2, example_inputs=(X[:2],),
                             loss_fn=lm_loss, example_target=Y[:2], split_points=["2"],
                             freeze=tfcompile.FreezeConfig(policy="none", grad=grad))


def tied_groups(pipe) -> dict:
    """stage -> the local group holding a use of the tied weight (model name 0.weight)."""
    out = {}
    for stage in pipe.local_stages:
        for g, names in pipe.stage_groups(stage).items():
            if "0.weight" in names:
                out[stage] = g
    return out


def case_k6_frozen_everywhere(_schedule: str) -> dict:
    """The tied weight is frozen in every microbatch on both ranks: .grad stays None on every
    rank (not a zero from the all-reduce), AdamW leaves it alone, the rest trains exactly."""
    model = tied_lm(4)
    X, Y = lm_data(5)
    ref = copy.deepcopy(model)
    pipe = compile_lm(model, X, Y, "drop")
    groups = tied_groups(pipe)
    frozen = {(s, m): frozenset({g}) for s, g in groups.items() for m in range(2)}
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([p for n, p in ref.named_parameters() if n != "0.weight"],
                                lr=1e-2, weight_decay=0.1)
    before = model[0].weight.detach().clone()
    grad_none = True
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        pipe.step(X, Y, frozen=frozen)
        grad_none &= model[0].weight.grad is None
        eager_accumulate(ref, X, Y, 2, lm_loss)
        ref[0].weight.grad = None
        opt.step()
        ref_opt.step()
    moved = (model[0].weight - before).abs().max().item()
    err = worst(pipe, ref)
    pipe.close()
    return {"err": max(err, moved, 0.0 if grad_none else float("inf")), "grad_none": grad_none,
            "tied_moved": moved}


def case_k6_rescale_per_use(_schedule: str) -> dict:
    """Only the embedding use is frozen in microbatch 0 under grad="rescale": both ranks'
    copies equal (embedding-use mean over microbatch 1) + (head-use mean over both), and are
    bit-identical."""
    model = tied_lm(2)
    X, Y = lm_data(3)
    ref = copy.deepcopy(model)
    head_w = nn.Parameter(ref[0].weight.detach().clone())
    uses = []
    for a, b in zip(X.chunk(2), Y.chunk(2)):
        h = ref[2](ref[1](ref[0](a)))
        loss = lm_loss((h @ head_w.t()).flatten(0, 1), b) / 2
        uses.append(torch.autograd.grad(loss, [ref[0].weight, head_w]))
    want = 2 * uses[1][0] + uses[0][1] + uses[1][1]
    pipe = compile_lm(model, X, Y, "rescale")
    group0 = tied_groups(pipe).get(0)  # None on the rank that does not hold stage 0
    pipe.step(X, Y, frozen={(0, 0): frozenset({group0})} if group0 is not None else {})
    got = model[0].weight.grad
    copies = pipe.all_gather_object(got.tolist())
    identical = all(c == copies[0] for c in copies)
    err = (got - want).abs().max().item()
    pipe.close()
    return {"err": err if identical else float("inf"), "identical": identical,
            "ratio": (got.norm() / want.norm()).item()}


def case_k6_partial_freeze_two_steps(_schedule: str) -> dict:
    """Own example: the embedding use (rank 0) is frozen in microbatch 0, the head use
    (rank 1) in both, under grad="drop" then grad="rescale"; 2 AdamW steps each:
    parameters equal eager's and the two ranks' copies of the tied weight stay bit-identical
    (gradients and values)."""
    errs, identical = {}, True
    for grad in ("drop", "rescale"):
        model = tied_lm(6)
        X, Y = lm_data(7)
        ref = copy.deepcopy(model)
        pipe = compile_lm(model, X, Y, grad)
        groups = tied_groups(pipe)
        # the embedding use in microbatch 0, the head use in both: counts 1 and 0
        frozen = {(s, m): frozenset({g}) for s, g in groups.items() for m in range(s + 1)}
        opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2, weight_decay=0.1)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
        for i in range(2):
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
            pipe.step(X, Y, frozen=frozen)
            eager_tied_grads(ref, X, Y, {0: {"emb", "head"}, 1: {"head"}}, grad)
            errs[f"{grad}_grad_{i}"] = worst(pipe, ref, "grad")
            copies = pipe.all_gather_object(model[0].weight.grad.tolist())
            identical &= all(c == copies[0] for c in copies)
            opt.step()
            ref_opt.step()
            copies = pipe.all_gather_object(model[0].weight.tolist())
            identical &= all(c == copies[0] for c in copies)
        errs[f"{grad}_params"] = worst(pipe, ref)
        pipe.close()
    return {"err": max(errs.values()) if identical else float("inf"), "identical": identical,
            "parts": errs}


# ------------------------------------------------------------------ kind 7
def case_k7_forward_only(schedule: str) -> dict:
    """Frozen embedding + first layer: stage 0 (rank 0) is forward-only; two AdamW steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 11))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randint(0, 11, (4, 5), generator=g), torch.randint(0, 11, (4, 5), generator=g)

    def loss(o, y):
        return nn.functional.cross_entropy(o.flatten(0, 1), y.flatten())

    pipe = tfcompile.compile(model, schedule=schedule, microbatches=2, example_inputs=(X[:2],),
                             loss_fn=loss, example_target=Y[:2], split_points=["2"])
    params = [p for p in pipe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2) if params else None
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        if opt is not None:
            opt.zero_grad()
        ref_opt.zero_grad()
        pipe.step(X, Y)
        eager_accumulate(ref, X, Y, 2, loss)
        if opt is not None:
            opt.step()
        ref_opt.step()
    err = worst(pipe, ref)
    pipe.close()
    return {"err": err}


# ------------------------------------------------------------------ kind 3
def case_k3_evaluate_eval_mode(schedule: str) -> dict:
    """BatchNorm + Dropout model trained 2 AdamW steps, then model.eval(): evaluate equals
    eager eval on every rank, the logits come back on the last stage's rank only (None on the
    other), and no buffer changes."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(8, 3))
    g = torch.Generator().manual_seed(4)
    X, Y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss = nn.functional.cross_entropy
    pipe = tfcompile.compile(model, schedule=schedule, microbatches=2, example_inputs=(X[:4],),
                             loss_fn=loss, example_target=Y[:4], split_points=["3"])
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        pipe.step(X, Y)
        opt.step()
    model.eval()
    # every rank holds only its stage's trained parameters: gather the full model state
    states = pipe.all_gather_object({n: p.detach().clone() for n, p in pipe.named_parameters()})
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for state in states:
            for n, p in ref.named_parameters():
                if n in state:
                    p.copy_(state[n])
    # the BatchNorm (stage 0) running statistics as rank 0, which holds stage 0, updated them
    bufs = pipe.all_gather_object({n: b.clone() for n, b in model.named_buffers()})[0]
    with torch.no_grad():
        for n, b in ref.named_buffers():
            b.copy_(bufs[n])
    before = {n: b.clone() for n, b in model.named_buffers()}
    with torch.no_grad():
        logits = torch.cat([ref(a) for a in X.chunk(2)])
        want = sum(loss(ref(a), b).item() for a, b in zip(X.chunk(2), Y.chunk(2))) / 2
    got, outs = pipe.evaluate(X, Y, return_outputs=True)
    errs = {"loss": abs(got - want)}
    if pipe.has_last_stage:
        errs["logits"] = (outs - logits).abs().max().item()
    elif outs is not None:
        errs["outputs_off_last_rank"] = float("inf")
    errs["buffers"] = max(
        (b - before[n]).abs().max().item() for n, b in model.named_buffers()
    )
    pipe.close()
    return {"err": max(errs.values()), "parts": errs}


CASES = {
    "k3_evaluate_eval_mode": case_k3_evaluate_eval_mode,
    "k1_accumulate_two_steps": case_k1_accumulate_two_steps,
    "k6_frozen_everywhere": case_k6_frozen_everywhere,
    "k6_rescale_per_use": case_k6_rescale_per_use,
    "k1_two_biases_two_steps": case_k1_two_biases_two_steps,
    "k6_partial_freeze_two_steps": case_k6_partial_freeze_two_steps,
    "k7_forward_only": case_k7_forward_only,
}


if __name__ == "__main__":
    worker_main.main(CASES)
