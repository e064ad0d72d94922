"""A plain training loop over a compiled Pipeline, with progress output and a step log.

Used by the examples and the reproduction benchmark; a user with their own loop only needs
`pipe.step`, `optimizer.step` and `optimizer.zero_grad`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tfcompile.train.steplog import StepLog


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` inside, every submodule's own ``training`` flag restored after (a
    submodule the user keeps in eval mode, e.g. frozen BatchNorm, stays so). Pipeline.evaluate
    traces forward-only programs for the mode pattern it finds, once per pattern."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train s, loss)
    ratios: list[dict[int, float]] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    # (first action start, last action end) of each step on this rank, pipeline timer clock
    spans: list[tuple[float, float]] = field(default_factory=list)

    def median_step_seconds(self, last: int | None = None) -> float:
        values = self.step_seconds[-last:] if last else self.step_seconds
        return statistics.median(values) if values else float("nan")

    def time_to_loss(self, target: float) -> float | None:
        """Wall-clock seconds until the validation loss first reached `target`."""
        for _, wall, loss in self.val:
            if loss <= target:
                return wall
        return None


def train(
    pipe,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    *,
    items_per_step: float,
    item_name: str = "items",
    val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    eval_every: int = 0,
    log_every: int = 10,
    steplog: StepLog | None = None,
    lr_lambda: Callable[[int], float] | None = None,
    verbose: bool = True,
    start_step: int = 0,
    on_step_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train steps ``start_step .. steps - 1``; evaluate every `eval_every` steps and at the end.

    ``start_step`` resumes a run (after `tfcompile.train.checkpoint.load_checkpoint`): the learning
    rate schedule continues from there; base learning rates are kept in each param group's
    ``initial_lr`` (saved with the optimizer state). ``on_step_end(step)`` runs after each
    optimizer step (e.g. to save a checkpoint).
    """
    base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
    result = TrainResult(steps=steps, wall_seconds=0.0)
    start = time.perf_counter()
    # one printer: the last stage's rank (of replica 0 under data parallelism)
    replica0 = getattr(pipe, "dp_rank", 0) == 0
    speaker = verbose and (pipe.num_stages - 1) in pipe.local_stages and replica0

    def evaluate(step: int) -> None:
        if not val_batches:
            return
        with eval_mode(pipe.model):  # dropout off, running statistics (as nanoGPT's eval)
            loss = statistics.fmean(pipe.evaluate(x, y) for x, y in val_batches)
        result.val.append((step, sum(result.step_seconds), loss))  # training time only
        if speaker:
            print(f"step {step:5d} | val loss {loss:.4f}", flush=True)

    for step in range(start_step, steps):
        factor = lr_lambda(step) if lr_lambda is not None else None
        loss, phase, ratios = train_step(
            pipe, optimizer, next_batch(step), result, step,
            lr_factor=factor, base_lrs=base_lrs, steplog=steplog, items=items_per_step,
        )  # fmt: skip
        if speaker and (step % log_every == 0 or step == steps - 1):
            recent = result.step_seconds[-log_every:]
            rate = items_per_step / statistics.median(recent)
            shown = " ".join(f"s{s}={r:.2f}" for s, r in sorted(ratios.items()))
            print(
                f"step {step:5d} | loss {loss:.4f} | {rate:9.0f} {item_name}/s | "
                f"phase {phase}" + (f" | freeze {shown}" if shown else ""),
                flush=True,
            )
        if on_step_end is not None:
            on_step_end(step)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            evaluate(step + 1)
    evaluate(steps)
    result.wall_seconds = time.perf_counter() - start
    return result


def train_step(
    pipe,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    result: TrainResult,
    step: int,
    *,
    lr_factor: float | None = None,
    base_lrs: list[float] | None = None,
    steplog: StepLog | None = None,
    items: float | None = None,
) -> tuple[float | None, str, dict[int, float]]:
    """One optimizer step: set the LR, pipe.step, optimizer.step; record it in `result` (and
    `steplog`). Returns (loss or None off the last stage, phase, actual ratio per stage)."""
    if lr_factor is not None:
        for group, lr in zip(optimizer.param_groups, base_lrs or []):
            group["lr"] = lr * lr_factor
    inputs, targets = batch
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = pipe.step(inputs, targets)
    optimizer.step()
    seconds = time.perf_counter() - t0
    result.step_seconds.append(seconds)
    result.spans.append(_span(pipe))
    if loss is not None:
        result.losses.append(loss)
    freezer = pipe.freezer
    phase = freezer.phase if freezer is not None else "off"
    ratios = dict(freezer.actual_ratios) if freezer is not None else {}
    result.phases.append(phase)
    result.ratios.append(ratios)
    if steplog is not None:
        steplog.record(
            step,
            step_seconds=seconds,
            loss=loss,
            phase=phase,
            ratios=ratios or {s: 0.0 for s in pipe.local_stages},
            items=items,
        )
    return loss, phase, ratios


def _span(pipe) -> tuple[float, float]:
    parts = pipe.timer.last_step()
    if not parts:
        return (float("nan"), float("nan"))
    return (min(p.start for p in parts), max(p.end for p in parts))
