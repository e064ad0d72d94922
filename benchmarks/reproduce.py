"""The TimelyFreeze comparison at small scale, on CPU processes (gloo).

For each schedule (GPipe, 1F1B, Interleaved1F1B, ZBV) and each method (none, apf, autofreeze,
timely, timely+apf, timely+autofreeze) it trains the LLaMA-style byte-level LM of
``examples/train_llama.py`` on 2 processes with the same seed, data order and validation
batches, and reports:

- median step time over the steady window (steps from the end of TimelyFreeze's ramp to the
  end, the same window for every method), throughput (tokens/s) and gain over ``none``;
- the measured pipeline step time (first action start to last action end over all ranks, no
  optimizer) and its gain over ``none``, next to the gain the LP plan predicted
  (baseline_makespan / makespan, from the run's own measured profile);
- the average actual freeze ratio over the steady window (mean over stages);
- validation loss at equal steps (the end of training, the same validation batches);
- training wall-clock time (sum of step times, evaluation excluded) until the validation loss
  first reaches the target: ``none``'s final validation loss + ``--target-margin`` (default
  0.05 nats) per schedule, linearly interpolated between evaluations;
- drop vs rescale gradient semantics for ``timely`` (``--grad-schedules``).

One torchrun launch per schedule trains every method side by side, step by step (step k of
every run before step k + 1 of any, order rotated each step): on a shared machine the
background load then hits every method alike. ``--sequential`` runs them one after another
through ``examples/train_llama.main`` instead. Phases: warm-up and ramp of ``--unit`` steps,
monitoring windows of ``--monitor-steps`` steps (short: the w_min window freezes everything).
Outputs under ``--out`` (default results/reproduce): results.json,
table.md, val_loss_vs_time.png, throughput.png, ratio_vs_step.png, logs/.

    python benchmarks/reproduce.py --quick     # CI: 1F1B, none vs timely, tiny model
    python benchmarks/reproduce.py             # the full table (~10-15 min on 2 shared cores)

Timings on a shared 2-core machine are noisy: read gains as indications, not measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZBV")
METHODS = ("none", "apf", "autofreeze", "timely", "timely+apf", "timely+autofreeze")
STAGES_PER_RANK = {"Interleaved1F1B": 2, "ZBV": 2}
TAG = "[reproduce]"

# unit: warm-up and ramp length (steps); monitor_steps: steps per monitoring window (w_max, w_min).
# The paper uses 100-step phases in runs of thousands of steps; here the monitoring windows
# are kept short because the w_min window freezes everything (no weight learns in it).
FULL = dict(
    dim=128, layers=4, heads=4, kv_heads=2, seq=64, batch=16, microbatches=4, steps=100,
    unit=10, monitor_steps=4,
)  # fmt: skip
QUICK = dict(
    dim=64, layers=4, heads=4, kv_heads=2, seq=32, batch=8, microbatches=4, steps=40,
    unit=4, monitor_steps=2,
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
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument(
        "--max-freeze", type=float, default=__import__("tfcompile").DEFAULT_MAX_FREEZE_RATIO
    )
    p.add_argument(
        "--prefix-freeze",
        action="store_true",
        help="timely freezes front to back on the token stage (truncated backward)",
    )
    p.add_argument(
        "--wmin-microbatches",
        type=int,
        default=0,
        help="measure w_min on this many all-frozen microbatches per step (0: whole steps)",
    )
    p.add_argument("--target-margin", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run methods one after another (default: interleaved step by step)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per schedule")
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None)
    # worker side (under torchrun)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--runs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--schedule", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_settings(args) -> dict:
    base = dict(QUICK if args.quick else FULL)
    for key in base:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    return base


def run_name(schedule: str, method: str, grad: str) -> str:
    return f"{schedule}__{method.replace('+', '-')}__{grad}"


# ----------------------------------------------------------------------------- worker
def example_argv(args, settings: dict, method: str, grad: str, warmup: bool, run_out) -> list:
    """Command line of examples/train_llama.py for one run."""
    per_rank = STAGES_PER_RANK.get(args.schedule, 1)
    return [
        "--schedule",
        args.schedule,
        "--stages",
        str(args.ranks * per_rank),
        "--microbatches",
        str(settings["microbatches"]),
        "--batch",
        str(settings["batch"]),
        "--seq",
        str(settings["seq"]),
        "--dim",
        str(settings["dim"]),
        "--layers",
        str(settings["layers"]),
        "--heads",
        str(settings["heads"]),
        "--kv-heads",
        str(settings["kv_heads"]),
        "--steps",
        str(min(10, settings["steps"]) if warmup else settings["steps"]),
        "--freeze",
        "none" if warmup else method,
        "--grad",
        grad,
        "--max-freeze",
        str(args.max_freeze),
        "--eval-every",
        str(args.eval_every),
        "--val-batches",
        str(args.val_batches),
        "--log-every",
        str(max(10, settings["steps"] // 4)),
        "--seed",
        str(args.seed),
        "--warmup",
        str(settings["unit"]),
        "--monitor",
        str(settings["monitor_steps"]),
        "--wmin-microbatches",
        str(args.wmin_microbatches),
        *(["--prefix-freeze"] if args.prefix_freeze else []),
        "--check-every",
        str(max(1, settings["unit"] // 2)),
        "--threads",
        "1",
        "--no-dumps",
        "--out",
        str(run_out),
    ]


def worker_sequential(args) -> None:
    """Under torchrun: train every (method, grad) of one schedule in turn; rank 0 writes JSON."""
    sys.path.insert(0, str(ROOT / "examples"))
    import train_llama  # noqa: PLC0415 - examples/ is not a package

    settings = model_settings(args)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    # a short discarded run first: the first training in a process pays for lazy
    # initialisation (allocator, thread pools, gloo buffers), which would bias the baseline
    specs = ["warmup:drop", *args.runs.split(",")]
    for spec in specs:
        method, grad = spec.split(":")
        name = run_name(args.schedule, method, grad)
        warmup = method == "warmup"
        argv = example_argv(args, settings, method, grad, warmup, out / "runs" / name)
        t0 = time.perf_counter()
        summary = train_llama.main(argv)
        if warmup:
            continue
        summary["run_seconds"] = time.perf_counter() - t0
        summary["name"] = name
        summary["settings"] = settings
        if rank == 0:
            path = out / "runs" / f"{name}.json"
            path.write_text(json.dumps(summary))
            print(
                f"{TAG} {name}: median step {1e3 * summary['median_step_s']:.1f} ms, "
                f"{summary['tokens_per_s']:.0f} tok/s, freeze {summary['mean_ratio']:.2f}, "
                f"val {summary['val_loss']:.4f} ({summary['run_seconds']:.0f} s)",
                flush=True,
            )


def worker_interleaved(args) -> None:
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

    sys.path.insert(0, str(ROOT / "examples"))
    import train_llama  # noqa: PLC0415 - examples/ is not a package

    from tfcompile.train.loop import TrainResult, train_step
    from tfcompile.train.steplog import StepLog

    settings = model_settings(args)
    out = Path(args.out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    logging.basicConfig(
        level=logging.INFO if rank == world - 1 else logging.WARNING, format="%(message)s"
    )
    corpus = train_llama._corpus()
    runs = []
    for spec in args.runs.split(","):
        method, grad = spec.split(":")
        name = run_name(args.schedule, method, grad)
        ex = train_llama.parse_args(
            example_argv(args, settings, method, grad, False, out / "runs" / name)
        )
        Path(ex.out).mkdir(parents=True, exist_ok=True)
        pipe, _, _ = train_llama.build_pipeline(ex, world)
        optimizer = torch.optim.AdamW(pipe.parameters(), lr=ex.lr, weight_decay=0.0)
        tokens = ex.batch * ex.seq
        runs.append(
            {
                "name": name,
                "args": ex,
                "pipe": pipe,
                "optimizer": optimizer,
                "base_lrs": [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups],
                "lr": train_llama.lr_schedule(ex),
                "gen": torch.Generator().manual_seed(ex.seed + 1),
                "result": TrainResult(steps=ex.steps, wall_seconds=0.0),
                "tokens": tokens,
                "log": StepLog(Path(ex.out) / f"steps_rank{pipe.rank}.csv", items_per_step=tokens),
            }
        )
    val_gen = torch.Generator().manual_seed(12345)
    val = [
        corpus.batch("val", settings["batch"], settings["seq"], val_gen)
        for _ in range(args.val_batches)
    ]
    steps = settings["steps"]
    speaker = rank == world - 1

    def evaluate(run, step):
        loss = stats.fmean(run["pipe"].evaluate(x, y) for x, y in val)
        result = run["result"]
        result.val.append((step, sum(result.step_seconds), loss))

    def one_step(run, step):
        batch = corpus.batch("train", settings["batch"], settings["seq"], run["gen"])
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
        if args.eval_every and (step + 1) % args.eval_every == 0 or step + 1 == steps:
            for run in runs:
                evaluate(run, step + 1)
        if speaker and (step % max(1, steps // 5) == 0 or step + 1 == steps):
            print(
                f"{TAG} {args.schedule} step {step}: "
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
        summary = train_llama.summarise(
            run["pipe"], run["result"], run["args"], 0, steps, run["tokens"]
        )
        summary["run_seconds"] = elapsed
        summary["name"] = run["name"]
        summary["settings"] = settings
        summary["mode"] = "interleaved"
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
def launch(args, schedule: str, runs: list[tuple[str, str]], log_path: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(args.ranks),
        str(Path(__file__).resolve()),
        "--worker",
        "--schedule",
        schedule,
        "--runs",
        ",".join(f"{m}:{g}" for m, g in runs),
        "--out",
        str(args.out),
        "--ranks",
        str(args.ranks),
        "--eval-every",
        str(args.eval_every),
        "--val-batches",
        str(args.val_batches),
        "--max-freeze",
        str(args.max_freeze),
        "--wmin-microbatches",
        str(args.wmin_microbatches),
        *(["--prefix-freeze"] if args.prefix_freeze else []),
        "--seed",
        str(args.seed),
    ]
    if args.quick:
        cmd.append("--quick")
    if args.sequential:
        cmd.append("--sequential")
    for key in FULL:
        value = getattr(args, key, None)
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + args.timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if line.startswith(TAG) or "error" in line.lower() or "plan predicts" in line:
                print(f"  {schedule}: {line.rstrip()}", flush=True)
            if time.monotonic() > deadline:
                proc.kill()
                print(f"  {schedule}: timed out after {args.timeout:.0f} s", flush=True)
                break
        return proc.wait()


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


def analyse(runs: list[dict], settings: dict, margin: float) -> dict:
    """Per-schedule metrics over the common steady window; gains relative to `none`."""
    # end of warm-up, both monitoring windows and the ramp: TimelyFreeze's steady state
    window_from = 2 * settings["unit"] + 2 * settings["monitor_steps"]
    rows = []
    by_schedule: dict[str, list[dict]] = {}
    for run in runs:
        by_schedule.setdefault(run["schedule"], []).append(run)
    targets = {}
    for schedule, group in by_schedule.items():
        base = next((r for r in group if r["policy"] == "none" and r["grad"] == "drop"), None)
        base_step = _median(base["step_seconds"][window_from:]) if base else float("nan")
        base_pipe = _median(base["pipe_step_seconds"][window_from:]) if base else float("nan")
        target = base["val_loss"] + margin if base and base["val_loss"] is not None else None
        targets[schedule] = target
        for run in group:
            step_s = _median(run["step_seconds"][window_from:])
            pipe_s = _median(run["pipe_step_seconds"][window_from:])
            ratios = run["ratios_per_step"][window_from:]
            mean_ratio = statistics.fmean(statistics.fmean(r) for r in ratios) if ratios else 0.0
            plan = run.get("plan") or {}
            ttt = time_to_target(run["val_curve"], target) if target is not None else None
            rows.append(
                {
                    "schedule": schedule,
                    "method": run["policy"],
                    "grad": run["grad"],
                    "median_step_ms": 1e3 * step_s,
                    "tokens_per_s": run["tokens_per_step"] / step_s,
                    "gain": base_step / step_s,
                    "pipe_step_ms": 1e3 * pipe_s,
                    "measured_pipe_gain": base_pipe / pipe_s,
                    "predicted_gain": plan.get("predicted_gain"),
                    "plan_stage_ratio": plan.get("stage_ratio"),
                    "mean_freeze_ratio": mean_ratio,
                    "stage_freeze_ratio": [
                        statistics.fmean(r[s] for r in ratios) if ratios else 0.0
                        for s in range(run["stages"])
                    ],
                    "val_loss": run["val_loss"],
                    "val_loss_delta": (
                        run["val_loss"] - base["val_loss"]
                        if base and run["val_loss"] is not None
                        else None
                    ),
                    "time_to_target_s": ttt,
                    "train_seconds": run["train_seconds"],
                    "run_seconds": run.get("run_seconds"),
                }
            )
    return {"window_from": window_from, "targets": targets, "rows": rows}


def _fmt(value, spec: str, none: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return format(value, spec)


def write_table(analysis: dict, settings: dict, path: Path, margin: float) -> str:
    lines = [
        "# TimelyFreeze reproduction (small scale, CPU, gloo)",
        "",
        f"Model: LLaMA-style byte LM, dim {settings['dim']}, {settings['layers']} layers, "
        f"seq {settings['seq']}, batch {settings['batch']} in {settings['microbatches']} "
        f"microbatches, {settings['steps']} steps; steady window: steps "
        f"{analysis['window_from']}-{settings['steps'] - 1}. Target validation loss per "
        f"schedule: `none`'s final validation loss + {margin} nats. Time = training seconds "
        "(evaluation excluded). Shared 2-core machine: timings are noisy.",
        "",
        "| schedule | method | grad | step ms | tok/s | gain | pipe ms | pipe gain | "
        "plan gain | freeze ratio | val loss | Δ val | time to target s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in analysis["rows"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["schedule"],
                    r["method"],
                    r["grad"],
                    _fmt(r["median_step_ms"], ".1f"),
                    _fmt(r["tokens_per_s"], ".0f"),
                    _fmt(r["gain"], ".3f"),
                    _fmt(r["pipe_step_ms"], ".1f"),
                    _fmt(r["measured_pipe_gain"], ".3f"),
                    _fmt(r["predicted_gain"], ".3f"),
                    _fmt(r["mean_freeze_ratio"], ".2f"),
                    _fmt(r["val_loss"], ".4f"),
                    _fmt(r["val_loss_delta"], "+.4f"),
                    _fmt(r["time_to_target_s"], ".1f", "not reached"),
                ]
            )
            + " |"
        )
    targets = ", ".join(f"{s}: {_fmt(t, '.4f')}" for s, t in analysis["targets"].items())
    lines += ["", f"Targets: {targets}.", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def write_plots(runs: list[dict], analysis: dict, out: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    schedules = list(dict.fromkeys(r["schedule"] for r in runs))
    paths = []

    fig = Figure(figsize=(5.0 * len(schedules), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, schedule in enumerate(schedules):
        ax = fig.add_subplot(1, len(schedules), i + 1)
        for run in runs:
            if run["schedule"] != schedule or not run["val_curve"]:
                continue
            _, seconds, losses = zip(*run["val_curve"])
            label = run["policy"] + ("" if run["grad"] == "drop" else f" ({run['grad']})")
            ax.plot(seconds, losses, marker=".", label=label)
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
    labels = list(dict.fromkeys((r["method"], r["grad"]) for r in analysis["rows"]))
    width = 0.8 / max(1, len(labels))
    for j, (method, grad) in enumerate(labels):
        xs, ys = [], []
        for i, schedule in enumerate(schedules):
            row = next(
                (
                    r
                    for r in analysis["rows"]
                    if r["schedule"] == schedule and r["method"] == method and r["grad"] == grad
                ),
                None,
            )
            if row is not None:
                xs.append(i + j * width)
                ys.append(row["tokens_per_s"])
        name = method if grad == "drop" else f"{method} ({grad})"
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(schedules))], schedules)
    ax.set_ylabel("tokens/s (steady window median)")
    ax.set_title("throughput")
    ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "throughput.png")
    fig.savefig(paths[-1])

    fig = Figure(figsize=(5.0 * len(schedules), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, schedule in enumerate(schedules):
        ax = fig.add_subplot(1, len(schedules), i + 1)
        for run in runs:
            if run["schedule"] != schedule or run["policy"] == "none":
                continue
            mean = [statistics.fmean(r) for r in run["ratios_per_step"]]
            label = run["policy"] + ("" if run["grad"] == "drop" else f" ({run['grad']})")
            ax.plot(range(len(mean)), mean, label=label)
        ax.set_title(schedule)
        ax.set_xlabel("step")
        ax.set_ylabel("actual freeze ratio (mean over stages)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / "ratio_vs_step.png")
    fig.savefig(paths[-1])
    return paths


def driver(args) -> dict:
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    settings = model_settings(args)
    if args.quick:
        schedules = ["1F1B"]
        methods = ["none", "timely"]
        grad_schedules: list[str] = []
    else:
        schedules = list(SCHEDULES)
        methods = list(METHODS)
        grad_schedules = ["1F1B"]
    if args.schedules:
        schedules = args.schedules.split(",")
    if args.methods:
        methods = args.methods.split(",")
    if args.grad_schedules is not None:
        grad_schedules = [s for s in args.grad_schedules.split(",") if s]
    print(
        f"{TAG} schedules {schedules}, methods {methods}, rescale on {grad_schedules}; model "
        f"{settings}; out {out}",
        flush=True,
    )
    started = time.perf_counter()
    failures = {}
    for schedule in schedules:
        runs = [(m, "drop") for m in methods]
        if schedule in grad_schedules and "timely" in methods:
            runs.append(("timely", "rescale"))
        t0 = time.perf_counter()
        print(f"{TAG} {schedule}: {len(runs)} runs on {args.ranks} ranks", flush=True)
        rc = launch(args, schedule, runs, out / "logs" / f"{schedule}.log")
        print(f"{TAG} {schedule}: done in {time.perf_counter() - t0:.0f} s (rc {rc})", flush=True)
        if rc != 0:
            failures[schedule] = f"exit status {rc}; see logs/{schedule}.log"
    runs_data = []
    for schedule in schedules:
        for method in methods:
            for grad in ("drop", "rescale"):
                path = out / "runs" / f"{run_name(schedule, method, grad)}.json"
                if path.exists() and path.stat().st_mtime >= started - 1:
                    runs_data.append(json.loads(path.read_text()))
    analysis = analyse(runs_data, settings, args.target_margin)
    table = write_table(analysis, settings, out / "table.md", args.target_margin)
    plots = write_plots(runs_data, analysis, out) if runs_data else []
    results = {
        "settings": settings,
        "quick": args.quick,
        "schedules": schedules,
        "methods": methods,
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
        (worker_sequential if args.sequential else worker_interleaved)(args)
        return 0
    results = driver(args)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
