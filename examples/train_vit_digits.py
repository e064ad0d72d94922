"""Train a small ViT (or ConvNeXt) on scikit-learn's bundled digits with tfcompile pipelining.

    torchrun --nproc-per-node 2 examples/train_vit_digits.py --steps 300 --freeze timely
    python examples/train_vit_digits.py --model convnext --ranks 2 --steps 100

Prints loss and samples/s as it goes, validation accuracy at the end, and writes the step log
and its plots under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile.datasets import digits
from tfcompile.freeze.config import AUTOFREEZE_EVERY
from tfcompile.models.convnext import ConvNeXt
from tfcompile.models.vit import ViT
from tfcompile.train.loop import train
from tfcompile.train.run import RunConfig
from tfcompile.train.steplog import StepLog

# the flags this example honours, as RunConfig fields with this example's defaults
RUN_FLAGS = (
    "schedule", "ranks", "stages", "microbatches", "batch", "dim", "steps", "lr", "freeze",
    "warmup", "log_every", "seed", "out",
)  # fmt: skip
DEFAULTS = RunConfig(batch=64, dim=64, steps=200, lr=2e-3, log_every=20, out="out/digits")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit", choices=["vit", "convnext"])
    p.add_argument("--depth", type=int, default=4, help="model depth (blocks)")
    RunConfig.add_arguments(p, defaults=DEFAULTS, only=RUN_FLAGS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    ns = parse_args(argv)
    args = RunConfig.from_args(ns, base=DEFAULTS, only=RUN_FLAGS)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    last_rank = int(os.environ.get("RANK", "0")) == world - 1
    logging.basicConfig(level=logging.INFO if last_rank else logging.WARNING, format="%(message)s")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = digits(seed=args.seed)
    torch.manual_seed(args.seed)
    if ns.model == "vit":
        model = ViT(dim=args.dim, depth=ns.depth)
    else:
        model = ConvNeXt(dim=args.dim, depth=ns.depth)
    mb = args.batch // args.microbatches
    freeze = args.freeze_config()
    if freeze is not None:  # this example keeps AutoFreeze's own evaluation interval
        freeze = dataclasses.replace(freeze, autofreeze_every=AUTOFREEZE_EVERY)
    pipe = tfcompile.compile(
        model,
        schedule=args.schedule,
        stages=args.stages,
        microbatches=args.microbatches,
        example_inputs=(data.train_x[:mb],),
        loss_fn=nn.functional.cross_entropy,
        example_target=data.train_y[:mb],
        freeze=freeze,
        ranks=args.ranks if world == 1 else None,
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    n_val = (len(data.val_y) // args.batch) * args.batch
    val = [
        (data.val_x[i : i + args.batch], data.val_y[i : i + args.batch])
        for i in range(0, n_val, args.batch)
    ]
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=args.lr)
    with StepLog(out / f"steps_rank{pipe.rank}.csv", items_per_step=args.batch) as steplog:
        result = train(
            pipe,
            optimizer,
            lambda step: data.batch(args.batch, gen),
            args.steps,
            items_per_step=args.batch,
            item_name="samples",
            val_batches=val,
            log_every=args.log_every,
            steplog=steplog,
        )
    # accuracy with the trained stages: gather the logits on the last stage's rank
    accuracy = None
    if pipe.num_stages - 1 in pipe.local_stages and world == 1:
        with torch.no_grad():
            accuracy = (model(data.val_x).argmax(-1) == data.val_y).float().mean().item()
    summary = {
        "val_loss": result.val[-1][2],
        "accuracy": accuracy,
        "samples_per_s": args.batch / result.median_step_seconds(max(1, args.steps // 4)),
    }
    if last_rank:
        acc = f", val accuracy {accuracy:.3f}" if accuracy is not None else ""
        print(
            f"done: {ns.model}, val loss {summary['val_loss']:.4f}{acc}, "
            f"{summary['samples_per_s']:.0f} samples/s"
        )
    pipe.close()
    return summary


if __name__ == "__main__":
    main()
