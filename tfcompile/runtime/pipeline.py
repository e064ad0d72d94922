"""`Pipeline`: one rank's share of a compiled pipeline, the object users train with.

`tfcompile.compile()` builds it; `Pipeline.step` runs one training step of the schedule over
this rank's traced stages and leaves gradients on the parameters for the user's optimizer.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from tfcompile.errors import GroupError, RuntimeConfigError
from tfcompile.runtime.executor import StepRunner, forward_only_order
from tfcompile.runtime.timers import ActionTimer, median_profile
from tfcompile.runtime.transport import TensorSpec
from tfcompile.schedules.actions import Action, Schedule
from tfcompile.schedules.profile import CostProfile
from tfcompile.split import StageSpec

if TYPE_CHECKING:  # annotations only: the runtime does not import the controller or tracer
    from tfcompile.freeze.controller import Freezer
    from tfcompile.runtime.transport import DistTransport, FailureSignal, LocalTransport
    from tfcompile.trace import StageProgram

    Transport = DistTransport | LocalTransport

#: Steps of timings a pipeline keeps when no freezer asks for a longer monitoring window.
DEFAULT_TIMER_WINDOW = 50


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
    """A compiled pipeline: this rank's traced stages and its share of the schedule.

    `tfcompile.compile()` builds it; every field is given to the constructor and none is
    patched afterwards. The freezing controller needs the finished pipeline (its stages,
    groups and measurements), so it is passed as `freezer_factory(pipe) -> Freezer`, called
    last in the constructor.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        schedule: Schedule,
        specs: Sequence[StageSpec],
        stage_programs: Mapping[int, StageProgram],
        rank: int,
        device: torch.device,
        transport: Transport,
        order: Sequence[Action],
        grad_specs: Mapping[int, tuple[TensorSpec, ...]],
        loss_dtype: torch.dtype,
        distributed: bool,
        lookahead: int,
        timer_window: int = DEFAULT_TIMER_WINDOW,
        failure: FailureSignal | None = None,
        tied_groups: Sequence[tuple[list[str], Any]] = (),
        freezer_factory: Callable[[Pipeline], Freezer] | None = None,
    ) -> None:
        """`stage_programs` are this rank's traced stages (stage -> StageProgram) and `order`
        the actions this process runs per step. `grad_specs[stage]` describe the gradients a
        local stage sends for its inputs (zeros when one is None); `loss_dtype` is the dtype
        of the last stage's loss (the backward seed). `timer_window` is how many steps of
        timings are kept (a freezer's monitoring window must fit). `failure` is the
        cross-rank failure signal under torchrun; `tied_groups` pairs the model names of
        parameters held on several ranks with the process group that sums their gradients."""
        self.model = model
        self.schedule = schedule
        self.specs = list(specs)
        self.stage_programs = dict(stage_programs)
        self.rank = rank
        self.device = device
        self.transport = transport
        self.order = list(order)
        self.distributed = distributed
        self.lookahead = lookahead
        self.loss_dtype = loss_dtype
        self.failure = failure
        self.tied_groups = list(tied_groups)
        self.step_index = 0
        self._execution_schedule: Schedule | None = None
        self.timer = ActionTimer(device, rank, window=timer_window)
        self.last_frozen: dict = {}
        local_grad_specs = {stage: grad_specs[stage] for stage in self.stage_programs}
        self.runner = StepRunner(
            self.stage_programs, schedule.num_stages, transport, self.timer, local_grad_specs
        )
        if hasattr(transport, "on_arrival"):
            transport.on_arrival = lambda key: self.timer.arrival(key[0], key[1], key[2])
        self._local_param_names = self._collect_local_params()
        self.freezer: Freezer | None = (
            freezer_factory(self) if freezer_factory is not None else None
        )

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
        return sorted(self.stage_programs)

    @property
    def has_first_stage(self) -> bool:
        """True when this rank holds stage 0 (it takes the batch's inputs)."""
        return 0 in self.stage_programs

    @property
    def has_last_stage(self) -> bool:
        """True when this rank holds the last stage (it computes the loss, needs targets)."""
        return self.num_stages - 1 in self.stage_programs

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
        spec, program = self.specs[stage], self.stage_programs[stage]
        order = [g for g in program.group_order if g in program.groups]
        order += [g for g in program.groups if g not in order]
        return {g: [spec.param_names[n] for n in program.groups[g]] for g in order}

    def truncates_backward(self, stage: int) -> bool:
        """True when the stage produces no input gradient (e.g. token ids), so a frozen prefix
        of its groups cuts its backward short (see passes.split_weight_grad)."""
        return not any(self.stage_programs[stage].input_requires_grad)

    def group_costs(self, stage: int) -> dict[str, float]:
        """Weight-gradient FLOPs per group of a local stage (relative W cost)."""
        return {g: float(f) for g, f in self.stage_programs[stage].region_flops.items()}

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
            if stage not in self.stage_programs:
                continue
            groups = frozenset(groups)
            unknown = groups - set(self.stage_programs[stage].groups)
            if unknown:
                raise GroupError(
                    f"frozen groups {sorted(unknown)} are not groups of stage {stage}; its "
                    f"groups are {list(self.stage_programs[stage].groups)}"
                )
            checked[(stage, microbatch)] = groups
        return checked

    def step(self, inputs, targets=None, frozen: Mapping | None = None):
        """One training step; returns the mean microbatch loss on the last stage's rank.

        Gradients accumulate into the parameters' .grad (each microbatch's loss is scaled by
        1/microbatches, so they equal eager accumulation of the mean loss).
        """
        decided = {}
        if self.freezer is not None:
            need = self.freezer.measurement_due(self.step_index)
            profile = self.measured_profile(*need) if need else None  # collective
            decided = self.freezer.before_step(self.step_index, profile)
        frozen = self._check_frozen(decided if frozen is None else frozen)
        self.last_frozen = frozen
        M = self.num_microbatches
        # grad="rescale": each use (stage, group) is scaled by its own count inside the
        # backward, before tied uses are summed or all-reduced
        scales = self.freezer.grad_scales(frozen) if self.freezer is not None else {}
        for stage, program in self.stage_programs.items():
            program.grad_scale = {g: f for (s, g), f in scales.items() if s == stage}
        try:
            stage_inputs, target_mbs = self._microbatches(inputs, targets)
            seed = torch.tensor(1.0 / M, dtype=self.loss_dtype, device=self.device)
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
            for program in self.stage_programs.values():
                program.release()
        local = torch.stack([losses[m] for m in range(M)]).mean().item() if losses else None
        return next(v for v in self._gather(local) if v is not None)

    def _microbatches(self, inputs, targets):
        M = self.num_microbatches
        stage_inputs = (
            [tuple(t.to(self.device) for t in mb) for mb in _split_batch(inputs, M, "input")]
            if self.has_first_stage
            else []
        )
        target_mbs = None
        if self.has_last_stage:
            if targets is None:
                raise RuntimeConfigError("the last stage needs targets: step(inputs, targets)")
            target_mbs = [mb[0].to(self.device) for mb in _split_batch(targets, M, "target")]
        return stage_inputs, target_mbs

    def _reduce_tied_grads(self) -> None:
        """Sum the gradients of parameters held on several ranks. The ranks first agree which
        of them got a gradient anywhere: one that got none (frozen in every use) keeps .grad
        None on every rank, so an optimizer leaves it alone; a rank without a gradient for
        one that did joins with zeros."""
        for names, group in self.tied_groups:
            params = [self._local_param_names[name] for name in names]
            has = torch.tensor(
                [p.grad is not None for p in params], dtype=torch.int32, device=params[0].device
            )
            dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
            for param, any_grad in zip(params, has.tolist()):
                if not any_grad:
                    continue
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

    def measured_profile(self, window: int | None = None, frozen: str | None = None) -> CostProfile:
        """Median F, I, W per stage (ms) and comm over the last `window` steps, all ranks.

        `frozen` ("none", "some", "all") restricts I and W to backward parts run with that
        much of their stage frozen. Collective under torchrun: every rank must call it at the
        same step.
        """
        local = (self.timer.window(window), self.timer.window_arrivals(window))
        gathered = self._gather(local)
        parts = [p for g in gathered for p in g[0]]
        arrivals = [a for g in gathered for a in g[1]]
        return CostProfile.from_dict(median_profile(parts, arrivals, self.num_stages, frozen))

    def profile(self, window: int | None = None) -> CostProfile:
        """Same as :meth:`measured_profile` with nothing frozen (collective)."""
        return self.measured_profile(window)

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
        is added as extra processes ("predicted rank r") for a side-by-side view. The layout
        is `schedules.export.measured_trace`'s, the one trace writer.
        """
        from tfcompile.schedules.export import measured_trace
        from tfcompile.schedules.simulate import simulate

        parts = [p for g in self._gather(self.timer.last_step()) for p in g]
        profile = self.measured_profile()
        if self.rank != 0:
            return None
        trace = measured_trace(
            parts,
            num_ranks=self.schedule.num_ranks,
            frozen_counts={k: len(v) for k, v in self.last_frozen.items()},
            predicted=simulate(self.execution_schedule, profile) if predicted else None,
            other_data={"profile": profile.to_dict()},
        )
        with open(path, "w") as f:
            json.dump(trace, f)
        return trace

    def close(self) -> None:
        """Leave the process group in a clean state (a barrier), where there is one."""
        if self.distributed:
            dist.barrier()
        if self.failure is not None:
            self.failure.stop()


__all__ = ["Pipeline"]
