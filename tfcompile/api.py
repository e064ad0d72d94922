"""`tfcompile.compile(model, schedule=...)` -> Pipeline: the user-facing training object.

compile() splits the model into stages, builds the schedule, traces only this rank's stages
into StagePrograms and wires them to a transport: torch.distributed point-to-point under
torchrun, or an in-process mailbox when all stages live in one process. `Pipeline.step` runs
one training step and leaves gradients on the parameters for the user's optimizer.
"""

from __future__ import annotations

import itertools
import json
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tfcompile.errors import GroupError, RuntimeConfigError, ScheduleError
from tfcompile.runtime import distributed
from tfcompile.runtime.executor import StepRunner, forward_only_order, interleave
from tfcompile.runtime.timers import ActionTimer, median_profile
from tfcompile.runtime.transport import DistTransport, LocalTransport, TensorSpec
from tfcompile.split import StageSpec, split_model, stage_example_inputs

STAGES_PER_RANK = {"ZBV": 2, "INTERLEAVED1F1B": 2}
DEFAULT_TIMEOUT_S = 300.0
_pipeline_ids = itertools.count()


def _stages_per_rank(name: str) -> int:
    return STAGES_PER_RANK.get(name.upper(), 1)


def _resolve_schedule(schedule, stages: int | None, microbatches: int, ranks: int):
    from tfcompile import schedules
    from tfcompile.schedule.actions import Schedule

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
    from tfcompile.schedule.actions import Schedule

    if isinstance(schedule, (str, os.PathLike)) and (
        os.fspath(schedule).endswith(".csv") or os.path.exists(os.fspath(schedule))
    ):
        schedule = Schedule.from_csv(os.fspath(schedule))
    if isinstance(schedule, Schedule):
        return schedule.num_ranks
    return max(1, stages // _stages_per_rank(str(schedule))) if stages else 2


def _split_batch(batch, microbatches: int, what: str) -> list[tuple]:
    tensors = batch if isinstance(batch, (tuple, list)) else (batch,)
    chunks_per_tensor = []
    for t in tensors:
        if t.shape[0] % microbatches:
            raise RuntimeConfigError(
                f"{what} batch of {t.shape[0]} does not split into {microbatches} equal "
                "microbatches: make the batch size a multiple of the microbatch count"
            )
        chunks_per_tensor.append([c.contiguous() for c in t.chunk(microbatches)])
    return [tuple(chunks) for chunks in zip(*chunks_per_tensor)]


class Pipeline:
    """A compiled pipeline: this rank's traced stages and its share of the schedule."""

    def __init__(
        self,
        model: nn.Module,
        schedule,
        specs: list[StageSpec],
        programs: dict[int, object],
        rank: int,
        device: torch.device,
        transport,
        order: list,
        example_shapes: dict,
        distributed_run: bool,
        lookahead: int,
    ) -> None:
        self.model = model
        self.schedule = schedule
        self.specs = specs
        self.programs = programs
        self.rank = rank
        self.device = device
        self.transport = transport
        self.order = order
        self.distributed = distributed_run
        self.lookahead = lookahead
        self.example_shapes = example_shapes
        self.step_index = 0
        self._execution_schedule = None
        self.timer = ActionTimer(device, rank)
        self.freezer = None
        self.failure = None
        self.last_frozen: dict = {}
        self._tied_groups: list = []
        grad_specs = {}
        for stage in programs:
            grad_specs[stage] = example_shapes["grad_specs"][stage]
        self.runner = StepRunner(programs, schedule.num_stages, transport, self.timer, grad_specs)
        if hasattr(transport, "on_arrival"):
            transport.on_arrival = lambda key: self.timer.arrival(key[0], key[1], key[2])
        self._local_param_names = self._collect_local_params()

    # -- structure ------------------------------------------------------------------------
    @property
    def execution_schedule(self):
        """The schedule as this runtime executes it: a full backward B runs as I then W (the
        input gradient is sent upstream before the weight gradient is computed). Plans and
        predictions use this form so that they match what runs."""
        if self._execution_schedule is None:
            self._execution_schedule = self.schedule.with_split_backward()
        return self._execution_schedule

    @property
    def num_microbatches(self) -> int:
        return self.schedule.num_microbatches

    @property
    def num_stages(self) -> int:
        return self.schedule.num_stages

    @property
    def local_stages(self) -> list[int]:
        return sorted(self.programs)

    def _collect_local_params(self) -> dict[str, nn.Parameter]:
        params = {}
        for stage in self.local_stages:
            spec = self.specs[stage]
            for stage_name, param in spec.module.named_parameters():
                params.setdefault(spec.param_names[stage_name], param)
        model_order = [n for n, _ in self.model.named_parameters()]
        return {n: params[n] for n in model_order if n in params}

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """This rank's parameters, named as in the original model.named_parameters()."""
        return iter(self._local_param_names.items())

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self._local_param_names.values())

    def stage_groups(self, stage: int) -> dict[str, list[str]]:
        """Freezing groups of a local stage in forward order: group -> model parameter names."""
        spec, program = self.specs[stage], self.programs[stage]
        order = [g for g in program.group_order if g in program.groups]
        order += [g for g in program.groups if g not in order]
        return {g: [spec.param_names[n] for n in program.groups[g]] for g in order}

    def truncates_backward(self, stage: int) -> bool:
        """True when the stage produces no input gradient (e.g. token ids), so a frozen prefix
        of its groups cuts its backward short (see passes.split_weight_grad)."""
        return not any(self.programs[stage].input_requires_grad)

    def group_costs(self, stage: int) -> dict[str, float]:
        """Weight-gradient FLOPs per group of a local stage (relative W cost)."""
        return {g: float(f) for g, f in self.programs[stage].region_flops.items()}

    # -- training -------------------------------------------------------------------------
    def _check_frozen(self, frozen: Mapping) -> dict:
        checked = {}
        for key, groups in frozen.items():
            stage, microbatch = key
            if not 0 <= microbatch < self.num_microbatches or not 0 <= stage < self.num_stages:
                raise RuntimeConfigError(
                    f"frozen key {key} is outside stages 0..{self.num_stages - 1} x "
                    f"microbatches 0..{self.num_microbatches - 1}"
                )
            if stage not in self.programs:
                continue
            groups = frozenset(groups)
            unknown = groups - set(self.programs[stage].groups)
            if unknown:
                raise GroupError(
                    f"frozen groups {sorted(unknown)} are not groups of stage {stage}; its "
                    f"groups are {list(self.programs[stage].groups)}"
                )
            checked[(stage, microbatch)] = groups
        return checked

    def step(self, inputs, targets=None, frozen: Mapping | None = None):
        """One training step; returns the mean microbatch loss on the last stage's rank.

        Gradients accumulate into the parameters' .grad (each microbatch's loss is scaled by
        1/microbatches, so they equal eager accumulation of the mean loss).
        """
        decided = self.freezer.before_step() if self.freezer is not None else {}
        frozen = self._check_frozen(decided if frozen is None else frozen)
        self.last_frozen = frozen
        M = self.num_microbatches
        try:
            stage_inputs, target_mbs = self._microbatches(inputs, targets)
            seed = torch.tensor(
                1.0 / M, dtype=self.example_shapes["loss_dtype"], device=self.device
            )
            losses = self.runner.run_step(
                self.step_index, self.order, stage_inputs, target_mbs, frozen, seed, self.lookahead
            )
            self._reduce_tied_grads()
        except BaseException as exc:
            if self.failure is not None:
                self.failure.report(
                    self.rank, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                )
            raise
        self.step_index += 1
        loss = torch.stack([losses[m] for m in range(M)]).mean().item() if losses else None
        if self.freezer is not None:
            self.freezer.after_step(self.last_step_seconds(), loss, frozen=frozen)
        return loss

    @torch.no_grad()
    def evaluate(self, inputs, targets=None) -> float:
        """Mean loss of a batch, forward only, without touching gradients or the profile.

        Collective under torchrun; every rank gets the loss.
        """
        M = self.num_microbatches
        stage_inputs, target_mbs = self._microbatches(inputs, targets)
        order = forward_only_order(self.schedule.programs, self.local_stages)
        try:
            losses = self.runner.run_step(
                -1, order, stage_inputs, target_mbs, {}, None, self.lookahead, timed=False
            )
        finally:
            for program in self.programs.values():
                program.release()
        local = torch.stack([losses[m] for m in range(M)]).mean().item() if losses else None
        return next(v for v in self._gather(local) if v is not None)

    def _microbatches(self, inputs, targets):
        M = self.num_microbatches
        stage_inputs = (
            [tuple(t.to(self.device) for t in mb) for mb in _split_batch(inputs, M, "input")]
            if 0 in self.programs
            else []
        )
        target_mbs = None
        if self.num_stages - 1 in self.programs:
            if targets is None:
                raise RuntimeConfigError("the last stage needs targets: step(inputs, targets)")
            target_mbs = [mb[0].to(self.device) for mb in _split_batch(targets, M, "target")]
        return stage_inputs, target_mbs

    def _reduce_tied_grads(self) -> None:
        for names, group in self._tied_groups:
            for name in names:
                param = self._local_param_names[name]
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad, group=group)

    # -- measurement ----------------------------------------------------------------------
    def last_step_seconds(self) -> float:
        parts = self.timer.last_step()
        if not parts:
            return 0.0
        return max(p.end for p in parts) - min(p.start for p in parts)

    def all_gather_object(self, value) -> list:
        """`value` from every rank, in rank order (collective under torchrun)."""
        return self._gather(value)

    def _gather(self, value):
        if not self.distributed:
            return [value]
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered

    def measured_profile(self, window: int | None = None, frozen: str | None = None) -> dict:
        """Median F, I, W per stage (ms) and comm over the last `window` steps, all ranks.

        `frozen` ("none", "some", "all") restricts I and W to backward parts run with that
        much of their stage frozen. Collective under torchrun: every rank must call it at the
        same step.
        """
        local = (self.timer.window(window), self.timer.window_arrivals(window))
        gathered = self._gather(local)
        parts = [p for g in gathered for p in g[0]]
        arrivals = [a for g in gathered for a in g[1]]
        return median_profile(parts, arrivals, self.num_stages, frozen)

    def profile(self, window: int | None = None):
        """The measured cost profile as the planner's CostProfile (collective)."""
        from tfcompile.schedule.costs import CostProfile

        return CostProfile.from_dict(self.measured_profile(window))

    def step_times(self, window: int | None = None) -> list[float]:
        """Wall-clock seconds of the last steps on this rank (first action start to last end)."""
        out = []
        for step in list(self.timer.records)[-(window or len(self.timer.records)) :]:
            if step:
                out.append(max(p.end for p in step) - min(p.start for p in step))
        return out

    def write_trace(self, path: str | os.PathLike, predicted: bool = True) -> dict | None:
        """Chrome/Perfetto trace of the last step as measured on every rank (collective).

        With `predicted`, the planner's simulation of the same step from the measured profile
        is added as extra processes ("predicted rank r") for a side-by-side view.
        """
        parts = [p for g in self._gather(self.timer.last_step()) for p in g]
        profile = self.measured_profile()
        if self.rank != 0:
            return None
        origin = min(p.start for p in parts)
        events = []
        for rank in range(self.schedule.num_ranks):
            events.append(
                {
                    "name": "process_name",
                    "ph": "M",
                    "pid": rank,
                    "args": {"name": f"measured rank {rank}"},
                }
            )
        frozen_counts = {k: len(v) for k, v in self.last_frozen.items()}
        for p in parts:
            events.append(
                {
                    "name": f"{p.stage}{p.part}{p.microbatch}",
                    "ph": "X",
                    "pid": p.rank,
                    "tid": p.stage,
                    "ts": 1e6 * (p.start - origin),
                    "dur": 1e6 * p.seconds,
                    "cat": p.part,
                    "args": {
                        "stage": p.stage,
                        "microbatch": p.microbatch,
                        "frozen_groups": frozen_counts.get((p.stage, p.microbatch), 0),
                    },
                }
            )
        if predicted:
            from tfcompile.schedule.simulate import simulate

            timeline = simulate(self.execution_schedule, profile)
            base = self.schedule.num_ranks
            for rank in range(self.schedule.num_ranks):
                events.append(
                    {
                        "name": "process_name",
                        "ph": "M",
                        "pid": base + rank,
                        "args": {"name": f"predicted rank {rank}"},
                    }
                )
            for action, start in timeline.start.items():
                rank = self.schedule.stage_to_rank[action.stage]
                events.append(
                    {
                        "name": str(action),
                        "ph": "X",
                        "pid": base + rank,
                        "tid": action.stage,
                        "ts": 1e3 * start,
                        "dur": 1e3 * (timeline.end[action] - start),
                        "cat": action.kind,
                    }
                )
        trace = {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"profile": profile}}
        with open(path, "w") as f:
            json.dump(trace, f)
        return trace

    def close(self) -> None:
        """Leave the process group in a clean state (a barrier), where there is one."""
        if self.distributed:
            dist.barrier()
        if self.failure is not None:
            self.failure.stop()


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

            pipe.freezer = Freezer(freeze, pipe)
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
