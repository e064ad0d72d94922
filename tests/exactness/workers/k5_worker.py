"""Run under torchrun (2 ranks, gloo) by tests/exactness/test_k5_dist.py (issue 11 kind 5).

A boolean padding mask and integer position ids cross the rank boundary with the hidden state
(no gradient is sent for them), and the target is a tuple (labels, weights). Each rank trains
tfcompile's pipeline and eager on a deep copy (CPU is deterministic) for two AdamW steps and
writes one JSON verdict: {case: {"err": worst error, "error": exception text or None}}.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import worker_main  # noqa: E402 - beside this script
from exact_helpers import eager_accumulate, make_opt  # noqa: E402
from test_k5_multi_tensor import MaskedAttnPool, MaskedHead, TokenEmbed, _padded_ids  # noqa: E402

import tfcompile  # noqa: E402


def weighted_ce(logits, target):
    labels, weight = target
    return (nn.functional.cross_entropy(logits, labels, reduction="none") * weight).mean()


worst = worker_main.worst_param_error


def case_mask(schedule: str) -> dict:
    torch.manual_seed(6)
    model = nn.Sequential(TokenEmbed(), MaskedAttnPool(), MaskedAttnPool(), MaskedHead())
    ref = copy.deepcopy(model)
    M = 2
    gen = torch.Generator().manual_seed(3)
    batches = []
    for step in range(2):
        X = _padded_ids(seed=20 + step)
        T = (torch.randint(0, 3, (8,), generator=gen), torch.rand(8, generator=gen))
        batches.append((X, T))
    X0, (L0, W0) = batches[0]
    pipe = tfcompile.compile(model, schedule=schedule, microbatches=M,
                             example_inputs=(X0[:4],), loss_fn=weighted_ce,
                             example_target=(L0[:4], W0[:4]), split_points=["2"])
    local = pipe.stage_programs
    if 1 in local:  # the receiving stage: only the hidden state gets (and sends) a gradient
        assert local[1].input_requires_grad == (True, False, False), local[1].input_requires_grad
    opt, ref_opt = make_opt(pipe.parameters(), "adamw"), make_opt(ref.parameters(), "adamw")
    errs = {}
    for step, (X, T) in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        loss = pipe.step(X, T)
        want = eager_accumulate(ref, X, T, M, weighted_ce)
        if pipe.has_last_stage:
            errs[f"loss_{step}"] = abs(loss - want)
        errs[f"grad_{step}"] = worst(pipe, ref, "grad")
        opt.step()
        ref_opt.step()
        errs[f"params_{step}"] = worst(pipe, ref)
    errs["evaluate"] = abs(pipe.evaluate(*batches[1]) - _eager_eval(ref, *batches[1], M))
    pipe.close()
    return {"err": max(errs.values()), "parts": errs}


@torch.no_grad()
def _eager_eval(ref, X, T, M) -> float:
    total = 0.0
    for xm, lm, wm in zip(X.chunk(M), T[0].chunk(M), T[1].chunk(M)):
        values = (xm,)
        for block in ref:
            out = block(*values)
            values = out if isinstance(out, tuple) else (out,)
        total += weighted_ce(values[0], (lm, wm)).item() / M
    return total


CASES = {"k5_mask_1F1B": lambda: case_mask("1F1B"), "k5_mask_GPipe": lambda: case_mask("GPipe")}


if __name__ == "__main__":
    worker_main.main(CASES)
