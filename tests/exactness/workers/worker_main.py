"""The command line every exactness torchrun worker shares: run the named cases on this rank
and write one JSON verdict per rank, {case: {"err": worst error, "error": text or None, ...}}.
"""

from __future__ import annotations

import argparse
import faulthandler
import inspect
import json
import os
import traceback
from collections.abc import Callable

import torch


def worst_param_error(pipe, ref, attr: str | None = None) -> float:
    """Largest absolute difference between the pipeline's parameters (or their `attr`, e.g.
    "grad") and the eager copy's, by model name; inf when exactly one side is None."""
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


def main(cases: dict[str, Callable[..., dict]]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--schedule", default="1F1B")
    parser.add_argument("--timeout", type=float, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # never hang a test run
    rank = int(os.environ["RANK"])
    results = {}
    for case in args.cases.split(","):
        fn = cases[case]
        try:
            verdict = fn(args.schedule) if inspect.signature(fn).parameters else fn()
            results[case] = {"error": None, **verdict}
        except Exception as exc:  # noqa: BLE001 - recorded in the verdict, the test fails
            results[case] = {"err": float("inf"), "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc()[-2000:]}
            break  # the ranks may now disagree about collectives: stop here
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
