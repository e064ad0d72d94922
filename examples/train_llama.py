"""Train a LLaMA-style byte-level language model with tfcompile pipeline parallelism.

Data: the Python standard library's own .py files (held-out files for validation).
Runs on several processes or one:

    torchrun --nproc-per-node 2 examples/train_llama.py --steps 200 --freeze timely
    python examples/train_llama.py --ranks 2 --steps 50          # all stages in one process

Prints loss and tokens/s as it goes and writes, under --out: the step log (CSV) and its plots,
the measured-vs-predicted timeline (Chrome trace: open in https://ui.perfetto.dev), the
schedule DAG (DOT/SVG) and a Gantt picture of the planned step.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile.datasets import stdlib_corpus
from tfcompile.freeze.steplog import StepLog
from tfcompile.models.llama import Llama, LlamaConfig
from tfcompile.trainer import train


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
    p.add_argument("--max-freeze", type=float, default=0.9)
    p.add_argument("--warmup", type=int, default=None, help="freeze phase unit (steps)")
    p.add_argument("--check-every", type=int, default=None)
    p.add_argument("--grad", default="drop", choices=["drop", "rescale"])
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--val-batches", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/llama")
    return p.parse_args(argv)


def freeze_config(args) -> tfcompile.FreezeConfig | None:
    if args.freeze == "none":
        return None
    unit = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    return tfcompile.FreezeConfig(
        policy=args.freeze,
        max_freeze_ratio=args.max_freeze,
        warmup_steps=unit,
        monitor_steps=unit,
        ramp_steps=unit,
        check_every=args.check_every or max(1, unit // 2),
        grad=args.grad,
        seed=args.seed,
        total_steps=args.steps,
    )


def write_dumps(pipe, out: Path) -> None:
    """Measured and predicted timelines, the DAG and the Gantt picture of the plan in force."""
    from tfcompile.freeze.profile import planner_profile
    from tfcompile.schedule.dumps import dag_to_dot, gantt, render_dot
    from tfcompile.schedule.simulate import simulate

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


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    last_rank = int(os.environ.get("RANK", "0")) == world - 1  # prints the controller's news
    logging.basicConfig(level=logging.INFO if last_rank else logging.WARNING, format="%(message)s")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = stdlib_corpus()
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(
        vocab_size=256,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        max_seq_len=args.seq,
    )
    model = Llama(cfg)
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
            f"{pipe.schedule.num_ranks} ranks, {args.microbatches} microbatches of {mb}"
        )
    gen = torch.Generator().manual_seed(args.seed + 1)
    val_gen = torch.Generator().manual_seed(12345)
    val = [corpus.batch("val", args.batch, args.seq, val_gen) for _ in range(args.val_batches)]
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=args.lr, weight_decay=0.0)
    warm = max(1, args.steps // 10)
    lr_lambda = lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    tokens = args.batch * args.seq
    with StepLog(out / f"steps_rank{pipe.rank}.csv", items_per_step=tokens) as steplog:
        result = train(
            pipe,
            optimizer,
            lambda step: corpus.batch("train", args.batch, args.seq, gen),
            args.steps,
            items_per_step=tokens,
            item_name="tok",
            val_batches=val,
            eval_every=args.eval_every,
            log_every=args.log_every,
            steplog=steplog,
            lr_lambda=lr_lambda,
        )
        if speaker:
            steplog.plot(out)
    write_dumps(pipe, out)
    tail = max(1, args.steps // 4)
    summary = {
        "median_step_s": result.median_step_seconds(tail),
        "tokens_per_s": tokens / result.median_step_seconds(tail),
        "val_loss": result.val[-1][2] if result.val else None,
        "train_seconds": sum(result.step_seconds),
    }
    if speaker:
        print(
            f"done: {args.steps} steps, median step {1e3 * summary['median_step_s']:.1f} ms "
            f"(last {tail} steps), {summary['tokens_per_s']:.0f} tok/s, val loss "
            f"{summary['val_loss']:.4f}; dumps in {out}/"
        )
    pipe.close()
    return summary


if __name__ == "__main__":
    main()
