"""The TimelyFreeze comparison at small scale, on CPU processes (gloo).

For each schedule (GPipe, 1F1B, Interleaved1F1B, ZBV) and each method (none, apf, autofreeze,
timely, timely+apf, timely+autofreeze) it trains the LLaMA-style byte-level LM of
``examples/train_llama.py`` (``tfcompile.train.run``) on 2 processes with the same seed, data
order and validation batches, and reports:

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
through ``tfcompile.train.run.run`` instead. Phases: warm-up and ramp of ``--unit`` steps,
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
import sys
import time
from dataclasses import replace
from pathlib import Path

from tfcompile.schedules import stages_per_rank
from tfcompile.train.launch import TIMED_OUT, torchrun
from tfcompile.train.run import RunConfig
from tfcompile.train.run import run as train_run

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZBV")
METHODS = ("none", "apf", "autofreeze", "timely", "timely+apf", "timely+autofreeze")
TAG = "[reproduce]"

# What every run shares: 2 processes, one thread each, evaluation every 5 steps, no dumps.
# warmup: the phase unit (warm-up and ramp length, steps); monitor: steps per monitoring
# window (w_max, w_min). The paper uses 100-step phases in runs of thousands of steps; here
# the monitoring windows are kept short because the w_min window freezes everything (no
# weight learns in it).
BASE = RunConfig(ranks=2, eval_every=5, val_batches=2, threads=1, no_dumps=True)
FULL = replace(
    BASE, dim=128, layers=4, heads=4, kv_heads=2, seq=64, batch=16, microbatches=4, steps=100,
    warmup=10, monitor=4,
)  # fmt: skip
QUICK = replace(
    BASE, dim=64, layers=4, heads=4, kv_heads=2, seq=32, batch=8, microbatches=4, steps=40,
    warmup=4, monitor=2,
)  # fmt: skip
# the RunConfig fields this benchmark exposes as flags (the rest are per run)
RUN_FLAGS = (
    "dim", "layers", "heads", "kv_heads", "seq", "batch", "microbatches", "steps",
    "eval_every", "val_batches", "ranks", "max_freeze", "prefix_freeze", "wmin_microbatches",
    "seed",
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
    p.add_argument("--out", default=str(ROOT / "results" / "reproduce"))
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run methods one after another (default: interleaved step by step)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per schedule")
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
    )  # fmt: skip


def run_name(schedule: str, method: str, grad: str) -> str:
    return f"{schedule}__{method.replace('+', '-')}__{grad}"


def run_config(base: RunConfig, schedule: str, method: str, grad: str, out: Path) -> RunConfig:
    """One run: ``method`` with ``grad`` on ``schedule``, its step log under ``out``."""
    return replace(
        base,
        schedule=schedule,
        stages=base.ranks * stages_per_rank(schedule),
        freeze=method,
        grad=grad,
        log_every=max(10, base.steps // 4),
        out=str(out),
    )


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
    train_run(replace(warmup, out=str(out / "runs" / run_name(job["schedule"], "warmup", "drop"))))
    for name, config in runs:
        t0 = time.perf_counter()
        summary = train_run(config)
        summary["run_seconds"] = time.perf_counter() - t0
        summary["name"] = name
        summary["settings"] = job["settings"]
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
    data = corpus()
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
    """One torchrun launch trains ``runs`` [(method, grad)] on ``schedule``; output to log."""
    base = base_config(args)
    out = Path(args.out)
    job = {
        "schedule": schedule,
        "out": str(out),
        "settings": settings_of(base),
        "sequential": args.sequential,
        "runs": [
            {
                "name": run_name(schedule, method, grad),
                "config": run_config(
                    base, schedule, method, grad, out / "runs" / run_name(schedule, method, grad)
                ).to_dict(),
            }
            for method, grad in runs
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
    base = base_config(args)
    settings = settings_of(base)
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
        print(f"{TAG} {schedule}: {len(runs)} runs on {base.ranks} ranks", flush=True)
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
        job, runs = load_runs(args.worker)
        (worker_sequential if job["sequential"] else worker_interleaved)(job, runs)
        return 0
    results = driver(args)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
