"""Mixed precision traced into a stage: ``mixed_precision="bf16"``.

The parameters stay float32 (the master weights the optimizer updates, and ``.grad`` is
float32); the stage's ops run under ``torch.autocast(dtype=torch.bfloat16)`` *at trace time*,
so the graphs hold autocast's casts (and its float32 islands: softmax, norms, losses, as
autocast's op lists define them) and run without any autocast context. At the stage boundary
activations and their gradients travel in bfloat16 (half the bytes of float32): a stage casts
its floating-point outputs to bfloat16, and the next stage casts its bfloat16 inputs back to
float32 on entry (so the residual stream is float32 inside a stage, as in eager autocast, and
rounded to bfloat16 only between stages). The loss is float32.

Tolerance against eager under the same autocast: the only difference is the rounding of the
activations and gradients at stage boundaries (relative error 2**-8 each), see the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tfcompile import _torch_compat as compat

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
WIRE_DTYPE = {"bf16": torch.bfloat16}  # dtype of activations/gradients between stages


def check_precision(mixed_precision: str | None) -> str:
    """"fp32" (also for None) or "bf16"; ValueError naming the choices otherwise."""
    choice = "fp32" if mixed_precision is None else mixed_precision
    if choice not in PRECISIONS:
        raise ValueError(f"mixed_precision={mixed_precision!r}: choose one of {PRECISIONS}")
    return choice


def wire_inputs(values: tuple, precision: str) -> tuple:
    """A stage's example inputs as they arrive over the wire: float32 tensors in bfloat16
    under "bf16" (other dtypes, token ids and masks, unchanged)."""
    wire = WIRE_DTYPE.get(precision)
    if wire is None:
        return values
    return tuple(
        v.to(wire) if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v
        for v in values
    )


def mixed_stage_fn(
    fn: Callable[..., Any], first_input: int, num_inputs: int, is_loss: bool, precision: str
) -> Callable[..., Any]:
    """`fn` (the traced stage function: flat params, buffers, inputs, targets) under
    `precision`: bfloat16 inputs cast to float32 on entry, the body under autocast, floating
    outputs cast to bfloat16 (a loss to float32). "fp32" returns `fn` unchanged."""
    wire = WIRE_DTYPE.get(precision)
    if wire is None:
        return fn
    device_type = "cpu"

    def stage_fn(*args):
        args = list(args)
        for i in range(first_input, first_input + num_inputs):
            if isinstance(args[i], torch.Tensor) and args[i].dtype == wire:
                args[i] = args[i].to(torch.float32)
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), device_type)
        with torch.autocast(dev, dtype=wire):
            out = fn(*args)
        if is_loss:
            return out.to(torch.float32)
        leaves, spec = compat.tree_flatten(out)
        leaves = [
            o.to(wire) if isinstance(o, torch.Tensor) and o.is_floating_point() else o
            for o in leaves
        ]
        return compat.tree_unflatten(leaves, spec)

    return stage_fn


def eager_probe(precision: str, inputs: tuple) -> tuple[tuple, Any]:
    """The inputs and context in which to run a stage eagerly as its traced graphs will (the
    trace's probe): wire inputs back in float32, under autocast. "fp32": unchanged, no-op."""
    import contextlib

    wire = WIRE_DTYPE.get(precision)
    if wire is None:
        return inputs, contextlib.nullcontext()
    cast = tuple(
        v.to(torch.float32) if isinstance(v, torch.Tensor) and v.dtype == wire else v
        for v in inputs
    )
    dev = next((v.device.type for v in inputs if isinstance(v, torch.Tensor)), "cpu")
    return cast, torch.autocast(dev, dtype=wire)
