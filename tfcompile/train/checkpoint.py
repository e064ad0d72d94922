"""Checkpoints of a compiled pipeline with torch.distributed.checkpoint (DCP): atomic across
ranks, integrity-checked, and loadable at another (dp, pp) layout.

``save_checkpoint(path, pipe, optimizer, extra=None)`` and ``load_checkpoint(...)`` are
collective over all ranks (every rank of every replica calls them at the same step); they are
also ``tfcompile.save_checkpoint`` / ``tfcompile.load_checkpoint``. A checkpoint is one
directory:

- DCP files (``.metadata``, ``__<rank>_0.distcp``) holding, keyed by the model's own parameter
  names: ``model.<name>`` (each parameter once, whatever rank holds it: DCP keeps one copy of
  keys several ranks write), ``optim.<name>.<state>`` (the optimizer's tensor state by
  parameter name, so it reshards to any layout), and ``rank_state.<global rank>`` (a bytes
  object: step, RNG, freezer state, ``extra``, the optimizer's hyperparameters and non-tensor
  state by parameter name, the rank's stages);
- ``manifest.json``, written last by rank 0: format, step, world/dp/pp, the run-config
  fingerprint and the SHA-256 and size of every file.

Atomicity: every rank writes into ``<path>.tmp``; after DCP's own commit (its ``.metadata``)
and a barrier, rank 0 writes the manifest and renames the directory into place. A save that
fails on any rank (or a rank killed before the rename) never produces ``<path>``, so the
previous complete checkpoint stays the latest (:func:`latest_checkpoint`); a failed save removes
its ``.tmp``, and one left by a killed process is removed by the next save of that path and is
never loaded. A directory without a manifest (incomplete), ranks asked to load checkpoints of
different steps, a file whose checksum or size differs (corrupted or truncated) are refused
with RuntimeConfigError naming the directory or file (a refused freezing-config change with
FreezeConfigError).

``{step}`` in ``path`` is replaced by ``pipe.step_index`` on save; on load it means the latest
complete checkpoint matching the pattern.

Resuming at another layout, by field of the run-config fingerprint (the documented rule):

- ``dp`` (replicas): continues. Parameters and optimizer state reshard by name; the freezer's
  state is kept (its decisions do not depend on dp).
- ``pp`` ranks, ``stages``, ``schedule``, ``microbatches`` (the pipeline layout), and
  ``max_freeze_ratio`` (the cap): re-plan. The saved freezer state describes actions of the old
  layout (or a plan solved under the old cap), so it is not restored; the freezer starts over at
  the resume step (warm-up, monitoring on the new layout, a new plan, ramp), its phases
  shifted by the resume step.
- ``policy``, ``seed``, ``grad``, and the phase lengths (``warmup_steps``, ``monitor_steps``,
  ``ramp_steps``): refused. They define what the saved decisions mean; resume with the same
  values (or start a new run).

RNG: each rank gets the state saved by the same global rank (when the new world is larger,
rank r gets rank ``r % saved_world``'s). ``extra`` likewise (keep data positions global, e.g.
one generator drawing the global batch that each replica slices, so they reshard). A
``torch.Generator`` in ``extra`` is stored as its state and restored in place.

A resumed run at the same layout reproduces the uninterrupted run (see
tests/train/test_checkpoint.py); at another layout it continues like an uninterrupted run of the
new layout from the same state (tests/runtime/test_data_parallel.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tfcompile.errors import FreezeConfigError, RuntimeConfigError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
_GENERATOR = "__torch_generator_state__"
#: fingerprint fields whose change makes the freezer start over (see the module docstring)
REPLAN_FIELDS = ("pp", "stages", "schedule", "microbatches", "max_freeze_ratio")
#: fingerprint fields whose change is refused
REFUSE_FIELDS = ("policy", "seed", "grad", "warmup_steps", "monitor_steps", "ramp_steps")


# -- paths -----------------------------------------------------------------------------------
def checkpoint_dir(path: str | os.PathLike, step: int) -> Path:
    """The directory of a checkpoint saved at ``step`` (``{step}`` replaced)."""
    return Path(os.fspath(path).replace("{step}", str(step)))


def latest_checkpoint(pattern: str | os.PathLike) -> Path | None:
    """The complete checkpoint (one with a manifest) of the highest step matching ``pattern``
    (a path with ``{step}``); None when there is none. ``.tmp`` directories never match."""
    text = os.fspath(pattern)
    if "{step}" not in text:
        return Path(text) if (Path(text) / MANIFEST).exists() else None
    parent = Path(text).parent
    head, tail = Path(text).name.split("{step}", 1)
    regex = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + r"\Z")
    found = []
    if "{step}" in os.fspath(parent):
        raise RuntimeConfigError(f"{text}: {{step}} may only appear in the last path component")
    if parent.is_dir():
        for child in parent.iterdir():
            match = regex.match(child.name)
            if match and (child / MANIFEST).exists():
                found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def _tmp_dir(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


# -- collective helpers ----------------------------------------------------------------------
def _world(pipe: Any) -> tuple[int, int]:
    if getattr(pipe, "distributed", False):
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(pipe: Any) -> None:
    if getattr(pipe, "distributed", False):
        dist.barrier()


def _gather(pipe: Any, value: Any) -> list:
    if not getattr(pipe, "distributed", False):
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _agree(pipe: Any, error: str | None) -> None:
    """Raise on every rank when any rank found a problem (so none waits in a collective)."""
    errors = [e for e in _gather(pipe, error) if e]
    if errors:
        raise RuntimeConfigError(errors[0])


# -- what is saved ---------------------------------------------------------------------------
def run_fingerprint(pipe: Any) -> dict[str, Any]:
    """The run config a checkpoint records, compared field by field on resume."""
    sched = pipe.schedule
    out: dict[str, Any] = {
        "dp": int(getattr(pipe, "dp_size", 1)),
        "pp": int(sched.num_ranks),
        "stages": int(sched.num_stages),
        "schedule": str(sched.name),
        "microbatches": int(sched.num_microbatches),
        "freeze": pipe.freezer is not None,
    }
    if pipe.freezer is not None:
        cfg = pipe.freezer.config
        for name in ("policy", "seed", "grad", "max_freeze_ratio") + REFUSE_FIELDS[3:]:
            out[name] = getattr(cfg, name)
        # a freezer that started over at a resume step runs with its warm-up shifted by it
        restart = int(getattr(pipe, "freeze_restart_step", 0))
        out["warmup_steps"] = cfg.warmup_steps - restart
        out["freeze_restart_step"] = restart
    return out


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


def _param_names(pipe: Any, optimizer: torch.optim.Optimizer | None) -> dict[int, str]:
    """Optimizer state index -> model parameter name (the optimizer must be over
    ``pipe.parameters()`` or a subset)."""
    if optimizer is None:
        return {}
    by_id = {id(p): n for n, p in pipe.named_parameters()}
    out: dict[int, str] = {}
    index = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise RuntimeConfigError(
                    "the optimizer holds a parameter that is not one of pipe.parameters(): "
                    "build it over pipe.parameters() to checkpoint it"
                )
            out[index] = by_id[id(p)]
            index += 1
    return out


def _to_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _state_for_save(pipe: Any, optimizer, extra) -> dict[str, Any]:
    rank, _ = _world(pipe)
    state: dict[str, Any] = {}
    for name, p in pipe.named_parameters():
        state[f"model.{name}"] = p.detach()
    names = _param_names(pipe, optimizer)
    hyper: dict[str, dict] = {}
    other: dict[str, dict] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for group in sd["param_groups"]:
            params = {k: v for k, v in group.items() if k != "params"}
            for index in group["params"]:
                hyper[names[index]] = params
        for index, per_param in sd["state"].items():
            name = names[index]
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    state[f"optim.{name}.{key}"] = value
                else:
                    other.setdefault(name, {})[key] = value
    rank_state = {
        "step_index": int(pipe.step_index),
        "local_stages": list(pipe.local_stages),
        "freezer": None if pipe.freezer is None else pipe.freezer.state_dict(),
        "rng": _rng_state(pipe),
        "extra": _pack_extra(extra),
        "optim_hyper": hyper,
        "optim_other": other,
        "has_optimizer": optimizer is not None,
    }
    state[f"rank_state.{rank}"] = _to_bytes(rank_state)
    return state


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- save ------------------------------------------------------------------------------------
def save_checkpoint(
    path: str | os.PathLike,
    pipe: Any,
    optimizer: torch.optim.Optimizer | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the training state of every rank into one checkpoint directory; returns it.

    Collective: every rank calls it at the same step. See the module docstring for what is
    saved and the atomicity rule. Raises RuntimeConfigError when the ranks are at different
    steps or save to different paths.
    """
    import torch.distributed.checkpoint as dcp

    rank, world = _world(pipe)
    final = checkpoint_dir(path, int(pipe.step_index)).absolute()
    tmp = _tmp_dir(final)
    seen = _gather(pipe, (str(final), int(pipe.step_index)))
    _agree(
        pipe,
        None
        if all(s == seen[0] for s in seen)
        else f"ranks save different checkpoints (path, step): {seen}; every rank must call "
        "save_checkpoint with the same path after the same step",
    )
    state = _state_for_save(pipe, optimizer, extra)
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save
            tmp.mkdir(parents=True)
        _barrier(pipe)
        # DCP's own commit: every rank's files are written when it returns on any rank
        dcp.save(state, checkpoint_id=tmp, no_dist=not getattr(pipe, "distributed", False))
        problem = None
        if rank == 0:
            try:
                _write_manifest(tmp, pipe, world)
                _replace_dir(tmp, final)
            except OSError as exc:
                problem = f"could not commit checkpoint {final}: {exc}"
        _agree(pipe, problem)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_manifest(tmp: Path, pipe: Any, world: int) -> None:
    files = {
        f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
        for f in sorted(tmp.iterdir())
        if f.is_file()
    }
    manifest = {
        "format": FORMAT_VERSION,
        "step": int(pipe.step_index),
        "world": world,
        "fingerprint": run_fingerprint(pipe),
        "files": files,
    }
    part = tmp / (MANIFEST + ".part")
    with open(part, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp / MANIFEST)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` (a checkpoint already there is replaced)."""
    old = final.with_name(final.name + ".old.tmp")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# -- load ------------------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if "{step}" in text:
        found = latest_checkpoint(text)
        if found is None:
            raise RuntimeConfigError(f"no complete checkpoint matches {text}")
        return found.absolute()
    return Path(text).absolute()


def _read_manifest(directory: Path) -> dict:
    if not directory.exists():
        raise RuntimeConfigError(f"no checkpoint: {directory} does not exist")
    file = directory / MANIFEST
    if not file.exists():
        raise RuntimeConfigError(
            f"{directory} is an incomplete checkpoint (no {MANIFEST}: its save was "
            "interrupted); load the previous complete one (tfcompile.latest_checkpoint)"
        )
    try:
        manifest = json.loads(file.read_text())
    except ValueError as exc:
        raise RuntimeConfigError(f"{file} is corrupted ({exc})") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise RuntimeConfigError(
            f"{file}: checkpoint format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
        )
    return manifest


def _verify_files(directory: Path, manifest: dict, rank: int, world: int) -> str | None:
    """This rank's share of the integrity check (files i with i % world == rank)."""
    for i, (name, want) in enumerate(sorted(manifest["files"].items())):
        if i % world != rank:
            continue
        file = directory / name
        if not file.exists():
            return f"checkpoint file {file} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return (
                f"checkpoint file {file} is truncated or corrupted: {size} bytes, the "
                f"manifest says {want['bytes']}"
            )
        if _sha256(file) != want["sha256"]:
            return f"checkpoint file {file} is corrupted: its SHA-256 differs from the manifest's"
    return None


def _compare_fingerprints(saved: dict, now: dict, directory: Path) -> bool:
    """True when the freezer must start over (a re-plan field changed); raises on a refused
    field (see the module docstring)."""
    if saved.get("freeze") != now.get("freeze"):
        raise RuntimeConfigError(
            f"{directory} was saved {'with' if saved.get('freeze') else 'without'} a freezing "
            "controller; resume with the same freeze= argument"
        )
    for name in REFUSE_FIELDS:
        if saved.get(name) != now.get(name):
            raise FreezeConfigError(
                f"{directory} was saved with {name}={saved.get(name)!r} but this run has "
                f"{name}={now.get(name)!r}; resume with the same value (a change of {name} "
                "would change what the saved freezing decisions mean)"
            )
    return any(saved.get(name) != now.get(name) for name in REPLAN_FIELDS)


def load_checkpoint(
    path: str | os.PathLike,
    pipe: Any,
    optimizer: torch.optim.Optimizer | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into ``pipe`` and ``optimizer`` (at any dp x pp layout); returns
    the ``extra`` this rank's saved counterpart wrote.

    Collective. Generators saved in ``extra`` come back as states in the returned dict; pass
    the live generators in ``extra`` (same keys) to have their state set in place. Raises
    RuntimeConfigError for an incomplete, corrupted or mismatched checkpoint (naming the
    directory or file) and for a refused run-config change.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    rank, world = _world(pipe)
    directory = _resolve(path)
    manifest: dict | None = None
    error = None
    try:
        manifest = _read_manifest(directory)
    except RuntimeConfigError as exc:
        error = str(exc)
    _agree(pipe, error)
    assert manifest is not None
    seen = _gather(pipe, (str(directory), manifest["step"]))
    _agree(
        pipe,
        None
        if all(s == seen[0] for s in seen)
        else f"ranks would load different checkpoints (directory, step): {seen}; every rank "
        "must load the same checkpoint",
    )
    _agree(pipe, _verify_files(directory, manifest, rank, world))
    now = run_fingerprint(pipe)
    replan = _compare_fingerprints(manifest["fingerprint"], now, directory)

    saved_world = int(manifest["world"])
    metadata = FileSystemReader(directory).read_metadata().state_dict_metadata
    params = dict(pipe.named_parameters())
    missing = [n for n in params if f"model.{n}" not in metadata]
    _agree(pipe, f"{directory} has no parameters {missing[:5]}" if missing else None)
    state: dict[str, Any] = {
        f"model.{n}": torch.empty_like(p, device="cpu") for n, p in params.items()
    }
    for key, meta in metadata.items():
        if key.startswith("optim.") and _owner(key, params) is not None:
            state[key] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    for r in range(saved_world):
        state[f"rank_state.{r}"] = b""
    dcp.load(state, checkpoint_id=directory, no_dist=not getattr(pipe, "distributed", False))

    ranks = [_from_bytes(state[f"rank_state.{r}"]) for r in range(saved_world)]
    steps = {r["step_index"] for r in ranks}
    if steps != {manifest["step"]}:
        raise RuntimeConfigError(
            f"{directory} mixes steps {sorted(steps)} (manifest: {manifest['step']}); it was "
            "not written by one save_checkpoint"
        )
    mine = ranks[rank % saved_world]
    with torch.no_grad():
        for name, p in params.items():
            value = state[f"model.{name}"]
            if value.shape != p.shape:
                raise RuntimeConfigError(
                    f"{directory}: parameter {name} has shape {tuple(value.shape)}, the "
                    f"model's is {tuple(p.shape)}"
                )
            p.copy_(value.to(p.device, p.dtype))
    if optimizer is not None:
        if not mine["has_optimizer"]:
            raise RuntimeConfigError(f"{directory} was saved without optimizer state")
        _load_optimizer(optimizer, pipe, state, ranks)
    _load_freezer(pipe, ranks, replan, int(manifest["fingerprint"].get("freeze_restart_step", 0)))
    pipe.step_index = int(manifest["step"])
    torch.set_rng_state(mine["rng"]["cpu"])
    if "cuda" in mine["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["rng"]["cuda"], torch.device(pipe.device))
    restored: dict[str, Any] = {}
    live = dict(extra or {})
    for key, value in mine["extra"].items():
        if isinstance(value, dict) and _GENERATOR in value:
            value = value[_GENERATOR]
            target = live.get(key)
            if isinstance(target, torch.Generator):
                target.set_state(value)
        restored[key] = value
    _barrier(pipe)
    return restored


def _owner(key: str, params: Mapping[str, Any]) -> str | None:
    """The parameter name of an ``optim.<name>.<state>`` key held by this rank, or None."""
    body = key[len("optim.") :]
    name = body.rsplit(".", 1)[0]
    while name:
        if name in params:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _load_optimizer(optimizer, pipe: Any, state: dict, ranks: list[dict]) -> None:
    params = dict(pipe.named_parameters())
    hyper: dict[str, dict] = {}
    other: dict[str, dict] = {}
    for r in ranks:
        hyper.update(r["optim_hyper"])
        other.update(r["optim_other"])
    per_param: dict[str, dict] = {}
    for key, value in state.items():
        if key.startswith("optim."):
            name = _owner(key, params)
            assert name is not None
            per_param.setdefault(name, {})[key[len("optim.") + len(name) + 1 :]] = value
    for name, values in other.items():
        if name in params:
            per_param.setdefault(name, {}).update(values)
    names = _param_names(pipe, optimizer)
    sd = optimizer.state_dict()
    new_state = {}
    for group in sd["param_groups"]:
        for index in group["params"]:
            name = names[index]
            if name in per_param:
                new_state[index] = per_param[name]
        first = names[group["params"][0]] if group["params"] else None
        if first in hyper:
            group.update({k: v for k, v in hyper[first].items() if k != "params"})
    optimizer.load_state_dict({"state": new_state, "param_groups": sd["param_groups"]})


def _load_freezer(pipe: Any, ranks: list[dict], replan: bool, restarted: int) -> None:
    """Restore the freezer (same layout), or start it over at the resume step (a re-plan
    field changed). ``restarted`` is the step at which the saved run's freezer started over
    (0: never); its phases are shifted by it, and so are the resumed freezer's."""
    if pipe.freezer is None:
        return
    if not replan:
        for r in ranks:  # a saved rank of another replica with the same stages
            if list(r["local_stages"]) == list(pipe.local_stages):
                _restart_freezer(pipe, restarted)
                pipe.freezer.load_state_dict(r["freezer"])
                return
    _restart_freezer(pipe, int(ranks[0]["step_index"]))


def _restart_freezer(pipe: Any, step: int) -> None:
    """A fresh freezer whose warm-up lasts ``step`` steps longer: it monitors, plans and
    ramps from ``step`` on as a new run would from 0."""
    from tfcompile.freeze.controller import Freezer

    original = pipe.freezer.config.warmup_steps - int(getattr(pipe, "freeze_restart_step", 0))
    if step == int(getattr(pipe, "freeze_restart_step", 0)):
        return
    shifted = replace(pipe.freezer.config, warmup_steps=original + step)
    pipe.freezer = Freezer.for_pipeline(shifted, pipe)
    pipe.freeze_restart_step = step


__all__ = [
    "MANIFEST",
    "checkpoint_dir",
    "latest_checkpoint",
    "load_checkpoint",
    "run_fingerprint",
    "save_checkpoint",
]
