"""Data parallel x pipeline: step time and gradient bytes reduced, dp=2 x pp=2 vs pp=2 at the
same global batch, without freezing and with timely freezing in its steady state.

Four torchrun runs (gloo, CPU processes, one thread each) of a LLaMA-style byte LM, 1F1B with
4 microbatches: pp=2 (2 processes) and dp=2 x pp=2 (4 processes, each replica gets half the
global batch), each with freeze=none and freeze=timely (short phases: warm-up 2, monitor 2,
ramp 2, steady from step 8). Per run: median step time (pipe.step + clip + optimizer.step, the
slowest rank's median over the steady tail), its ratio to pp=2 without freezing, and the
gradient bytes all-reduced over dp per step (summed over ranks, from ``pipe.comm_stats()``),
with the fraction of those bytes freezing saved. Ratios come from one run of this script; on a
shared CPU the step times are noisy (the reduction bytes are exact).

Prints a table and writes JSON to benchmarks/results/bench_dp.json. Never asserts on time.
Usage: python benchmarks/bench_dp.py [--steps 16] [--dim 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "bench_dp.json"
MICROBATCHES = 4
STEADY_FROM = 8  # warm-up 0-1, monitor 2-5, plan at 6, ramp 6-7


def worker(args) -> None:
    import tfcompile
    from tfcompile.models.llama import Llama, LlamaConfig
    from tfcompile.testing import lm_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256, dim=args.dim, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=args.seq
    )
    model = Llama(cfg)
    rows = args.batch // (args.dp * MICROBATCHES)
    example = torch.zeros(rows, args.seq, dtype=torch.long)
    phases = dict(warmup_steps=2, monitor_steps=2, ramp_steps=2, replan_every=0)
    freeze = {
        "none": None,
        "timely": tfcompile.FreezeConfig(policy="timely", **phases),
        "timely-prefix": tfcompile.FreezeConfig(
            policy="timely", prefix_on_truncating_stages=True, **phases
        ),
        "freezeout": tfcompile.FreezeConfig(
            policy="freezeout", total_steps=args.steps, **phases
        ),
    }[args.freeze]
    pipe = tfcompile.compile(
        model, "1F1B", stages=2, microbatches=MICROBATCHES, example_inputs=example,
        loss_fn=lm_loss, example_target=example, freeze=freeze,
        dp=args.dp if args.dp > 1 else None,
    )  # fmt: skip
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    times, reduced = [], []
    for step in range(args.steps):
        x = torch.randint(0, 256, (args.batch, args.seq + 1), generator=gen)
        share = x[pipe.dp_rank * rows * MICROBATCHES : (pipe.dp_rank + 1) * rows * MICROBATCHES]
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pipe.step(share[:, :-1], share[:, 1:])
        pipe.clip_grad_norm_(1.0)
        opt.step()
        elapsed = time.perf_counter() - start
        if step >= STEADY_FROM:
            times.append(elapsed)
            reduced.append(pipe.comm_stats()["bytes_reduced"])
    verdict = {
        "median_step_s": statistics.median(times),
        "bytes_reduced_per_step": statistics.fmean(reduced),
        "phase": pipe.freezer.phase if pipe.freezer is not None else "off",
    }
    pipe.close()
    rank = int(os.environ["RANK"])
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(verdict))


def launch(dp: int, freeze: str, args, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    nproc = 2 * dp
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--monitor-interval=1", __file__, "--worker",
        "--dp", str(dp), "--freeze", freeze, "--out", str(out), "--steps", str(args.steps),
        "--dim", str(args.dim), "--seq", str(args.seq), "--batch", str(args.batch),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if result.returncode:
        raise RuntimeError(f"dp={dp} freeze={freeze} failed:\n{result.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    return {
        "dp": dp,
        "pp": 2,
        "freeze": freeze,
        "processes": nproc,
        "median_step_s": max(r["median_step_s"] for r in ranks),
        "bytes_reduced_per_step": sum(r["bytes_reduced_per_step"] for r in ranks),
        "phase": ranks[0]["phase"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--dp", type=int, default=1)
    parser.add_argument("--freeze", default="none")
    parser.add_argument("--out", default="")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="12 steps, dim 32")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.steps, args.dim = 12, 32
    rows = []
    runs = [(1, "none"), (1, "timely"), (2, "none"), (2, "timely"), (2, "timely-prefix")]
    runs.append((2, "freezeout"))
    with tempfile.TemporaryDirectory() as tmp:
        for dp, freeze in runs:
            rows.append(launch(dp, freeze, args, Path(tmp) / f"dp{dp}-{freeze}"))
    base = rows[0]["median_step_s"]
    for row in rows:
        row["step_ratio_vs_pp2"] = row["median_step_s"] / base
    unfrozen = next(r for r in rows if r["dp"] == 2 and r["freeze"] == "none")
    for row in rows:
        if row["dp"] == 2:
            done = row["bytes_reduced_per_step"] / unfrozen["bytes_reduced_per_step"]
            row["bytes_saved_fraction"] = 1 - done
    print(
        f"global batch {args.batch}, {MICROBATCHES} microbatches, dim {args.dim}, "
        f"seq {args.seq}, steps {args.steps} (median over steps {STEADY_FROM}-)"
    )
    header = ("layout", "freeze", "phase", "step ms", "vs pp2", "MB reduced/step")
    print(
        f"{header[0]:<12}{header[1]:<15}{header[2]:<8}{header[3]:>10}{header[4]:>8}"
        f"{header[5]:>17}{'saved':>8}"
    )
    for r in rows:
        layout = f"dp{r['dp']} x pp2" if r["dp"] > 1 else "pp2"
        saved = f"{100 * r['bytes_saved_fraction']:.1f}%" if "bytes_saved_fraction" in r else ""
        print(
            f"{layout:<12}{r['freeze']:<15}{r['phase']:<8}{1e3 * r['median_step_s']:>10.1f}"
            f"{r['step_ratio_vs_pp2']:>8.2f}{r['bytes_reduced_per_step'] / 2**20:>17.3f}"
            f"{saved:>8}"
        )
    print(
        "saved: fraction of the dp reduction bytes that freezing skipped (groups frozen in every "
        "microbatch of a step) vs dp2 x pp2 without freezing"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
