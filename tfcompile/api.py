"""`tfcompile.compile(model, schedule=...)` -> Pipeline: the user-facing training object.

compile() splits the model into stages, builds the schedule, traces only this rank's stages
into StagePrograms and wires them to a transport: torch.distributed point-to-point under
torchrun, or an in-process mailbox when all stages live in one process. `Pipeline.step` runs
one training step and leaves gradients on the parameters for the user's optimizer.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tfcompile.errors import GroupError, RuntimeConfigError, ScheduleError
from tfcompile.runtime import distributed
from tfcompile.runtime.executor import interleave
from tfcompile.runtime.pipeline import Pipeline
from tfcompile.runtime.transport import DistTransport, LocalTransport, TensorSpec
from tfcompile.split import StageSpec, split_model, stage_example_inputs

STAGES_PER_RANK = {"ZBV": 2, "INTERLEAVED1F1B": 2}
DEFAULT_TIMEOUT_S = 300.0
_pipeline_ids = itertools.count()


def _stages_per_rank(name: str) -> int:
    return STAGES_PER_RANK.get(name.upper(), 1)


def _resolve_schedule(schedule, stages: int | None, microbatches: int, ranks: int):
    from tfcompile import schedules
    from tfcompile.schedules.actions import Schedule

    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, (str, os.PathLike)):
        raise ScheduleError(f"schedule must be a name, a CSV path or a Schedule, not {schedule!r}")
    text = os.fspath(schedule)
    if text.endswith(".csv") or os.path.exists(text):
        return Schedule.from_csv(text)
    if stages is None:
        stages = ranks * _stages_per_rank(text)
    return schedules.build(text, stages, microbatches, ranks=ranks)


def _default_ranks(schedule, stages: int | None) -> int:
    """Pipeline ranks of a single-process run: the schedule's own, else from `stages`."""
    from tfcompile.schedules.actions import Schedule

    if isinstance(schedule, (str, os.PathLike)) and (
        os.fspath(schedule).endswith(".csv") or os.path.exists(os.fspath(schedule))
    ):
        schedule = Schedule.from_csv(os.fspath(schedule))
    if isinstance(schedule, Schedule):
        return schedule.num_ranks
    return max(1, stages // _stages_per_rank(str(schedule))) if stages else 2


def _group_spec(groups, spec: StageSpec, model_names: set[str]):
    """Translate the user's group choice into trace_stage's, for one stage."""
    if groups == "block":
        return spec.groups_by_block()
    if groups == "tensor":
        return {spec.param_names[n]: [n] for n, _ in spec.module.named_parameters()}
    if isinstance(groups, Mapping):
        unknown = sorted({n for names in groups.values() for n in names} - model_names)
        if unknown:
            raise GroupError(
                f"group map names parameters the model does not have: {unknown[:5]}; use names "
                "from model.named_parameters()"
            )
        to_stage = {}
        for stage_name, _ in spec.module.named_parameters():
            to_stage[spec.param_names[stage_name]] = stage_name
        out = {}
        for group, names in groups.items():
            local = [to_stage[n] for n in names if n in to_stage]
            if local:
                out[group] = local
        return out
    raise GroupError(f"groups must be 'block', 'tensor' or a dict, not {groups!r}")


def _float_specs(tensors: Sequence[torch.Tensor], device) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(tuple(t.shape), t.dtype, device) for t in tensors)


def compile(  # noqa: A001 - the public name the design asks for
    model: nn.Module,
    schedule="1F1B",
    stages: int | None = None,
    microbatches: int = 4,
    example_inputs=None,
    loss_fn: Callable | None = None,
    example_target: torch.Tensor | None = None,
    split_points: Sequence[str] | None = None,
    groups="block",
    freeze=None,
    *,
    ranks: int | None = None,
    device: torch.device | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    recv_lookahead: int | None = None,
) -> Pipeline:
    """Compile `model` into a pipeline for this process's rank.

    Under torchrun (WORLD_SIZE > 1) each rank traces only its own stages and talks to the
    others over torch.distributed; otherwise every stage runs in this process (`ranks` then
    says how many pipeline ranks the schedule has). example_inputs and example_target are one
    microbatch's.
    """
    from tfcompile.trace import trace_stage

    if example_inputs is None or loss_fn is None or example_target is None:
        raise RuntimeConfigError(
            "compile needs example_inputs, loss_fn and example_target (one microbatch's)"
        )
    example_inputs = (
        tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    )
    distributed_run = distributed.wants_distributed()
    if distributed_run:
        ctx = distributed.init(timeout, device)
        rank, world, dev = ctx.rank, ctx.world_size, ctx.device
        if ranks is not None and ranks != world:
            raise RuntimeConfigError(f"ranks={ranks} but torchrun started {world} processes")
        ranks = world
    else:
        rank, dev = 0, torch.device(device or "cpu")
        if ranks is None:
            ranks = _default_ranks(schedule, stages)
    pipeline_id = next(_pipeline_ids)
    failure = (
        distributed.failure_signal(f"tfcompile/{pipeline_id}", timeout) if distributed_run else None
    )
    try:
        sched = _resolve_schedule(schedule, stages, microbatches, ranks)
        if sched.num_ranks != ranks:
            raise RuntimeConfigError(
                f"schedule has {sched.num_ranks} ranks but the pipeline runs on {ranks}"
            )
        if stages is not None and sched.num_stages != stages:
            raise RuntimeConfigError(f"schedule has {sched.num_stages} stages, stages={stages}")
        if sched.num_microbatches != microbatches and not isinstance(schedule, str):
            microbatches = sched.num_microbatches
        specs = split_model(model, sched.num_stages, example_inputs, split_points)
        if len(specs) != sched.num_stages:
            raise RuntimeConfigError(
                f"the split gives {len(specs)} stages but the schedule has {sched.num_stages}"
            )
        stage_inputs = stage_example_inputs(specs, example_inputs)
        for s, values in enumerate(stage_inputs[1:], start=1):
            bad = [str(v.dtype) for v in values if not v.is_floating_point()]
            if bad:
                raise RuntimeConfigError(
                    f"stage {s} receives non-floating tensors ({bad}) from stage {s - 1}; "
                    "pipeline stages must exchange floating-point activations, so choose split "
                    "points after the embedding"
                )
        local = sched.stages_of(rank) if distributed_run else list(range(sched.num_stages))
        model_names = {n for n, _ in model.named_parameters()}
        example_shapes = {
            "grad_specs": {s: _float_specs(stage_inputs[s], dev) for s in range(len(specs))},
            "loss_dtype": torch.float32,
        }
        programs = {}
        for s in local:
            spec = specs[s]
            spec.module.to(dev)
            inputs = tuple(t.detach().to(dev) for t in stage_inputs[s])
            if s > 0:
                inputs = tuple(t.requires_grad_(True) for t in inputs)
            last = s == sched.num_stages - 1
            programs[s] = trace_stage(
                spec.module,
                inputs,
                loss_fn=loss_fn if last else None,
                example_target=example_target.to(dev) if last else None,
                groups=_group_spec(groups, spec, model_names),
            )
            if last:
                with torch.no_grad():
                    out = spec.module(*stage_inputs[s])
                    example_shapes["loss_dtype"] = loss_fn(out, example_target).dtype
        if distributed_run:
            summary = {
                "schedule": distributed.fingerprint(sched.to_csv()),
                "stages": sched.num_stages,
                "microbatches": sched.num_microbatches,
                "example_inputs": [(tuple(t.shape), str(t.dtype)) for t in example_inputs],
                "example_target": (tuple(example_target.shape), str(example_target.dtype)),
                "params": distributed.fingerprint(
                    [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
                ),
                "split": [spec.block_names for spec in specs],
                "torch": torch.__version__,
            }
            distributed.check_same_config(summary, rank, ranks)
            act_specs = {
                ("act", s): _float_specs(stage_inputs[s + 1], dev) for s in range(len(specs) - 1)
            }
            grad_specs = {
                ("grad", s): _float_specs(stage_inputs[s], dev) for s in range(1, len(specs))
            }
            transport = DistTransport(
                rank,
                sched.stage_to_rank,
                {**act_specs, **grad_specs},
                dev,
                failure,
                timeout,
                sched.num_microbatches,
            )
            order = list(sched.programs[rank])
        else:
            transport = LocalTransport()
            order = interleave(sched.programs, sched.num_stages)
        lookahead = recv_lookahead if recv_lookahead is not None else 2 * sched.num_stages + 2
        pipe = Pipeline(
            model,
            sched,
            specs,
            programs,
            rank,
            dev,
            transport,
            order,
            example_shapes,
            distributed_run,
            lookahead,
        )
        pipe.failure = failure
        if freeze is not None:
            pipe.timer.records = type(pipe.timer.records)(maxlen=max(50, freeze.monitor_steps))
            pipe.timer.arrivals = type(pipe.timer.arrivals)(maxlen=max(50, freeze.monitor_steps))
        if failure is not None:
            failure.start_watchdog(rank)
        if distributed_run:
            pipe._tied_groups = _tied_weight_groups(model, specs, sched)
        if freeze is not None:
            from tfcompile.freeze.controller import Freezer

            pipe.freezer = Freezer.for_pipeline(freeze, pipe)
        return pipe
    except BaseException as exc:
        if failure is not None:
            failure.report(rank, f"{type(exc).__name__}: {exc}")
        raise


def _tied_weight_groups(model: nn.Module, specs: list[StageSpec], sched) -> list:
    """Parameters held by stages on several ranks: their gradients are summed across them."""
    owners: dict[str, set[int]] = {}
    for spec in specs:
        for stage_name in spec.param_names:
            owners.setdefault(spec.param_names[stage_name], set()).add(
                sched.stage_to_rank[spec.index]
            )
    by_ranks: dict[tuple, list[str]] = {}
    for name, ranks in owners.items():
        if len(ranks) > 1:
            by_ranks.setdefault(tuple(sorted(ranks)), []).append(name)
    groups = []
    rank = dist.get_rank()
    for ranks, names in sorted(by_ranks.items()):
        group = dist.new_group(list(ranks))  # collective: every rank creates every group
        if rank in ranks:
            groups.append((names, group))
    return groups


__all__ = ["Pipeline", "compile"]
