"""Model -> pipeline stage modules.

A model is pipelined as a sequence of blocks whose composition is the model's forward. The
sequence comes from, in order of preference:

1. `model.pipeline_blocks()` -> list of (qualified name, module) (our reference models define it);
2. an `nn.Sequential` model: its children;
3. the model's direct children in registration order, a ModuleList/Sequential child expanded
   into its elements. This is only right when forward() is exactly that composition, so it is
   checked numerically on the example input and refused with a clear error otherwise.

Stages are cut at `split_points` (qualified names of the blocks where a new stage begins) or
balanced automatically by forward FLOPs (measured with torch's FlopCounterMode). Stage modules
hold the original block modules (no copies), so parameters stay the user's Parameter objects
and keep their original names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tfcompile.errors import RuntimeConfigError
from tfcompile.groups import groups_by_block


class StageBlocks(nn.Sequential):
    """A stage module: its blocks composed exactly as the composition check composes them
    (:func:`_run_blocks`: a tuple output is passed on as separate arguments of the next block).
    Children and parameter names are nn.Sequential's ("0.weight", ...)."""

    def forward(self, *values):
        values = _run_blocks(list(self), values)
        return values[0] if len(values) == 1 else values


def as_stage_blocks(module: nn.Module) -> nn.Module:
    """A plain nn.Sequential viewed as :class:`StageBlocks` (same child modules, so the same
    parameter objects and names); any other module unchanged."""
    if type(module) is nn.Sequential:
        return StageBlocks(OrderedDict(module._modules))
    return module


@dataclass
class StageSpec:
    """One pipeline stage: its blocks and how its parameter names map to the model's."""

    index: int
    block_names: list[str]
    module: StageBlocks
    param_names: dict[str, str] = field(default_factory=dict)  # stage name -> model name

    def groups_by_block(self) -> dict[str, list[str]]:
        """One freezing group per block that owns parameters, named as in the model (the rule
        lives in :func:`tfcompile.groups.groups_by_block`)."""
        return groups_by_block(self.module, self.block_names)


def _expand(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(module, (nn.ModuleList, nn.Sequential)):
        return [(f"{prefix}.{name}", child) for name, child in module.named_children()]
    return [(prefix, module)]


def discover_blocks(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], bool]:
    """The model's block sequence, and whether it must be checked against model.forward."""
    if hasattr(model, "pipeline_blocks"):
        return list(model.pipeline_blocks()), False
    if isinstance(model, nn.Sequential):
        # every position, also a module repeated in it (named_children drops repeats, which
        # silently removed the second use of a shared block from the pipeline)
        return [(n, m) for n, m in model._modules.items() if m is not None], False
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        blocks.extend(_expand(name, child))
    return blocks, True


def _run_blocks(blocks: Sequence[nn.Module], inputs: tuple) -> tuple:
    values = inputs
    for block in blocks:
        out = block(*values)
        values = out if isinstance(out, tuple) else (out,)
    return values


def _check_composition(model: nn.Module, blocks, example_inputs: tuple) -> None:
    with torch.no_grad():
        expected = model(*example_inputs)
        got = _run_blocks([m for _, m in blocks], example_inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    same = len(expected) == len(got) and all(
        isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b)
        for a, b in zip(expected, got)
    )
    if not same:
        names = ", ".join(n for n, _ in blocks)
        raise RuntimeConfigError(
            f"cannot split {type(model).__name__} into pipeline stages: its forward() is not the "
            f"composition of its children in order ({names}). Give the model a "
            "`pipeline_blocks()` method returning [(name, module), ...] whose composition is the "
            "forward, or pass an nn.Sequential."
        )


def block_flops(blocks, example_inputs: tuple) -> list[int]:
    """Forward FLOPs of each block on one microbatch (for balancing stages)."""
    flops = []
    values = example_inputs
    with torch.no_grad():
        for _, block in blocks:
            counter = FlopCounterMode(display=False)
            with counter:
                out = block(*values)
            flops.append(int(counter.get_total_flops()))
            values = out if isinstance(out, tuple) else (out,)
    return flops


def balanced_cuts(costs: Sequence[float], parts: int) -> list[int]:
    """Start indices of `parts` contiguous non-empty ranges minimising the largest range cost.

    Exact dynamic programme, O(parts * n^2): n is a block count, so this is instant. Ties go
    to the earliest cut so the result is deterministic on every rank.
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise RuntimeConfigError(
            f"cannot cut {n} blocks into {parts} stages: use between 1 and {n} stages"
        )
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[k][i]: minimal max-cost of cutting the first i blocks into k parts
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    choice = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n - (parts - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i] - 1e-12:
                    best[k][i] = value
                    choice[k][i] = j
    cuts = []
    i = n
    for k in range(parts, 0, -1):
        j = choice[k][i]
        cuts.append(j)
        i = j
    return sorted(cuts)


def split_model(
    model: nn.Module,
    num_stages: int | None,
    example_inputs: tuple,
    split_points: Sequence[str] | None = None,
    blocks: Sequence[tuple[str, nn.Module]] | None = None,
) -> list[StageSpec]:
    """Cut `model` into stage modules, by split points or balanced by FLOPs. `blocks` (an
    adapter's, already checked against the model's forward) replaces discover_blocks."""
    if blocks is not None:
        blocks, must_check = list(blocks), False
    else:
        blocks, must_check = discover_blocks(model)
    if not blocks:
        raise RuntimeConfigError(f"{type(model).__name__} has no child modules to pipeline")
    if must_check:
        _check_composition(model, blocks, example_inputs)
    names = [n for n, _ in blocks]
    if split_points:
        unknown = [p for p in split_points if p not in names]
        if unknown:
            raise RuntimeConfigError(
                f"split point(s) {unknown} are not blocks of the model; blocks are: {names}"
            )
        cuts = sorted({0, *(names.index(p) for p in split_points)})
        if num_stages is not None and len(cuts) != num_stages:
            raise RuntimeConfigError(
                f"{len(split_points)} split points give {len(cuts)} stages, but stages="
                f"{num_stages}; pass one split point fewer than the number of stages"
            )
    else:
        if num_stages is None:
            raise RuntimeConfigError("pass stages=N or split_points=[...] to split the model")
        cuts = balanced_cuts(block_flops(blocks, example_inputs), num_stages)
    bounds = [*cuts, len(blocks)]
    model_names = {id(p): n for n, p in model.named_parameters()}
    stages = []
    for index in range(len(cuts)):
        chunk = blocks[bounds[index] : bounds[index + 1]]
        module = StageBlocks(*[m for _, m in chunk])
        param_names = {}
        for stage_name, param in module.named_parameters(remove_duplicate=False):
            if id(param) in model_names:
                param_names[stage_name] = model_names[id(param)]
        stages.append(StageSpec(index, [n for n, _ in chunk], module, param_names))
    return stages


def stage_example_inputs(stages: Sequence[StageSpec], example_inputs: tuple) -> list[tuple]:
    """The example input of every stage, by running the earlier stages eagerly (no grad)."""
    inputs_per_stage = []
    values = tuple(example_inputs)
    with torch.no_grad():
        for spec in stages:
            inputs_per_stage.append(values)
            values = _run_blocks(list(spec.module), values)
    return inputs_per_stage
