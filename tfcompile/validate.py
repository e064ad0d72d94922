"""Checks of user arguments at the API boundary, before anything is traced or run.

Each check raises a tfcompile error that names the argument, says what was given and what is
expected, so that a wrong call fails at once with a message instead of deep inside torch
(``'list' object has no attribute 'shape'``) or after minutes of tracing. The checks against
traced shapes and dtypes (a pipeline has static ones) stay with their owners:
``runtime.pipeline`` for batches, ``program.StageProgram`` for a stage's own inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from tfcompile.errors import FreezeConfigError, RuntimeConfigError
from tfcompile.freeze.config import FreezeConfig

#: The shortest ``compile(timeout=...)`` accepted, in seconds. Below it the process group's
#: own start-up and an ordinary step on a loaded machine already exceed it.
MIN_TIMEOUT_S = 1.0


def check_timeout(timeout: Any) -> float:
    """``timeout`` as seconds: a finite real number >= MIN_TIMEOUT_S (RuntimeConfigError)."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise RuntimeConfigError(
            f"timeout={timeout!r} must be a number of seconds (>= {MIN_TIMEOUT_S:g})"
        )
    value = float(timeout)
    if not math.isfinite(value) or value < MIN_TIMEOUT_S:
        raise RuntimeConfigError(
            f"timeout={timeout!r} seconds is not usable: every wait of a step (and of the "
            f"collectives around it) must be allowed at least {MIN_TIMEOUT_S:g} s and a finite "
            "time; pass e.g. timeout=60"
        )
    return value


def check_compile_args(
    *,
    model: Any,
    example_inputs: tuple,
    example_target: Any,
    freeze: Any,
    timeout: Any,
    recv_lookahead: Any,
) -> None:
    """compile()'s arguments that need no tracing or schedule to check."""
    if not isinstance(model, torch.nn.Module):
        raise RuntimeConfigError(
            f"compile() takes a torch.nn.Module, got {type(model).__name__}: wrap a function "
            "in an nn.Module whose forward calls it"
        )
    if freeze is not None and not isinstance(freeze, FreezeConfig):
        hint = " (FreezeConfig(**that_dict))" if isinstance(freeze, Mapping) else ""
        raise FreezeConfigError(
            f"freeze= expects a tfcompile.FreezeConfig{hint} or None, got "
            f"{type(freeze).__name__}"
        )
    check_timeout(timeout)
    if recv_lookahead is not None and (
        isinstance(recv_lookahead, bool)
        or not isinstance(recv_lookahead, numbers.Integral)
        or recv_lookahead < 0
    ):
        raise RuntimeConfigError(
            f"recv_lookahead={recv_lookahead!r} must be an integer >= 0 (actions ahead whose "
            "receives are posted; 0 posts each receive when it is needed)"
        )
    check_tensors(example_inputs, "example_inputs", "one microbatch's inputs")
    check_tensors(example_target, "example_target", "one microbatch's target")


def check_tensors(value: Any, what: str, expected: str) -> None:
    """Every leaf of ``value`` (a tensor, or a tuple/list/dict of them) must be a tensor."""
    for path, leaf in _leaves(value, what):
        if not isinstance(leaf, torch.Tensor):
            got = type(leaf).__name__
            if isinstance(leaf, (list, tuple)):
                got = f"a Python {got} of numbers"
            raise RuntimeConfigError(
                f"{path} is {got}, but {what} must be tensors ({expected}): pass "
                "torch.tensor(...) values, a tuple of tensors, or a dict of tensors"
            )


def check_frozen(frozen: Any) -> None:
    """``Pipeline.step(frozen=...)``: a mapping (stage, microbatch) -> group names."""
    if frozen is None:
        return
    if not isinstance(frozen, Mapping):
        raise RuntimeConfigError(
            f"frozen= must be a mapping {{(stage, microbatch): group names}}, got "
            f"{type(frozen).__name__}"
        )
    for key, groups in frozen.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(_is_int(k) for k in key)):
            raise RuntimeConfigError(
                f"frozen= key {key!r} must be a (stage, microbatch) pair of integers"
            )
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise RuntimeConfigError(
                f"frozen[{key}] = {groups!r} must be a collection of group names (strings)"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _all_numbers(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_all_numbers(v) for v in value)
    return isinstance(value, numbers.Number)


def _leaves(value: Any, path: str):
    """(path, leaf) pairs; a non-empty list of numbers (nested) is one leaf, for the message."""
    if isinstance(value, list) and value and _all_numbers(value):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{path}[{k!r}]")
    else:
        yield path, value
