"""The TimelyFreeze comparison at small scale, on CPU processes (gloo), in the paper's regime.

Fine-tuning, as the paper does: the LLaMA-style byte-level LM of ``examples/train_llama.py`` is
first pretrained on the standard library's sources (``--data code``: pydoc_data left out; plain
eager PyTorch, one thread, deterministic), cached on disk under ``--pretrain-cache`` by a hash
of its settings and rebuilt when missing; every run then fine-tunes it on a disjoint text
domain shipped with Python, pydoc's English language reference (``--data docs``).
``--from-scratch`` trains from a random initialisation instead.

For each schedule (GPipe, 1F1B, Interleaved1F1B, ZBV), each method (none, apf, autofreeze,
freezeout, timely, timely+apf, timely+autofreeze) and each of ``--seeds`` seeds (data order and
freezing decisions; the same pretrained weights) it trains on 2 processes (``tfcompile.train.run``)
with the same validation batches, and reports mean and spread (min-max over seeds) of:

- median step time over the steady window (steps from the end of TimelyFreeze's ramp to the
  end, the same window for every method), throughput (tokens/s) and gain over ``none``;
- the measured pipeline step time (first action start to last action end over all ranks, no
  optimizer) and its gain over ``none``, next to the gain the plan predicted from the run's own
  measured profile (``Freezer.prediction``: its ratios snapped to whole groups, as they run);
- the average actual freeze ratio over the steady window (mean over stages);
- validation loss at equal steps (the end of training, the same validation batches);
- training wall-clock time (sum of step times, evaluation excluded) until the validation loss
  first reaches the target: ``none``'s final validation loss + ``--target-margin`` (default
  0.05 nats) per schedule, linearly interpolated between evaluations;
- drop vs rescale gradient semantics for ``timely`` (``--grad-schedules``);
- plan against measurement: the plan's predicted pipeline gain, the measured one, and the
  plan's saving applied to ``none``'s measured whole step (per-step work outside the timed
  actions, e.g. the optimizer, does not shrink with freezing);
- a cap sweep (``--caps``, default 0.3..0.9 on 1F1B and ZBV): gain and validation loss of
  ``timely`` against the cap, beside the authors' LLaMA-3.2-1B numbers (table and plot).

One torchrun launch per schedule trains every method side by side, step by step (step k of
every run before step k + 1 of any, order rotated each step): on a shared machine the
background load then hits every method alike. ``--sequential`` runs them one after another
through ``tfcompile.train.run.run`` instead. Phases: warm-up and ramp of ``--unit`` steps,
monitoring windows of ``--monitor-steps`` steps; the w_min window freezes everything in 2 of the
4 microbatches per step and w_max is taken from the other 2 of the same steps
(``wmin_microbatches``), so the machine's drift between windows does not reach the plan.
Outputs under ``--out`` (default results/reproduce): results.json,
table.md, val_loss_vs_time.png, throughput.png, ratio_vs_step.png, cap_sweep.png, logs/.

    python benchmarks/reproduce.py --quick     # CI: 1F1B, none vs timely, tiny model, 1 seed
    python benchmarks/reproduce.py             # the full study (`make reproduce`)

Timings on a shared 2-core machine are noisy: read gains as indications, not measurements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from tfcompile.schedules import stages_per_rank
from tfcompile.train.launch import TIMED_OUT, torchrun
from tfcompile.train.run import RunConfig
from tfcompile.train.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZBV")
METHODS = ("none", "apf", "autofreeze", "freezeout", "timely", "timely+apf", "timely+autofreeze")
CAPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CAP_SCHEDULES = ("1F1B", "ZBV")
#: The authors' cap sweep (LLaMA-3.2-1B, 1F1B; PAPER.md): cap -> (throughput gain over no
#: freezing, average accuracy; no freezing 36.19).
AUTHORS_CAP_SWEEP = {
    0.3: (0.126, 36.85), 0.4: (0.159, 37.20), 0.5: (0.194, 37.08), 0.6: (0.221, 36.66),
    0.7: (0.258, 37.08), 0.8: (0.296, 35.87), 0.9: (0.329, 36.62),
}  # fmt: skip
#: The authors' LLaMA-3.1-8B gains at cap 0.8 (PAPER.md), schedule -> method -> gain.
AUTHORS_8B = {
    "GPipe": {"apf": 0.269, "autofreeze": 0.277, "timely": 0.366, "timely+apf": 0.346,
              "timely+autofreeze": 0.344},
    "1F1B": {"apf": 0.268, "autofreeze": 0.278, "timely": 0.374, "timely+apf": 0.423,
             "timely+autofreeze": 0.358},
    "Interleaved1F1B": {"apf": 0.250, "autofreeze": 0.215, "timely": 0.301,
                        "timely+apf": 0.314, "timely+autofreeze": 0.320},
    "ZBV": {"apf": 0.241, "autofreeze": 0.039, "timely": 0.304, "timely+apf": 0.299,
            "timely+autofreeze": 0.297},
}  # fmt: skip
TAG = "[reproduce]"

# What every run shares: 2 processes, one thread each, evaluation every 5 steps, no dumps.
# warmup: the phase unit (warm-up and ramp length, steps); monitor: steps per monitoring
# window (w_max, w_min). The paper uses 100-step phases in runs of thousands of steps; here
# the monitoring windows are kept short (no weight learns in the frozen microbatches).
# wmin_microbatches=2: w_min and w_max from the same steps (the forward time, which freezing
# does not change, differed by up to 25% between two consecutive windows on this machine).
BASE = RunConfig(
    ranks=2, eval_every=5, val_batches=4, threads=1, no_dumps=True, wmin_microbatches=2
)
FULL = replace(
    BASE, dim=128, layers=4, heads=4, kv_heads=2, seq=64, batch=16, microbatches=4, steps=100,
    warmup=10, monitor=4, max_freeze=0.8, lr=1e-3,
)  # fmt: skip
QUICK = replace(
    BASE, dim=64, layers=4, heads=4, kv_heads=2, seq=32, batch=8, microbatches=4, steps=40,
    warmup=4, monitor=2, max_freeze=0.8, lr=1e-3,
)  # fmt: skip
#: Pretraining steps (on the code domain) of the full study and of --quick.
PRETRAIN_STEPS, QUICK_PRETRAIN_STEPS = 400, 60
PRETRAIN_LR = 3e-3
# the RunConfig fields this benchmark exposes as flags (the rest are per run)
RUN_FLAGS = (
    "dim", "layers", "heads", "kv_heads", "seq", "batch", "microbatches", "steps",
    "eval_every", "val_batches", "ranks", "max_freeze", "prefix_freeze", "wmin_microbatches",
    "seed", "lr",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short CI form: 1F1B, none vs timely")
    p.add_argument("--schedules", default=None, help="comma list (default: all four)")
    p.add_argument("--methods", default=None, help="comma list (default: all six)")
    p.add_argument(
        "--grad-schedules",
        default=None,
        help="schedules on which timely also runs with grad=rescale (default 1F1B; '' = none)",
    )
    p.add_argument("--target-margin", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; quick 1)")
    p.add_argument(
        "--caps", default=None,
        help="cap sweep for timely, comma list (default 0.3..0.9; quick none; '' = none)",
    )  # fmt: skip
    p.add_argument(
        "--cap-schedules", default=",".join(CAP_SCHEDULES), help="schedules of the cap sweep"
    )
    p.add_argument("--from-scratch", action="store_true", help="no pretraining, no fine-tuning")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps")
    p.add_argument(
        "--pretrain-cache", default=str(ROOT / "results" / "pretrained"),
        help="folder of the cached pretrained weights",
    )  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run methods one after another (default: interleaved step by step)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per schedule")
    p.add_argument(
        "--reanalyse", action="store_true",
        help="train nothing: rebuild table, plots and results.json from --out's runs/*.json",
    )  # fmt: skip
    # absent flags keep the preset's values (QUICK with --quick, FULL otherwise)
    RunConfig.add_arguments(p, only=RUN_FLAGS, suppress_defaults=True)
    p.add_argument("--unit", dest="warmup", type=int, default=argparse.SUPPRESS,
                   help="phase unit: warm-up and ramp length (steps)")  # fmt: skip
    p.add_argument("--monitor-steps", dest="monitor", type=int, default=argparse.SUPPRESS,
                   help="steps per monitoring window")  # fmt: skip
    # worker side (under torchrun): the JSON file of the runs, written by `launch`
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def base_config(args) -> RunConfig:
    """The preset with the command line's overrides."""
    preset = QUICK if args.quick else FULL
    return RunConfig.from_args(args, base=preset, only=(*RUN_FLAGS, "warmup", "monitor"))


def settings_of(config: RunConfig) -> dict:
    """The model and phase settings reported in results.json and the table."""
    return dict(
        dim=config.dim, layers=config.layers, heads=config.heads, kv_heads=config.kv_heads,
        seq=config.seq, batch=config.batch, microbatches=config.microbatches,
        steps=config.steps, unit=config.warmup, monitor_steps=config.monitor,
        cap=config.max_freeze, lr=config.lr, data=config.data, init=config.init,
    )  # fmt: skip


class Cell(NamedTuple):
    """One run of the study: a method with its gradient semantics, seed and cap."""

    method: str
    grad: str = "drop"
    seed: int = 0
    cap: float | None = None  # None: the study's cap


def run_name(schedule: str, cell: Cell) -> str:
    name = f"{schedule}__{cell.method.replace('+', '-')}__{cell.grad}__s{cell.seed}"
    return name if cell.cap is None else f"{name}__cap{cell.cap:g}"


def run_config(base: RunConfig, schedule: str, cell: Cell, out: Path) -> RunConfig:
    """One run of ``cell`` on ``schedule``, its step log under ``out``."""
    return replace(
        base,
        schedule=schedule,
        stages=base.ranks * stages_per_rank(schedule),
        freeze=cell.method,
        grad=cell.grad,
        seed=cell.seed,
        max_freeze=base.max_freeze if cell.cap is None else cell.cap,
        log_every=max(10, base.steps // 4),
        out=str(out),
    )


# ----------------------------------------------------------------------------- pretraining
def pretrained_weights(base: RunConfig, steps: int, cache: Path) -> Path:
    """The LM of ``base``'s shape pretrained for ``steps`` on the code domain, cached.

    Plain eager PyTorch in this process (one thread, fixed seeds: the same weights on every
    run of the same torch), saved under ``cache`` by a hash of everything that shapes them;
    built when missing (written to a temporary name first, so a killed build leaves nothing).
    """
    import torch

    from tfcompile.models.llama import byte_lm
    from tfcompile.train.run import corpus, lm_loss

    key = json.dumps(
        [base.dim, base.layers, base.heads, base.kv_heads, base.seq, base.batch, steps,
         PRETRAIN_LR, "code", torch.__version__],
    )  # fmt: skip
    path = cache / f"llama-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        model = byte_lm(base.dim, base.layers, base.heads, base.kv_heads, base.seq, seed=0)
        data = corpus("code")
        gen = torch.Generator().manual_seed(1)
        opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
        warm = max(1, steps // 10)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = PRETRAIN_LR * min(1.0, (step + 1) / warm) * 0.5 * (
                    1 + math.cos(math.pi * step / steps)
                )
            x, y = data.batch("train", base.batch, base.seq, gen)
            opt.zero_grad(set_to_none=True)
            loss = lm_loss(model(x), y)
            loss.backward()
            opt.step()
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    finally:
        torch.set_num_threads(threads)
    print(
        f"{TAG} pretrained {steps} steps on the code domain in {time.perf_counter() - t0:.0f} s "
        f"(last loss {loss.item():.3f}) -> {path}",
        flush=True,
    )
    return path


# ----------------------------------------------------------------------------- worker
def load_runs(path: str) -> tuple[dict, list[tuple[str, RunConfig]]]:
    """The worker's job, as `launch` wrote it: (its header, [(run name, config)])."""
    job = json.loads(Path(path).read_text())
    return job, [(r["name"], RunConfig.from_dict(r["config"])) for r in job["runs"]]


def worker_sequential(job: dict, runs: list[tuple[str, RunConfig]]) -> None:
    """Under torchrun: train every run of one schedule in turn; rank 0 writes JSON."""
    out = Path(job["out"])
    rank = int(os.environ.get("RANK", "0"))
    # a short discarded run first: the first training in a process pays for lazy
    # initialisation (allocator, thread pools, gloo buffers), which would bias the baseline
    name, first = runs[0]
    warmup = replace(first, steps=min(10, first.steps), freeze="none", grad="drop")
    train_run(replace(warmup, out=str(out / "runs" / run_name(job["schedule"], Cell("warmup")))))
    for name, config in runs:
        t0 = time.perf_counter()
        summary = train_run(config)
        summary["run_seconds"] = time.perf_counter() - t0
        summary["name"] = name
        summary["settings"] = job["settings"]
        summary["seed"], summary["cap"] = config.seed, config.max_freeze
        summary["sweep"] = "__cap" in name
        if rank == 0:
            path = out / "runs" / f"{name}.json"
            path.write_text(json.dumps(summary))
            print(
                f"{TAG} {name}: median step {1e3 * summary['median_step_s']:.1f} ms, "
                f"{summary['tokens_per_s']:.0f} tok/s, freeze {summary['mean_ratio']:.2f}, "
                f"val {summary['val_loss']:.4f} ({summary['run_seconds']:.0f} s)",
                flush=True,
            )


def worker_interleaved(job: dict, configs: list[tuple[str, RunConfig]]) -> None:
    """Under torchrun: all (method, grad) runs of a schedule side by side, step by step.

    Every run has its own model (same seed), optimizer, data generator (same seed: same
    batches) and pipeline; step k of every run executes before step k + 1 of any, in an
    order rotated each step. Background load on a shared machine then hits every method
    alike, which a run-after-run comparison cannot ensure. Pipelines share the process
    group: a step completes all its messages before the next run's step starts.
    """
    import logging
    import statistics as stats

    import torch

    from tfcompile.train.loop import TrainResult, train_step
    from tfcompile.train.run import build_pipeline, corpus, lr_schedule, summarise
    from tfcompile.train.steplog import StepLog

    settings = job["settings"]
    schedule = job["schedule"]
    out = Path(job["out"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    logging.basicConfig(
        level=logging.INFO if rank == world - 1 else logging.WARNING, format="%(message)s"
    )
    data = corpus(configs[0][1].data)
    runs = []
    for name, ex in configs:
        Path(ex.out).mkdir(parents=True, exist_ok=True)
        pipe, _ = build_pipeline(ex, world)
        optimizer = torch.optim.AdamW(pipe.parameters(), lr=ex.lr, weight_decay=0.0)
        tokens = ex.batch * ex.seq
        runs.append(
            {
                "name": name,
                "config": ex,
                "pipe": pipe,
                "optimizer": optimizer,
                "base_lrs": [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups],
                "lr": lr_schedule(ex),
                "gen": torch.Generator().manual_seed(ex.seed + 1),
                "result": TrainResult(steps=ex.steps, wall_seconds=0.0),
                "tokens": tokens,
                "log": StepLog(Path(ex.out) / f"steps_rank{pipe.rank}.csv", items_per_step=tokens),
            }
        )
    val_gen = torch.Generator().manual_seed(12345)
    val = [
        data.batch("val", settings["batch"], settings["seq"], val_gen)
        for _ in range(configs[0][1].val_batches)
    ]
    steps = settings["steps"]
    eval_every = configs[0][1].eval_every
    speaker = rank == world - 1

    def evaluate(run, step):
        loss = stats.fmean(run["pipe"].evaluate(x, y) for x, y in val)
        result = run["result"]
        result.val.append((step, sum(result.step_seconds), loss))

    def one_step(run, step):
        batch = data.batch("train", settings["batch"], settings["seq"], run["gen"])
        train_step(
            run["pipe"], run["optimizer"], batch, run["result"], step,
            lr_factor=run["lr"](step), base_lrs=run["base_lrs"], steplog=run["log"],
        )  # fmt: skip

    # discarded warm-up steps: lazy initialisation must not land on the first run's steps
    for run in runs:
        run["pipe"].evaluate(*val[0])
    started = time.perf_counter()
    for step in range(steps):
        shift = step % len(runs)
        for run in runs[shift:] + runs[:shift]:
            one_step(run, step)
        if eval_every and (step + 1) % eval_every == 0 or step + 1 == steps:
            for run in runs:
                evaluate(run, step + 1)
        if speaker and (step % max(1, steps // 5) == 0 or step + 1 == steps):
            print(
                f"{TAG} {schedule} step {step}: "
                + ", ".join(
                    f"{r['name'].split('__', 1)[1]} {1e3 * r['result'].step_seconds[-1]:.0f} ms"
                    for r in runs
                ),
                flush=True,
            )
    elapsed = time.perf_counter() - started
    for run in runs:
        run["log"].close()
        run["result"].wall_seconds = elapsed
        summary = summarise(run["pipe"], run["result"], run["config"], 0, steps, run["tokens"])
        summary["run_seconds"] = elapsed
        summary["name"] = run["name"]
        summary["settings"] = settings
        summary["mode"] = "interleaved"
        summary["seed"] = run["config"].seed
        summary["cap"] = run["config"].max_freeze
        summary["sweep"] = "__cap" in run["name"]
        freezer = run["pipe"].freezer
        if freezer is not None:  # the measured profiles the plan came from (plan vs measured)
            summary["profiles"] = {
                k: None if v is None else v.to_dict() for k, v in freezer.profiles.items()
            }
        if rank == 0:
            (out / "runs" / f"{run['name']}.json").write_text(json.dumps(summary))
            print(
                f"{TAG} {run['name']}: median step {1e3 * summary['median_step_s']:.1f} ms, "
                f"{summary['tokens_per_s']:.0f} tok/s, freeze {summary['mean_ratio']:.2f}, "
                f"val {summary['val_loss']:.4f}",
                flush=True,
            )
    for run in runs:
        run["pipe"].close()


# ----------------------------------------------------------------------------- driver
def launch(args, base: RunConfig, schedule: str, runs: list[Cell], log_path: Path) -> int:
    """One torchrun launch trains the ``runs`` on ``schedule``; output to log."""
    out = Path(args.out)
    job = {
        "schedule": schedule,
        "out": str(out),
        "settings": settings_of(base),
        "sequential": args.sequential,
        "runs": [
            {
                "name": run_name(schedule, cell),
                "config": run_config(
                    base, schedule, cell, out / "runs" / run_name(schedule, cell)
                ).to_dict(),
            }
            for cell in runs
        ],
    }
    job_path = log_path.with_suffix(".json")
    job_path.write_text(json.dumps(job, indent=1))
    with log_path.open("w") as log:

        def on_line(line: str) -> None:
            log.write(line)
            log.flush()
            if line.startswith(TAG) or "error" in line.lower() or "plan predicts" in line:
                print(f"  {schedule}: {line.rstrip()}", flush=True)

        rc = torchrun(
            Path(__file__).resolve(),
            ["--worker", str(job_path)],
            nproc=base.ranks,
            timeout=args.timeout,
            env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            on_line=on_line,
        )
    if rc == TIMED_OUT:
        print(f"  {schedule}: timed out after {args.timeout:.0f} s", flush=True)
    return rc


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else float("nan")


def time_to_target(curve: list[list[float]], target: float) -> float | None:
    """Training seconds when the validation loss first reaches target (linear interpolation)."""
    previous = None
    for _step, seconds, loss in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return seconds
            t0, l0 = previous
            return t0 + (seconds - t0) * (l0 - target) / (l0 - loss)
        previous = (seconds, loss)
    return None


def _spread(values: list[float]) -> dict:
    """Mean and min-max of the finite values (None when there are none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "n": len(values)}  # fmt: skip


def measure_run(run: dict, base: dict | None, window_from: int, target: float | None) -> dict:
    """One run's metrics against ``none`` of the same schedule and seed (``base``).

    Plan against measurement: ``predicted_gain`` is the plan's own pipeline gain (its
    unfrozen over its planned LP makespan); ``plan_step_gain`` applies the plan's relative
    pipeline saving to ``none``'s measured pipeline step and keeps the measured work outside
    the timed actions (optimizer, freezing decisions, Python) as it is, since freezing does
    not shrink it: base_step / (base_step - saving * base_pipe).
    """
    step_s = _median(run["step_seconds"][window_from:])
    pipe_s = _median(run["pipe_step_seconds"][window_from:])
    base_step = _median(base["step_seconds"][window_from:]) if base else float("nan")
    base_pipe = _median(base["pipe_step_seconds"][window_from:]) if base else float("nan")
    ratios = run["ratios_per_step"][window_from:]
    plan = run.get("plan") or {}
    predicted = plan.get("predicted_gain")
    plan_step_gain = None
    if predicted:
        saving = 1.0 - 1.0 / predicted
        plan_step_gain = base_step / (base_step - saving * base_pipe)
    overhead = [a - b for a, b in zip(run["step_seconds"], run["pipe_step_seconds"])]
    return {
        "median_step_ms": 1e3 * step_s,
        "tokens_per_s": run["tokens_per_step"] / step_s,
        "gain": base_step / step_s,
        "pipe_step_ms": 1e3 * pipe_s,
        "overhead_ms": 1e3 * _median(overhead[window_from:]),
        "measured_pipe_gain": base_pipe / pipe_s,
        "predicted_gain": predicted,
        "plan_step_gain": plan_step_gain,
        "plan_stage_ratio": plan.get("stage_ratio"),
        "mean_freeze_ratio": (
            statistics.fmean(statistics.fmean(r) for r in ratios) if ratios else 0.0
        ),
        "stage_freeze_ratio": [
            statistics.fmean(r[s] for r in ratios) if ratios else 0.0
            for s in range(run["stages"])
        ],
        "val_loss": run["val_loss"],
        "val_loss_delta": (
            run["val_loss"] - base["val_loss"] if base and run["val_loss"] is not None else None
        ),
        "time_to_target_s": (
            time_to_target(run["val_curve"], target) if target is not None else None
        ),
        "train_seconds": run["train_seconds"],
    }


#: metrics averaged over seeds (with their min-max in ``<name>_spread``)
AVERAGED = (
    "median_step_ms", "tokens_per_s", "gain", "pipe_step_ms", "overhead_ms",
    "measured_pipe_gain", "predicted_gain", "plan_step_gain", "mean_freeze_ratio", "val_loss",
    "val_loss_delta", "time_to_target_s", "train_seconds",
)  # fmt: skip


def analyse(runs: list[dict], settings: dict, margin: float) -> dict:
    """Per (schedule, method, grad, cap) over seeds, against ``none`` of the same seed.

    Window: the steps after TimelyFreeze's warm-up, both monitoring windows and the ramp (the
    same window for every method). Target per schedule and seed: that seed's ``none`` final
    validation loss + ``margin``.
    """
    window_from = 2 * settings["unit"] + 2 * settings["monitor_steps"]
    bases = {
        (r["schedule"], r.get("seed", 0)): r
        for r in runs
        if r["policy"] == "none" and r["grad"] == "drop"
    }
    cells: dict[tuple, list[dict]] = {}
    targets: dict[str, list[float]] = {}
    for run in runs:
        schedule, seed = run["schedule"], run.get("seed", 0)
        base = bases.get((schedule, seed))
        target = base["val_loss"] + margin if base and base["val_loss"] is not None else None
        if target is not None and run is base:
            targets.setdefault(schedule, []).append(target)
        cap = run.get("cap") if run.get("sweep") else None
        key = (schedule, run["policy"], run["grad"], cap)
        cells.setdefault(key, []).append(measure_run(run, base, window_from, target))
    rows = []
    for (schedule, method, grad, cap), measured in cells.items():
        row = {"schedule": schedule, "method": method, "grad": grad, "cap": cap,
               "sweep": cap is not None, "seeds": len(measured)}  # fmt: skip
        for name in AVERAGED:
            spread = _spread([m[name] for m in measured])
            row[name] = spread["mean"]
            row[f"{name}_spread"] = [spread["min"], spread["max"]]
        row["reached_target"] = sum(m["time_to_target_s"] is not None for m in measured)
        row["stage_freeze_ratio"] = [
            statistics.fmean(vals) for vals in zip(*(m["stage_freeze_ratio"] for m in measured))
        ]
        row["plan_stage_ratio"] = measured[0]["plan_stage_ratio"]
        if row["gain"] is not None and row["plan_step_gain"]:
            row["measured_over_plan"] = row["gain"] / row["plan_step_gain"]
        else:
            row["measured_over_plan"] = None
        # what the plan models: the pipeline step (timed actions), measured against predicted
        if row["measured_pipe_gain"] is not None and row["predicted_gain"]:
            row["pipe_over_plan"] = row["measured_pipe_gain"] / row["predicted_gain"]
        else:
            row["pipe_over_plan"] = None
        row["authors_8b_gain"] = AUTHORS_8B.get(schedule, {}).get(method)
        rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (SCHEDULES.index(r["schedule"]) if r["schedule"] in SCHEDULES
                             else 9, r["sweep"], r["cap"] or 0, order.get(r["method"], 99),
                             r["grad"]))  # fmt: skip
    mean_targets = {s: statistics.fmean(v) for s, v in targets.items()}
    return {"window_from": window_from, "targets": mean_targets, "rows": rows}


def _fmt(value, spec: str, none: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return format(value, spec)


def _fmt_spread(row: dict, name: str, spec: str) -> str:
    """``mean [min, max]`` (just the mean for one seed)."""
    mean = _fmt(row.get(name), spec)
    lo, hi = row.get(f"{name}_spread") or (None, None)
    if row.get("seeds", 1) <= 1 or lo is None:
        return mean
    return f"{mean} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def sweep_rows(analysis: dict, study_cap: float) -> list[dict]:
    """Timely against the cap per schedule: the sweep's cells plus the study's own cap."""
    rows = [r for r in analysis["rows"] if r["method"] == "timely" and r["grad"] == "drop"]
    swept = {r["schedule"] for r in rows if r["sweep"]}
    out = []
    for r in rows:
        if r["schedule"] in swept:
            out.append({**r, "cap": r["cap"] if r["sweep"] else study_cap})
    out.sort(key=lambda r: (r["schedule"], r["cap"]))
    return out


def write_table(analysis: dict, settings: dict, path: Path, margin: float) -> str:
    regime = (
        f"fine-tuned from a model pretrained on Python sources, on pydoc's English reference "
        f"(weights: `{Path(settings['init']).name}`)"
        if settings.get("init")
        else "trained from scratch on Python sources"
    )
    lines = [
        "# TimelyFreeze reproduction (small scale, CPU, gloo)",
        "",
        f"Model: LLaMA-style byte LM, dim {settings['dim']}, {settings['layers']} layers, "
        f"seq {settings['seq']}, batch {settings['batch']} in {settings['microbatches']} "
        f"microbatches, {settings['steps']} steps, lr {settings['lr']}, cap "
        f"{settings['cap']}; {regime}. Steady window: steps {analysis['window_from']}-"
        f"{settings['steps'] - 1}. Values are means over seeds with [min, max]. Gains are "
        f"over `none` of the same seed (whole step: pipeline + optimizer). `pipe gain` is the "
        f"measured pipeline step's gain (first action start to last action end, all ranks), "
        f"`plan pipe` the plan's own predicted pipeline gain (its ratios snapped to whole "
        f"groups, as they run) and `pipe/plan` their ratio: what the plan models, measured. "
        f"`plan step` applies the plan's saving to `none`'s measured whole step (work outside "
        f"the timed actions kept) and `step/plan` = gain / plan step; a whole-step gain above "
        f"the pipeline gain means that work shrank too (the optimizer skips parameters that no "
        f"microbatch gave a gradient). Target validation loss: `none`'s final + {margin} nats. "
        "Time = training seconds (evaluation excluded). Shared 2-core machine: timings are "
        "noisy.",
        "",
        "| schedule | method | grad | seeds | tok/s | gain | pipe gain | plan pipe | pipe/plan "
        "| plan step | step/plan | freeze | val loss | Δ val | time to target s | authors 8B |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in analysis["rows"]:
        if r["sweep"]:
            continue
        ttt = _fmt(r["time_to_target_s"], ".1f", "not reached")
        if r["seeds"] > 1:
            ttt += f" ({r['reached_target']}/{r['seeds']})"
        lines.append(
            "| " + " | ".join([
                r["schedule"], r["method"], r["grad"], str(r["seeds"]),
                _fmt(r["tokens_per_s"], ".0f"),
                _fmt_spread(r, "gain", ".3f"),
                _fmt(r["measured_pipe_gain"], ".3f"),
                _fmt(r["predicted_gain"], ".3f"),
                _fmt(r["pipe_over_plan"], ".3f"),
                _fmt(r["plan_step_gain"], ".3f"),
                _fmt(r["measured_over_plan"], ".3f"),
                _fmt(r["mean_freeze_ratio"], ".2f"),
                _fmt(r["val_loss"], ".4f"),
                _fmt_spread(r, "val_loss_delta", "+.4f"),
                ttt,
                _fmt(None if r["authors_8b_gain"] is None else 1 + r["authors_8b_gain"], ".3f"),
            ]) + " |"
        )  # fmt: skip
    targets = ", ".join(f"{s}: {_fmt(t, '.4f')}" for s, t in analysis["targets"].items())
    lines += ["", f"Targets (mean over seeds): {targets}.", ""]
    sweep = sweep_rows(analysis, settings["cap"])
    if sweep:
        lines += [
            "## Cap sweep (timely)",
            "",
            "Authors: LLaMA-3.2-1B, 1F1B, 4 GPUs (PAPER.md): gain over no freezing and accuracy.",
            "",
            "| schedule | cap | seeds | gain | Δ val | pipe gain | plan pipe | pipe/plan | freeze "
            "| authors 1B gain | authors acc (none 36.19) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sweep:
            authors = AUTHORS_CAP_SWEEP.get(round(r["cap"], 2))
            lines.append(
                "| " + " | ".join([
                    r["schedule"], f"{r['cap']:g}", str(r["seeds"]),
                    _fmt_spread(r, "gain", ".3f"),
                    _fmt_spread(r, "val_loss_delta", "+.4f"),
                    _fmt(r["measured_pipe_gain"], ".3f"),
                    _fmt(r["predicted_gain"], ".3f"),
                    _fmt(r["pipe_over_plan"], ".3f"),
                    _fmt(r["mean_freeze_ratio"], ".2f"),
                    _fmt(None if authors is None else 1 + authors[0], ".3f"),
                    _fmt(None if authors is None else authors[1], ".2f"),
                ]) + " |"
            )  # fmt: skip
        lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def write_plots(runs: list[dict], analysis: dict, out: Path, study_cap: float) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [r for r in runs if not r.get("sweep")]
    schedules = list(dict.fromkeys(r["schedule"] for r in runs))
    main_rows = [r for r in analysis["rows"] if not r["sweep"]]
    paths = []

    def label_of(run: dict) -> str:
        label = run["policy"] + ("" if run["grad"] == "drop" else f" ({run['grad']})")
        return label

    fig = Figure(figsize=(5.0 * len(schedules), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, schedule in enumerate(schedules):
        ax = fig.add_subplot(1, len(schedules), i + 1)
        seen = set()
        for run in runs:  # the first seed's curve per method
            if run["schedule"] != schedule or not run["val_curve"] or label_of(run) in seen:
                continue
            seen.add(label_of(run))
            _, seconds, losses = zip(*run["val_curve"])
            ax.plot(seconds, losses, marker=".", label=label_of(run))
        target = analysis["targets"].get(schedule)
        if target is not None:
            ax.axhline(target, color="grey", linestyle=":", label="target")
        ax.set_title(schedule)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("validation loss (nats)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "val_loss_vs_time.png")
    fig.savefig(paths[-1])

    fig = Figure(figsize=(max(6.0, 2.2 * len(schedules)), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(dict.fromkeys((r["method"], r["grad"]) for r in main_rows))
    width = 0.8 / max(1, len(labels))
    for j, (method, grad) in enumerate(labels):
        xs, ys, errs = [], [], [[], []]
        for i, schedule in enumerate(schedules):
            row = next((r for r in main_rows if (r["schedule"], r["method"], r["grad"])
                        == (schedule, method, grad)), None)  # fmt: skip
            if row is not None and row["gain"] is not None:
                lo, hi = row["gain_spread"]
                xs.append(i + j * width)
                ys.append(row["gain"])
                errs[0].append(row["gain"] - lo)
                errs[1].append(hi - row["gain"])
        name = method if grad == "drop" else f"{method} ({grad})"
        ax.bar(xs, ys, width=width, label=name, yerr=errs, capsize=2)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(schedules))], schedules)
    ax.set_ylabel("throughput gain over none (steady window)")
    ax.set_title("throughput gain (mean, min-max over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "throughput.png")
    fig.savefig(paths[-1])

    fig = Figure(figsize=(5.0 * len(schedules), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, schedule in enumerate(schedules):
        ax = fig.add_subplot(1, len(schedules), i + 1)
        seen = set()
        for run in runs:
            if run["schedule"] != schedule or run["policy"] == "none" or label_of(run) in seen:
                continue
            seen.add(label_of(run))
            mean = [statistics.fmean(r) for r in run["ratios_per_step"]]
            ax.plot(range(len(mean)), mean, label=label_of(run))
        ax.set_title(schedule)
        ax.set_xlabel("step")
        ax.set_ylabel("actual freeze ratio (mean over stages)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "ratio_vs_step.png")
    fig.savefig(paths[-1])

    sweep = sweep_rows(analysis, study_cap)
    if sweep:
        fig = Figure(figsize=(10.0, 4.0), dpi=110)
        FigureCanvasAgg(fig)
        gain_ax, loss_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for schedule in dict.fromkeys(r["schedule"] for r in sweep):
            rows = [r for r in sweep if r["schedule"] == schedule and r["gain"] is not None]
            caps = [r["cap"] for r in rows]
            gain_ax.errorbar(
                caps, [r["gain"] - 1 for r in rows], marker="o", label=f"here, {schedule}",
                yerr=[[r["gain"] - r["gain_spread"][0] for r in rows],
                      [r["gain_spread"][1] - r["gain"] for r in rows]], capsize=2,
            )  # fmt: skip
            loss_ax.plot(caps, [r["val_loss_delta"] for r in rows], marker="o", label=schedule)
        caps = sorted(AUTHORS_CAP_SWEEP)
        gain_ax.plot(caps, [AUTHORS_CAP_SWEEP[c][0] for c in caps], "k--", marker="s",
                     label="authors, LLaMA-3.2-1B 1F1B")  # fmt: skip
        gain_ax.set_xlabel("cap (max_freeze_ratio)")
        gain_ax.set_ylabel("throughput gain over no freezing")
        gain_ax.set_title("gain against cap")
        gain_ax.legend(fontsize="small")
        loss_ax.axhline(0.0, color="grey", linewidth=0.8)
        loss_ax.axhline(0.02, color="grey", linestyle=":", linewidth=0.8, label="+0.02 nats")
        loss_ax.set_xlabel("cap (max_freeze_ratio)")
        loss_ax.set_ylabel("validation loss - none's (nats)")
        loss_ax.set_title("loss against cap (equal steps)")
        loss_ax.legend(fontsize="small")
        fig.tight_layout()
        paths.append(out / "cap_sweep.png")
        fig.savefig(paths[-1])
    return paths


def driver(args) -> dict:
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    base = base_config(args)
    if args.quick:
        schedules, methods, grad_schedules, caps = ["1F1B"], ["none", "timely"], [], []
        seeds = 1
    else:
        schedules, methods, grad_schedules = list(SCHEDULES), list(METHODS), ["1F1B"]
        caps, seeds = list(CAPS), 3
    if args.schedules:
        schedules = args.schedules.split(",")
    if args.methods:
        methods = args.methods.split(",")
    if args.grad_schedules is not None:
        grad_schedules = [s for s in args.grad_schedules.split(",") if s]
    if args.caps is not None:
        caps = [float(c) for c in args.caps.split(",") if c]
    seeds = args.seeds if args.seeds is not None else seeds
    cap_schedules = [s for s in args.cap_schedules.split(",") if s]
    started = time.perf_counter()
    if not args.from_scratch and not args.reanalyse:
        steps = args.pretrain_steps or (QUICK_PRETRAIN_STEPS if args.quick else PRETRAIN_STEPS)
        weights = pretrained_weights(base, steps, Path(args.pretrain_cache))
        base = replace(base, data="docs", init=str(weights))
    settings = settings_of(base)
    settings["seeds"] = seeds
    print(
        f"{TAG} schedules {schedules}, methods {methods}, seeds {seeds}, rescale on "
        f"{grad_schedules}, caps {caps} on {cap_schedules}; model {settings}; out {out}",
        flush=True,
    )
    launched = time.perf_counter()
    failures = {}
    expected = []
    for schedule in [] if args.reanalyse else schedules:
        cells = [Cell(m, "drop", seed) for seed in range(seeds) for m in methods]
        if schedule in grad_schedules and "timely" in methods:
            cells += [Cell("timely", "rescale", seed) for seed in range(seeds)]
        if schedule in cap_schedules and "none" in methods:
            cells += [
                Cell("timely", "drop", seed, cap)
                for cap in caps
                if not math.isclose(cap, base.max_freeze)
                for seed in range(seeds)
            ]
        expected += [run_name(schedule, c) for c in cells]
        t0 = time.perf_counter()
        print(f"{TAG} {schedule}: {len(cells)} runs on {base.ranks} ranks", flush=True)
        rc = launch(args, base, schedule, cells, out / "logs" / f"{schedule}.log")
        print(f"{TAG} {schedule}: done in {time.perf_counter() - t0:.0f} s (rc {rc})", flush=True)
        if rc != 0:
            failures[schedule] = f"exit status {rc}; see logs/{schedule}.log"
    runs_data = []
    for name in expected:
        path = out / "runs" / f"{name}.json"
        if path.exists() and path.stat().st_mtime >= launched - 1:
            runs_data.append(json.loads(path.read_text()))
    if args.reanalyse:  # every run an earlier study left in --out
        runs_data = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
        settings = runs_data[0]["settings"] if runs_data else settings
    analysis = analyse(runs_data, settings, args.target_margin)
    table = write_table(analysis, settings, out / "table.md", args.target_margin)
    plots = write_plots(runs_data, analysis, out, base.max_freeze) if runs_data else []
    results = {
        "settings": settings,
        "quick": args.quick,
        "schedules": schedules,
        "methods": methods,
        "seeds": seeds,
        "caps": caps,
        "cap_schedules": cap_schedules,
        "grad_schedules": grad_schedules,
        "target_margin": args.target_margin,
        "window_from": analysis["window_from"],
        "targets": analysis["targets"],
        "rows": analysis["rows"],
        "failures": failures,
        "plots": [p.name for p in plots],
        "total_seconds": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table, flush=True)
    print(f"{TAG} wrote {out}/results.json, table.md and plots", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        job, runs = load_runs(args.worker)
        (worker_sequential if job["sequential"] else worker_interleaved)(job, runs)
        return 0
    results = driver(args)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
