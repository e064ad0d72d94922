"""Checkpoint and resume of a compiled pipeline's training state, one file per rank.

``save_checkpoint(path, pipe, optimizer, extra=None)`` writes this rank's share:

- ``params``: this rank's parameters, named as in ``model.named_parameters()``;
- ``optimizer``: ``optimizer.state_dict()`` (the optimizer over ``pipe.parameters()``);
- ``step_index``: ``pipe.step_index`` (the next step to run);
- ``freezer``: ``pipe.freezer.state_dict()`` (phase, measured profiles, the plan in force,
  policy state) or None without freezing;
- ``rng``: the torch CPU RNG state (and CUDA's when the pipeline runs on a GPU);
- ``extra``: anything picklable; a ``torch.Generator`` value (e.g. the data generator) is
  stored as its state and restored in place by :func:`load_checkpoint`.

``path`` names the file of each rank: a string with ``{rank}`` is formatted with the rank
(``ckpt/step100-rank{rank}.pt``); otherwise it is a directory that receives ``rank{r}.pt``.

A resumed run (compile afresh with the same arguments, ``load_checkpoint``, continue from
``pipe.step_index``) reproduces the uninterrupted run: the plan and the profiles it was solved
from come from the checkpoint, not from new measurements, and every freezing decision is a
pure function of (seed, step, stage, microbatch) and the restored policy state. One exception:
a periodic re-plan (``FreezeConfig.replan_every``) consults timings measured in the run, so a
re-plan after the resume point may differ as it would between two uninterrupted runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tfcompile.errors import RuntimeConfigError

FORMAT_VERSION = 1
_GENERATOR = "__torch_generator_state__"


def checkpoint_file(path: str | os.PathLike, rank: int) -> Path:
    """The file of ``rank`` for a checkpoint ``path`` (see the module docstring)."""
    text = os.fspath(path)
    if "{rank}" in text:
        return Path(text.format(rank=rank))
    return Path(text) / f"rank{rank}.pt"


def _pack_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    packed: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if isinstance(value, torch.Generator):
            packed[key] = {_GENERATOR: value.get_state()}
        else:
            packed[key] = value
    return packed


def _rng_state(pipe: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    device = getattr(pipe, "device", None)
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return state


def save_checkpoint(
    path: str | os.PathLike,
    pipe: Any,
    optimizer: torch.optim.Optimizer | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write this rank's checkpoint file; returns its path. Not collective."""
    file = checkpoint_file(path, int(pipe.rank))
    file.parent.mkdir(parents=True, exist_ok=True)
    freezer = pipe.freezer
    state = {
        "version": FORMAT_VERSION,
        "rank": int(pipe.rank),
        "num_stages": int(pipe.num_stages),
        "local_stages": list(pipe.local_stages),
        "step_index": int(pipe.step_index),
        "params": {name: p.detach().clone() for name, p in pipe.named_parameters()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "freezer": None if freezer is None else freezer.state_dict(),
        "rng": _rng_state(pipe),
        "extra": _pack_extra(extra),
    }
    tmp = file.with_name(file.name + ".tmp")
    try:
        torch.save(state, tmp)
    except BaseException:  # a failed save (disk full, unpicklable extra) leaves no .tmp
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, file)  # a crash mid-write never leaves a truncated checkpoint
    return file


def load_checkpoint(
    path: str | os.PathLike,
    pipe: Any,
    optimizer: torch.optim.Optimizer | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore this rank's checkpoint into ``pipe`` and ``optimizer``; returns the saved extra.

    Generators saved in ``extra`` come back as states in the returned dict; pass the live
    generators in ``extra`` (same keys) to have their state set in place.
    """
    file = checkpoint_file(path, int(pipe.rank))
    if not file.exists():
        raise RuntimeConfigError(f"no checkpoint for rank {pipe.rank}: {file} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if state.get("version") != FORMAT_VERSION:
        raise RuntimeConfigError(
            f"{file}: checkpoint format {state.get('version')!r}, expected {FORMAT_VERSION}"
        )
    if list(state["local_stages"]) != list(pipe.local_stages) or state["num_stages"] != int(
        pipe.num_stages
    ):
        raise RuntimeConfigError(
            f"{file} holds stages {state['local_stages']} of {state['num_stages']} but this "
            f"rank runs stages {list(pipe.local_stages)} of {pipe.num_stages}; resume with the "
            "same schedule, stage count and number of ranks"
        )
    params = dict(pipe.named_parameters())
    saved = state["params"]
    missing = sorted(set(params) - set(saved))
    unexpected = sorted(set(saved) - set(params))
    if missing or unexpected:
        raise RuntimeConfigError(
            f"{file}: parameters do not match this rank's (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = saved[name]
            if value.shape != param.shape:
                raise RuntimeConfigError(
                    f"{file}: parameter {name} has shape {tuple(value.shape)}, the model's "
                    f"is {tuple(param.shape)}"
                )
            param.copy_(value.to(param.device, param.dtype))
    if optimizer is not None:
        if state["optimizer"] is None:
            raise RuntimeConfigError(f"{file} was saved without optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    freezer = pipe.freezer
    if (freezer is None) != (state["freezer"] is None):
        raise RuntimeConfigError(
            f"{file} was saved {'with' if state['freezer'] is not None else 'without'} a "
            "freezing controller; resume with the same freeze= argument"
        )
    if freezer is not None:
        freezer.load_state_dict(state["freezer"])
    pipe.step_index = int(state["step_index"])
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"], torch.device(pipe.device))
    restored: dict[str, Any] = {}
    live = dict(extra or {})
    for key, value in state["extra"].items():
        if isinstance(value, dict) and _GENERATOR in value:
            value = value[_GENERATOR]
            target = live.get(key)
            if isinstance(target, torch.Generator):
                target.set_state(value)
        restored[key] = value
    return restored


__all__ = ["checkpoint_file", "load_checkpoint", "save_checkpoint"]
