"""Train a LLaMA-style byte-level language model with tfcompile pipeline parallelism.

Data: the Python standard library's own .py files (held-out files for validation).
Runs on several processes or one:

    torchrun --nproc-per-node 2 examples/train_llama.py --steps 200 --freeze timely
    python examples/train_llama.py --ranks 2 --steps 50          # all stages in one process
    ... --save ckpt --stop-at 30, then ... --resume ckpt          # checkpoint and resume
    ... --save 'ckpt/step{step}' --save-every 50                  # periodic checkpoints

Prints loss and tokens/s as it goes and writes, under --out: the step log (CSV) and its plots,
the measured-vs-predicted timeline (Chrome trace: open in https://ui.perfetto.dev), the
schedule DAG (DOT/SVG) and a Gantt picture of the planned step.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import statistics
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile.datasets import stdlib_corpus
from tfcompile.models.llama import byte_lm
from tfcompile.train.checkpoint import load_checkpoint, save_checkpoint
from tfcompile.train.loop import train
from tfcompile.train.steplog import StepLog


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schedule", default="1F1B")
    p.add_argument("--ranks", type=int, default=None, help="single-process: pipeline ranks")
    p.add_argument("--stages", type=int, default=None)
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--freeze",
        default="none",
        help="none, timely, apf, autofreeze, freezeout, timely+apf, timely+autofreeze",
    )
    p.add_argument("--max-freeze", type=float, default=tfcompile.DEFAULT_MAX_FREEZE_RATIO)
    p.add_argument(
        "--prefix-freeze",
        action="store_true",
        help="timely freezes front to back on the token stage (its backward then truncates)",
    )
    p.add_argument(
        "--wmin-microbatches",
        type=int,
        default=0,
        help="freeze everything in only this many microbatches per step while measuring w_min "
        "(0: all microbatches, as in the paper)",
    )
    p.add_argument("--warmup", type=int, default=None, help="freeze phase unit (steps)")
    p.add_argument(
        "--monitor", type=int, default=None, help="steps per monitoring window (default: unit)"
    )
    p.add_argument("--check-every", type=int, default=None)
    p.add_argument("--grad", default="drop", choices=["drop", "rescale"])
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/llama")
    p.add_argument("--no-dumps", action="store_true", help="skip the trace/DAG/Gantt dumps")
    p.add_argument("--no-plots", action="store_true", help="skip the step-log plots")
    p.add_argument("--tensorboard", default=None, help="also log to this TensorBoard dir")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument(
        "--save",
        default=None,
        help="checkpoint path: a directory or a file name with {rank}; {step} is replaced "
        "by the number of steps done",
    )
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop after this step (simulates a crash)"
    )
    return p.parse_args(argv)


def freeze_config(args) -> tfcompile.FreezeConfig | None:
    if args.freeze == "none":
        return None
    unit = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    return tfcompile.FreezeConfig(
        policy=args.freeze,
        max_freeze_ratio=args.max_freeze,
        warmup_steps=unit,
        monitor_steps=args.monitor or unit,
        ramp_steps=unit,
        check_every=args.check_every or max(1, unit // 2),
        grad=args.grad,
        seed=args.seed,
        total_steps=args.steps,
        autofreeze_every=unit,
        wmin_microbatches=args.wmin_microbatches,
        prefix_on_truncating_stages=args.prefix_freeze,
    )


def write_dumps(pipe, out: Path) -> None:
    """Measured and predicted timelines, the DAG and the Gantt picture of the plan in force."""
    from tfcompile.freeze.time_model import planner_profile
    from tfcompile.schedules.export import dag_to_dot, gantt, render_dot
    from tfcompile.schedules.simulate import simulate

    pipe.write_trace(out / "timeline_measured.json")
    freezer = pipe.freezer
    if freezer is not None and freezer.plan is not None:
        profile = planner_profile(freezer.profiles["wmax"], freezer.profiles["wmin"])
        ratios = dict(freezer.plan.ratios)
    else:
        profile, ratios = pipe.measured_profile(), None
    if pipe.rank != 0:
        return
    planned = simulate(pipe.schedule, profile, ratios)
    baseline = simulate(pipe.schedule, profile)
    dot = dag_to_dot(planned, title=f"{pipe.schedule.name}: planned step")
    (out / "dag.dot").write_text(dot)
    render_dot(dot, out / "dag.svg")
    gantt(
        planned,
        out / "timeline.svg",
        title=f"{pipe.schedule.name}: planned step "
        f"{planned.makespan:.1f} ms (unfrozen {baseline.makespan:.1f} ms)",
        baseline=baseline,
    )
    pipe.schedule.to_csv(out / "schedule.csv")


def build_pipeline(args, world: int):
    """The model (seeded with --seed) compiled for this rank; returns (pipe, model, config)."""
    model = byte_lm(args.dim, args.layers, args.heads, args.kv_heads, args.seq, args.seed)
    cfg = model.cfg
    mb = args.batch // args.microbatches
    example = torch.zeros(mb, args.seq, dtype=torch.long)
    pipe = tfcompile.compile(
        model,
        schedule=args.schedule,
        stages=args.stages,
        microbatches=args.microbatches,
        example_inputs=(example,),
        loss_fn=lm_loss,
        example_target=example,
        freeze=freeze_config(args),
        ranks=args.ranks if world == 1 else None,
    )
    return pipe, model, cfg


def lr_schedule(args):
    """Linear warm-up over the first tenth, cosine decay to the end."""
    warm = max(1, args.steps // 10)
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / args.steps))


@functools.lru_cache(maxsize=1)
def _corpus():
    return stdlib_corpus()  # cached: the benchmark runs several trainings in one process


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    last_rank = int(os.environ.get("RANK", "0")) == world - 1  # prints the controller's news
    logging.basicConfig(level=logging.INFO if last_rank else logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = _corpus()
    pipe, model, cfg = build_pipeline(args, world)
    speaker = pipe.num_stages - 1 in pipe.local_stages
    if speaker:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"LLaMA-style LM: {n_params / 1e6:.2f}M parameters, {cfg.n_layers} blocks; corpus "
            f"{len(corpus.train) / 1e6:.1f} MB train ({corpus.train_files} files), "
            f"{len(corpus.val) / 1e6:.2f} MB val ({corpus.val_files} held-out files)"
        )
        print(
            f"schedule {pipe.schedule.name}: {pipe.num_stages} stages on "
            f"{pipe.schedule.num_ranks} ranks, {args.microbatches} microbatches of "
            f"{args.batch // args.microbatches}"
        )
    gen = torch.Generator().manual_seed(args.seed + 1)
    val_gen = torch.Generator().manual_seed(12345)
    val = [corpus.batch("val", args.batch, args.seq, val_gen) for _ in range(args.val_batches)]
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=args.lr, weight_decay=0.0)
    start = 0
    if args.resume:
        load_checkpoint(args.resume, pipe, optimizer, extra={"data": gen})
        start = pipe.step_index
        if speaker:
            print(f"resumed from {args.resume} at step {start}")
    lr_lambda = lr_schedule(args)
    tokens = args.batch * args.seq
    stop = args.steps if args.stop_at is None else min(args.steps, args.stop_at)

    def on_step_end(step: int) -> None:
        done = step + 1
        if args.save and (done == stop or (args.save_every and done % args.save_every == 0)):
            path = args.save.replace("{step}", str(done))
            save_checkpoint(path, pipe, optimizer, extra={"data": gen})

    log_name = f"steps_rank{pipe.rank}" + (f"_from{start}" if start else "") + ".csv"
    with StepLog(
        out / log_name, items_per_step=tokens, tensorboard_dir=args.tensorboard
    ) as steplog:
        result = train(
            pipe,
            optimizer,
            lambda step: corpus.batch("train", args.batch, args.seq, gen),
            stop,
            items_per_step=tokens,
            item_name="tok",
            val_batches=val,
            eval_every=args.eval_every,
            log_every=args.log_every,
            steplog=steplog,
            lr_lambda=lr_lambda,
            start_step=start,
            on_step_end=on_step_end,
        )
        if speaker and not args.no_plots:
            steplog.plot(out)
    if not args.no_dumps:
        write_dumps(pipe, out)
    summary = summarise(pipe, result, args, start, stop, tokens)
    if speaker:
        print(
            f"done: steps {start}-{stop - 1}, median step {1e3 * summary['median_step_s']:.1f} "
            f"ms (last {summary['tail_steps']} steps), {summary['tokens_per_s']:.0f} tok/s, "
            f"val loss {summary['val_loss']:.4f}; out: {out}/"
        )
    pipe.close()
    return summary


def summarise(pipe, result, args, start: int, stop: int, tokens: int) -> dict:
    """What a run reports (the same on every rank: per-stage values are gathered).

    ``steady_from``: the first step of the freezing steady state (a quarter from the end
    without a planned policy); medians and mean ratios are taken over steps from there.
    """
    freezer = pipe.freezer
    cfg = freezer.config if freezer is not None else None
    if cfg is not None and cfg.uses_plan:
        steady_from = cfg.planning_steps + cfg.ramp_steps
    else:
        steady_from = stop - max(1, (stop - start) // 4)
    steady_from = min(max(steady_from, start), stop - 1)
    offset = steady_from - start
    steady = result.step_seconds[offset:]
    tail = len(steady)
    local_ratios = {
        s: statistics.fmean(r.get(s, 0.0) for r in result.ratios[offset:]) if tail else 0.0
        for s in pipe.local_stages
    }
    local_all = {
        s: statistics.fmean(r.get(s, 0.0) for r in result.ratios) if result.ratios else 0.0
        for s in pipe.local_stages
    }
    gathered = pipe.all_gather_object((local_ratios, local_all, result.spans, result.ratios))
    steady_ratio = {s: v for part in gathered for s, v in part[0].items()}
    run_ratio = {s: v for part in gathered for s, v in part[1].items()}
    # pipeline step time: first action start to last action end over all ranks (no optimizer)
    pipe_seconds = [
        max(spans[i][1] for spans in (part[2] for part in gathered))
        - min(spans[i][0] for spans in (part[2] for part in gathered))
        for i in range(len(result.spans))
    ]
    plan = None
    if freezer is not None and freezer.plan is not None:
        p = freezer.plan
        plan = {
            "makespan_ms": float(p.makespan),
            "baseline_makespan_ms": float(p.baseline_makespan),
            "predicted_gain": float(p.baseline_makespan) / float(p.makespan)
            if float(p.makespan) > 0
            else None,
            "stage_ratio": freezer._mean_plan_ratios(),
            "replans": freezer.replans,
        }
    median = statistics.median(steady) if steady else float("nan")
    return {
        "schedule": pipe.schedule.name,
        "stages": pipe.num_stages,
        "ranks": pipe.schedule.num_ranks,
        "policy": args.freeze,
        "grad": args.grad,
        "steps": stop,
        "start_step": start,
        "steady_from": steady_from,
        "tail_steps": tail,
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "tokens_per_step": tokens,
        "val_loss": result.val[-1][2] if result.val else None,
        "val_curve": [list(v) for v in result.val],  # (step, training seconds, loss)
        "train_seconds": sum(result.step_seconds),
        "wall_seconds": result.wall_seconds,
        "step_seconds": list(result.step_seconds),
        "pipe_step_seconds": pipe_seconds,
        "median_pipe_step_s": statistics.median(pipe_seconds[offset:]) if tail else None,
        "losses": list(result.losses),
        "phases": list(result.phases),
        "steady_ratio": [steady_ratio[s] for s in sorted(steady_ratio)],
        "mean_ratio": statistics.fmean(steady_ratio.values()) if steady_ratio else 0.0,
        "run_ratio": [run_ratio[s] for s in sorted(run_ratio)],
        "plan": plan,
        # actual freeze ratio per step, one value per stage (all ranks)
        "ratios_per_step": [
            [
                next((part[3][i][s] for part in gathered if s in part[3][i]), 0.0)
                for s in range(pipe.num_stages)
            ]
            for i in range(len(result.ratios))
        ],
    }


if __name__ == "__main__":
    main()
