"""Data parallelism across pipeline replicas: the device mesh, frozen-aware gradient
reduction and the global gradient norm.

World = dp x pp under torchrun. A :class:`ParallelMesh` says where this process stands on a
``torch.distributed.device_mesh.DeviceMesh`` with dims ``("dp", "pp")`` (torchtitan's names):
its pipeline rank, its replica, the global ranks of its pipeline (the point-to-point messages
of the schedule go to them) and the process groups of both dims.

:class:`GradReducer` averages the gradients of one replica's parameters over the dp group
after each step, the way DDP does, with two differences that matter here:

- A parameter group that the freezer froze in *every* microbatch of the step on every local
  stage that holds it got no gradient on any replica (freezing decisions are pure functions of
  seed, step, stage and microbatch, and the measured profile the plan is solved from is
  gathered over all ranks, so every replica decides the same), so its reduction is skipped
  entirely. DDP cannot know this and reduces zeros (or needs ``find_unused_parameters``).
- Reduction starts per stage when the stage's last weight-gradient action (W, or B) of the
  step is done, in flattened buckets with asynchronous ``all_reduce`` (overlapping the rest
  of the pipeline's tail). That works for every schedule, zero-bubble ones included, because
  it does not rely on autograd hooks (which split backward bypasses: pytorch issue 144530).

Everything uses public torch.distributed collectives; nothing here is home-made transport.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from tfcompile.errors import RuntimeConfigError

#: Bucket size of a flattened all_reduce (DDP's default bucket_cap_mb is 25).
DEFAULT_BUCKET_BYTES = 25 * 2**20

MESH_DIMS = ("dp", "pp")


@dataclass(frozen=True)
class ParallelMesh:
    """This process on a (dp, pp) mesh.

    ``pp_ranks`` are the global ranks of this replica's pipeline, indexed by pipeline rank;
    ``replicas`` the same for every replica (index = dp rank), which tied-weight groups need.
    """

    dp_rank: int
    dp_size: int
    pp_rank: int
    pp_size: int
    pp_ranks: tuple[int, ...]
    replicas: tuple[tuple[int, ...], ...]
    dp_group: dist.ProcessGroup | None
    pp_group: dist.ProcessGroup | None
    mesh: object | None = None  # the DeviceMesh, when one was built or given

    @property
    def global_rank(self) -> int:
        return self.pp_ranks[self.pp_rank]


def resolve_mesh(
    dp: int | None, mesh, world_size: int, rank: int, device: torch.device
) -> ParallelMesh | None:
    """The mesh of a run under torchrun: ``mesh`` as given (dims "dp" and "pp"), or one built
    with ``init_device_mesh`` for ``dp`` replicas of ``world_size // dp`` pipeline ranks.
    None when neither asks for data parallelism (the whole world is one pipeline).

    Raises RuntimeConfigError when dp does not divide the world or the mesh's dims are not
    named ("dp", "pp").
    """
    if mesh is None and (dp is None or dp == 1):
        return None
    if mesh is None:
        if dp < 1 or world_size % dp:
            raise RuntimeConfigError(
                f"dp={dp} does not divide the {world_size} processes torchrun started: start "
                "dp x pp processes (--nproc-per-node times --nnodes)"
            )
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (dp, world_size // dp), mesh_dim_names=MESH_DIMS)
    names = tuple(mesh.mesh_dim_names or ())
    if names != MESH_DIMS:
        raise RuntimeConfigError(
            f"mesh= must be a DeviceMesh with dims named {MESH_DIMS}, got {names}: build it "
            "with init_device_mesh(device_type, (dp, pp), mesh_dim_names=('dp', 'pp'))"
        )
    if dp is not None and dp != mesh.size(0):
        raise RuntimeConfigError(f"dp={dp} but the mesh's dp dim has size {mesh.size(0)}")
    table = mesh.mesh.tolist()  # [dp][pp] -> global rank
    dp_rank = mesh.get_local_rank("dp")
    pp_rank = mesh.get_local_rank("pp")
    return ParallelMesh(
        dp_rank=dp_rank,
        dp_size=mesh.size(0),
        pp_rank=pp_rank,
        pp_size=mesh.size(1),
        pp_ranks=tuple(table[dp_rank]),
        replicas=tuple(tuple(row) for row in table),
        dp_group=mesh.get_group("dp"),
        pp_group=mesh.get_group("pp"),
        mesh=mesh,
    )


@dataclass
class _Bucket:
    names: list[str]
    flat: torch.Tensor
    work: object


@dataclass
class _StepPlan:
    """What this step reduces: parameters by readiness key (the local stages that hold them)."""

    pending: dict[frozenset[int], list[str]]
    skipped_frozen: list[str]
    groups_skipped: int
    remaining_w: dict[int, int]
    actions_left: int
    buckets: list[_Bucket] = field(default_factory=list)
    overlapped: int = 0  # buckets launched while this rank still had actions to run


class GradReducer:
    """Averages this replica's gradients over the dp group, skipping fully frozen groups.

    ``params`` are this rank's parameters by model name; ``holders[name]`` the local stages
    that hold the parameter (tied weights may sit in two local stages); ``groups[stage]`` the
    stage's freezing groups (group -> model parameter names). Drive it with
    :meth:`begin_step` (before the schedule runs), :meth:`action_done` (after every action)
    and :meth:`finish` (after the schedule: waits and writes the averages into ``.grad``).
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        holders: Mapping[str, Sequence[int]],
        groups: Mapping[int, Mapping[str, Sequence[str]]],
        group: dist.ProcessGroup | None,
        dp_size: int,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        self.params = dict(params)
        self.holders = {n: frozenset(holders[n]) for n in self.params}
        self.groups = {s: {g: list(ns) for g, ns in gs.items()} for s, gs in groups.items()}
        self.group = group
        self.dp_size = dp_size
        self.bucket_bytes = bucket_bytes
        self._plan: _StepPlan | None = None
        self.stats: dict[str, int] = {}

    def begin_step(
        self, order: Sequence, frozen: Mapping[tuple[int, int], frozenset[str]], microbatches: int
    ) -> None:
        """Plan the step's reduction from the actions this rank runs (``order``) and the
        frozen groups of each (stage, microbatch) key."""
        remaining: dict[int, int] = {}
        for action in order:
            if action.kind in ("W", "B"):
                remaining[action.stage] = remaining.get(action.stage, 0) + 1
        frozen_everywhere: dict[int, set[str]] = {}
        groups_skipped = 0
        for stage, stage_groups in self.groups.items():
            always = set(stage_groups)
            for m in range(microbatches):
                always &= set(frozen.get((stage, m), ()))
            groups_skipped += len(always)
            frozen_everywhere[stage] = {n for g in always for n in stage_groups[g]}
        pending: dict[frozenset[int], list[str]] = {}
        skipped: list[str] = []
        for name, param in self.params.items():
            if not param.requires_grad:
                continue
            where = self.holders[name]
            if where and all(name in frozen_everywhere.get(s, ()) for s in where):
                skipped.append(name)
                continue
            pending.setdefault(where, []).append(name)
        self._plan = _StepPlan(pending, skipped, groups_skipped, remaining, len(order))
        self._launch_ready()  # parameters of stages without backward actions

    def action_done(self, action) -> None:
        """Called after each action: when it was a stage's last W (or B) of the step, start
        reducing the parameters whose every holding stage is done."""
        plan = self._plan
        if plan is None:
            return
        plan.actions_left -= 1
        if action.kind not in ("W", "B"):
            return
        left = plan.remaining_w.get(action.stage, 0) - 1
        plan.remaining_w[action.stage] = left
        if left == 0:
            launched = len(plan.buckets)
            self._launch_ready()
            if plan.actions_left > 0:
                plan.overlapped += len(plan.buckets) - launched

    def _launch_ready(self) -> None:
        plan = self._plan
        assert plan is not None
        for key in [k for k in plan.pending if all(plan.remaining_w.get(s, 0) <= 0 for s in k)]:
            names = [n for n in plan.pending.pop(key) if self.params[n].grad is not None]
            for bucket in self._buckets(names):
                flat = torch.cat([self.params[n].grad.reshape(-1) for n in bucket])
                work = dist.all_reduce(flat, group=self.group, async_op=True)
                plan.buckets.append(_Bucket(bucket, flat, work))

    def _buckets(self, names: list[str]) -> list[list[str]]:
        """Consecutive runs of one dtype and device, each at most ``bucket_bytes`` (a larger
        parameter is a bucket of its own)."""
        out: list[list[str]] = []
        size = 0
        kind = None
        for name in names:
            grad = self.params[name].grad
            nbytes = grad.numel() * grad.element_size()
            this = (grad.dtype, grad.device)
            if not out or this != kind or size + nbytes > self.bucket_bytes:
                out.append([])
                size = 0
                kind = this
            out[-1].append(name)
            size += nbytes
        return out

    def finish(self) -> None:
        """Launch what is left, wait for every bucket and write the averages into ``.grad``."""
        plan = self._plan
        if plan is None:
            return
        for stage in list(plan.remaining_w):
            plan.remaining_w[stage] = 0
        self._launch_ready()
        reduced = 0
        with torch.no_grad():
            for bucket in plan.buckets:
                bucket.work.wait()
                bucket.flat.div_(self.dp_size)
                offset = 0
                for name in bucket.names:
                    grad = self.params[name].grad
                    n = grad.numel()
                    grad.copy_(bucket.flat[offset : offset + n].view_as(grad))
                    offset += n
                reduced += bucket.flat.numel() * bucket.flat.element_size()
        skipped_bytes = sum(
            self.params[n].numel() * self.params[n].element_size() for n in plan.skipped_frozen
        )
        self.stats = {
            "bytes_reduced": reduced,
            "buckets": len(plan.buckets),
            "buckets_overlapped": plan.overlapped,
            "params_reduced": sum(len(b.names) for b in plan.buckets),
            "params_skipped_frozen": len(plan.skipped_frozen),
            "bytes_skipped_frozen": skipped_bytes,
            "groups_skipped": plan.groups_skipped,
            "dp_size": self.dp_size,
        }
        self._plan = None

    def abandon(self) -> None:
        """Forget a step that failed midway (its buckets are not waited for)."""
        self._plan = None


def clip_grad_norm_(
    params: Sequence[nn.Parameter],
    counted: Sequence[nn.Parameter],
    max_norm: float,
    norm_type: float,
    group: dist.ProcessGroup | None,
    distributed: bool,
) -> torch.Tensor:
    """Scale the gradients of ``params`` so that the total norm over the model is at most
    ``max_norm``; returns the total norm (a 0-d float tensor).

    ``counted`` are the parameters whose gradients this rank contributes to the norm (each
    model parameter on exactly one rank of the pipeline, tied weights once); the per-rank parts
    are combined over ``group`` (the pp group: dp replicas hold the same averaged gradients).
    Same formula as ``torch.nn.utils.clip_grad_norm_``: total = ||(||g||_p for every g)||_p,
    coefficient = clamp(max_norm / (total + 1e-6), max=1); parameters without a gradient are
    absent.
    """
    norm_type = float(norm_type)
    grads = [p.grad for p in counted if p.grad is not None]
    device = next((g.device for g in grads), None) or next(
        (p.device for p in params), torch.device("cpu")
    )
    inf = math.isinf(norm_type)
    if grads:
        norms = torch.stack([torch.linalg.vector_norm(g.detach(), norm_type) for g in grads])
        local = norms.max() if inf else (norms.float() ** norm_type).sum()
    else:
        local = torch.zeros((), device=device)
    local = local.to(torch.float32)
    if distributed:
        op = dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM
        dist.all_reduce(local, op=op, group=group)
    total = local if inf else local ** (1.0 / norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
    return total


__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "GradReducer",
    "ParallelMesh",
    "clip_grad_norm_",
    "resolve_mesh",
]
