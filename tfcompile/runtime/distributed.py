"""Process-group plumbing for the distributed executor: start-up, config agreement, failures.

Everything here uses public torch.distributed APIs. Processes are started by torchrun (which
also does multi-node rendezvous); tfcompile never spawns or rendezvouses on its own.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tfcompile.errors import RuntimeConfigError
from tfcompile.runtime.transport import FailureSignal
from tfcompile.split import StageSpec


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    backend: str


def wants_distributed() -> bool:
    """True under torchrun (or an initialised process group) with more than one process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout: float, device: torch.device | str | None = None) -> DistContext:
    """Join (or reuse) the default process group: NCCL with CUDA, gloo otherwise."""
    if device is not None:
        device = torch.device(device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeConfigError(
                "WORLD_SIZE > 1 but no rendezvous address: start the script with "
                "`torchrun --nproc-per-node N script.py` (or initialise torch.distributed "
                "yourself before tfcompile.compile)"
            )
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return DistContext(dist.get_rank(), dist.get_world_size(), device, dist.get_backend())


def _store_client(timeout: float) -> dist.Store | None:
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (host and port):
        return None
    try:
        return dist.TCPStore(
            host,
            int(port),
            is_master=False,
            timeout=datetime.timedelta(seconds=min(timeout, 60.0)),
            wait_for_workers=False,
        )
    except Exception:
        return None


def failure_signal(prefix: str, timeout: float) -> FailureSignal:
    """Failure reporting through torchrun's rendezvous store (public TCPStore client API).

    Two clients: one for the main thread, one for the watchdog thread.
    """
    return FailureSignal(_store_client(timeout), prefix, watch_store=_store_client(timeout))


def check_same_config(summary: dict, rank: int, world_size: int) -> None:
    """Every rank must compile the same pipeline; report which rank differs in what."""
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, summary)
    reference = gathered[0]
    problems = []
    for other_rank, other in enumerate(gathered[1:], start=1):
        diffs = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
        if diffs:
            detail = "; ".join(
                f"{k}: rank 0 has {reference.get(k)!r}, rank {other_rank} has {other.get(k)!r}"
                for k in diffs
            )
            problems.append(detail)
    if problems:
        raise RuntimeConfigError(
            "ranks compiled different pipelines (every rank must call tfcompile.compile with the "
            "same model, schedule, microbatches and example shapes): " + " | ".join(problems)
        )


def fingerprint(value) -> str:
    """Short stable hash of a JSON-able value (for config agreement across ranks)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tied_weight_groups(
    specs: Sequence[StageSpec],
    stage_to_rank: Sequence[int],
    replicas: Sequence[Sequence[int]] | None = None,
) -> list[tuple[list[str], dist.ProcessGroup]]:
    """Parameters held by stages on several ranks, with the process group that sums their
    gradients: ``[(model names, group)]`` for the groups this rank belongs to.

    ``replicas`` (data parallelism) are the global ranks of each pipeline replica indexed by
    pipeline rank; each replica gets its own groups. Collective: every rank creates every
    group, in the same order.
    """
    owners: dict[str, set[int]] = {}
    for spec in specs:
        for stage_name in spec.param_names:
            owners.setdefault(spec.param_names[stage_name], set()).add(stage_to_rank[spec.index])
    by_ranks: dict[tuple, list[str]] = {}
    for name, ranks in owners.items():
        if len(ranks) > 1:
            by_ranks.setdefault(tuple(sorted(ranks)), []).append(name)
    groups = []
    rank = dist.get_rank()
    for pipeline in replicas or [range(dist.get_world_size())]:
        for ranks, names in sorted(by_ranks.items()):
            members = [pipeline[r] for r in ranks]
            group = dist.new_group(members)  # collective: every rank creates every group
            if rank in members:
                groups.append((names, group))
    return groups
