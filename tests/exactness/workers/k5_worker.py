"""Run under torchrun (2 ranks, gloo) by tests/exactness/test_k5_dist.py (issue 11 kind 5).

A boolean padding mask and integer position ids cross the rank boundary with the hidden state
(no gradient is sent for them), and the target is a tuple (labels, weights). Each rank trains
tfcompile's pipeline and eager on a deep copy (CPU is deterministic) for two AdamW steps and
writes one JSON verdict: {case: {"err": worst error, "error": exception text or None}}.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from exact_helpers import eager_accumulate, make_opt  # noqa: E402
from test_k5_multi_tensor import MaskedAttnPool, MaskedHead, TokenEmbed, _padded_ids  # noqa: E402

import tfcompile  # noqa: E402


def weighted_ce(logits, target):
    labels, weight = target
    return (nn.functional.cross_entropy(logits, labels, reduction="none") * weight).mean()


def worst(pipe, ref, attr=None) -> float:
    refs = dict(ref.named_parameters())
    err = 0.0
    for name, p in pipe.named_parameters():
        a = p if attr is None else getattr(p, attr)
        b = refs[name] if attr is None else getattr(refs[name], attr)
        if a is None or b is None:
            if (a is None) != (b is None):
                return float("inf")
            continue
        err = max(err, (a.detach() - b.detach()).abs().max().item())
    return err


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--timeout", type=float, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # never hang a test run
    rank = int(os.environ["RANK"])
    results = {}
    for case in args.cases.split(","):
        try:
            results[case] = {"error": None, **CASES[case]()}
        except Exception as exc:  # noqa: BLE001 - recorded in the verdict, the test fails
            results[case] = {"err": float("inf"), "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc()[-2000:]}
            break  # the ranks may now disagree about collectives: stop here
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
