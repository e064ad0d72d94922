"""Run under torchrun by tests/runtime/test_runtime_dist.py: train with tfcompile, compare to eager.

Every rank also trains an eager copy of the model in-process (CPU is deterministic), so each
rank checks its own parameters. Each rank writes a JSON verdict into the output folder.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import sys

import torch
from torch import nn

import tfcompile
from tfcompile.models.llama import Llama, LlamaConfig
from tfcompile.runtime.recv_buffers import buffers_per_boundary
from tfcompile.schedules import stages_per_rank


def make_model(seed: int, tied: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        dim=32,
        n_layers=6,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=16,
        tie_weights=tied,
    )
    return Llama(cfg)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def eager_step(model, x, y, microbatches, frozen_params_of_mb):
    """Eager accumulation of mean loss; parameters frozen in a microbatch get none of it."""
    named = dict(model.named_parameters())
    total = 0.0
    for m, (xm, ym) in enumerate(zip(x.chunk(microbatches), y.chunk(microbatches))):
        loss = loss_fn(model(xm), ym) / microbatches
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        for (name, p), g in zip(named.items(), grads):
            if g is None or name in frozen_params_of_mb.get(m, set()):
                continue
            p.grad = g.clone() if p.grad is None else p.grad + g
        total += loss.item()
    return total


def run(
    schedule: str,
    microbatches: int,
    steps: int,
    with_frozen: bool,
    fail_rank: int | None,
    tied: bool = False,
    mismatch: bool = False,
    backend: str = "eager",
):
    world = int(os.environ["WORLD_SIZE"])
    stages = world * stages_per_rank(schedule)
    model = make_model(0, tied)
    reference = copy.deepcopy(model)
    if mismatch and int(os.environ["RANK"]) == 1:
        microbatches *= 2  # a misconfigured rank: every rank must refuse to start
    batch = 4 * microbatches
    example = torch.zeros(4, 12, dtype=torch.long)
    pipe = tfcompile.compile(
        model,
        schedule=schedule,
        stages=stages,
        microbatches=microbatches,
        example_inputs=(example,),
        loss_fn=loss_fn,
        example_target=example,
        backend=backend,
    )
    frozen = {}
    frozen_params_of_mb: dict[int, set[str]] = {}
    if with_frozen:  # freeze the first group of every stage in odd microbatches
        for stage in range(stages):
            names = [spec for spec in pipe.specs[stage].groups_by_block()]
            first = names[0]
            for m in range(1, microbatches, 2):
                frozen[(stage, m)] = {first}
                params = [
                    pipe.specs[stage].param_names[n]
                    for n in pipe.specs[stage].groups_by_block()[first]
                ]
                frozen_params_of_mb.setdefault(m, set()).update(params)
    opt = torch.optim.SGD(pipe.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        x = torch.randint(0, 64, (batch, 13), generator=gen)
        inputs, targets = x[:, :-1], x[:, 1:]
        if fail_rank is not None and step == 1 and pipe.rank == fail_rank:
            stage = pipe.local_stages[0]

            def broken(*args, **kwargs):
                raise RuntimeError(f"injected failure on rank {fail_rank}")

            pipe.stage_programs[stage].backward_input = broken
        opt.zero_grad(set_to_none=True)
        loss = pipe.step(inputs, targets, frozen=frozen)
        opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_loss = eager_step(reference, inputs, targets, microbatches, frozen_params_of_mb)
        ref_opt.step()
        losses.append((loss, ref_loss))
    ref_params = dict(reference.named_parameters())
    worst = 0.0
    for name, p in pipe.named_parameters():
        r = ref_params[name]
        worst = max(worst, ((p - r).abs().max() / r.abs().max().clamp_min(1e-12)).item())
    loss_err = max((abs(a - b) / abs(b) for a, b in losses if a is not None), default=0.0)
    stats = pipe.memory_stats()
    transport = pipe.transport
    allocated: dict[str, int] = {}
    for kind, src, _slot in transport.pool:
        allocated[f"{kind},{src}"] = allocated.get(f"{kind},{src}", 0) + 1
    bound = {f"{k},{s}": n for (k, s), n in buffers_per_boundary(transport.slots).items()}
    pipe.close()
    return {
        "recv_buffers": allocated,
        "recv_bound": bound,
        "memory_stats": stats,
        "param_rel_err": worst,
        "loss_rel_err": loss_err,
        "losses": losses,
        "params": len(list(pipe.parameters())),
        "stages": pipe.local_stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", default="GPipe,1F1B,Interleaved1F1B,ZBH1,ZBV")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--frozen", action="store_true")
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--tied", action="store_true", help="tie embedding and LM head")
    parser.add_argument("--mismatch", action="store_true", help="rank 1 differs in config")
    parser.add_argument("--backend", default="eager", help="eager or inductor")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # never hang a test run
    rank = int(os.environ["RANK"])
    results = {}
    try:
        for schedule in args.schedules.split(","):
            results[schedule] = run(
                schedule,
                args.microbatches,
                args.steps,
                args.frozen,
                args.fail_rank,
                args.tied,
                args.mismatch,
                args.backend,
            )
    except tfcompile.TFCompileError as exc:
        print(f"rank {rank} raised {type(exc).__name__}: {exc}", flush=True)
        sys.exit(3)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
