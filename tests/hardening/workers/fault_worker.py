"""A tiny pipeline under torchrun with one injected fault (tests/hardening/test_h8_fault_soak.py).

Faults (on ``--fault-rank`` at ``--fault-step``):
  raise     RuntimeError at the ``--fault-action``-th action of the step
  kill      SIGKILL of the process at that action (kill -9)
  stall     sleep past the timeout at that action, then go on (a stuck rank waking up)
  nan       the last stage's targets hold a NaN (loss NaN; the step's update is skipped)
  inf       the inputs hold an inf (inf/NaN gradients; the update is skipped, as GradScaler)
  compile   RuntimeError inside tfcompile.compile() (the tracer fails on that rank)
  gather    sleep past the timeout while the others wait in an all_gather

Each rank writes ``rank{r}.json`` (losses, finite parameters, skipped measurements) when it
finishes, or ``rank{r}.err`` with its exception; ``fault.json`` holds when the fault struck.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile import FreezeConfig


def mark_fault(out: Path, args, detail: str) -> None:
    (out / "fault.json").write_text(json.dumps({"time": time.time(), "detail": detail}))
    print(f"[fault] {detail}", file=sys.stderr, flush=True)


def install_action_fault(pipe, args, out: Path) -> None:
    """Wrap this rank's programs so that the fault strikes at the chosen action."""
    calls = {"n": 0}

    def wrap(program, name):
        inner = getattr(program, name)

        def hooked(*a, **k):
            if pipe.step_index == args.fault_step:
                calls["n"] += 1
                if calls["n"] == args.fault_action + 1:
                    detail = f"injected {args.fault} at step {args.fault_step} on rank {pipe.rank}"
                    mark_fault(out, args, detail)
                    if args.fault == "raise":
                        raise RuntimeError(detail)
                    if args.fault == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if args.fault == "stall":
                        time.sleep(args.timeout + 2.0)
            return inner(*a, **k)

        setattr(program, name, hooked)

    for program in pipe.stage_programs.values():
        for name in ("forward", "backward_input", "backward_weight"):
            wrap(program, name)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fault", default="none")
    p.add_argument("--fault-rank", type=int, default=0)
    p.add_argument("--fault-step", type=int, default=1)
    p.add_argument("--fault-action", type=int, default=0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2 * world)])
    example = torch.zeros(2, 8)
    loss_fn = nn.functional.mse_loss
    if args.fault == "compile" and rank == args.fault_rank:

        def loss_fn(out_, target):  # noqa: F811 - fails while compile() traces the last stage
            mark_fault(out, args, f"injected compile failure on rank {rank}")
            raise RuntimeError(f"injected compile failure on rank {rank}")

        if rank != world - 1:  # only the last stage's rank traces the loss: fail a block
            model[2 * rank].register_forward_hook(lambda *a: loss_fn(None, None))
    try:
        pipe = tfcompile.compile(
            model,
            schedule="1F1B",
            microbatches=2,
            example_inputs=(example,),
            loss_fn=loss_fn,
            example_target=example,
            timeout=args.timeout,
            freeze=FreezeConfig(policy="autofreeze", autofreeze_every=2, total_steps=args.steps),
        )
        if args.fault in ("raise", "kill", "stall") and rank == args.fault_rank:
            install_action_fault(pipe, args, out)
        opt = torch.optim.SGD(pipe.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        losses = []
        for step in range(args.steps):
            x, y = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
            if step == args.fault_step and args.fault == "nan":
                y[1, 2] = float("nan")
            if step == args.fault_step and args.fault == "inf":
                x[0, 0] = float("inf")
            opt.zero_grad(set_to_none=True)
            loss = pipe.step(x, y)
            if step == args.fault_step and args.fault == "gather" and rank == args.fault_rank:
                mark_fault(out, args, f"injected gather stall on rank {rank}")
                time.sleep(args.timeout + 2.0)  # the others wait in the all_gather below
            finite = all(
                bool(torch.isfinite(q.grad).all()) for q in pipe.parameters() if q.grad is not None
            )
            # skip the update unless every rank's gradients are finite (as GradScaler does)
            if all(pipe.all_gather_object(finite)):
                opt.step()
            losses.append(loss)
        params_finite = all(bool(torch.isfinite(q).all()) for q in pipe.parameters())
        verdict = {
            "losses": [None if v is None or math.isnan(v) else v for v in losses],
            "nan_steps": [i for i, v in enumerate(losses) if v is not None and math.isnan(v)],
            "params_finite": params_finite,
            "skipped": pipe.freezer.skipped_measurements,
            "frozen": sorted({g for gs in pipe.last_frozen.values() for g in gs}),
        }
        pipe.close()
    except BaseException as exc:
        (out / f"rank{rank}.err").write_text(f"{type(exc).__name__}: {exc}")
        raise
    (out / f"rank{rank}.json").write_text(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
