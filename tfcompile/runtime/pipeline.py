"""`Pipeline`: one rank's share of a compiled pipeline, the object users train with.

`tfcompile.compile()` builds it; `Pipeline.step` runs one training step of the schedule over
this rank's traced stages and leaves gradients on the parameters for the user's optimizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from tfcompile import _torch_compat as compat
from tfcompile import validate
from tfcompile.errors import GroupError, RuntimeConfigError
from tfcompile.runtime.collectives import guarded
from tfcompile.runtime.executor import StepRunner, forward_only_order
from tfcompile.runtime.memory import memory_stats
from tfcompile.runtime.timers import ActionTimer, median_profile
from tfcompile.runtime.transport import TensorSpec
from tfcompile.schedules.actions import Action, Schedule
from tfcompile.schedules.profile import CostProfile
from tfcompile.split import StageSpec

if TYPE_CHECKING:  # annotations only: the runtime does not import the controller or tracer
    from tfcompile.freeze.controller import Freezer
    from tfcompile.program import StageProgram
    from tfcompile.runtime.data_parallel import ParallelMesh
    from tfcompile.runtime.transport import DistTransport, FailureSignal, LocalTransport

    Transport = DistTransport | LocalTransport

#: Steps of timings a pipeline keeps when no freezer asks for a longer monitoring window.
DEFAULT_TIMER_WINDOW = 50


def _chunk_microbatches(batch, microbatches: int, what: str) -> list[tuple]:
    """A batch (a tensor or a tuple of tensors) cut along dim 0 into `microbatches` equal,
    contiguous chunks: one tuple per microbatch."""
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


def _check_microbatch(
    got: Sequence[torch.Tensor], specs: Sequence[TensorSpec], M: int, what: str, example: str
) -> None:
    """Refuse microbatches other than compile()'s example, naming both shapes and what to do
    at compile() level (a compiled pipeline has one shape per stage boundary)."""
    if len(got) != len(specs):
        raise RuntimeConfigError(
            f"got {len(got)} {what} tensors, but the pipeline was compiled with {len(specs)} "
            f"({example}): pass one batch tensor per {example} tensor"
        )
    for i, (t, spec) in enumerate(zip(got, specs)):
        shape = tuple(t.shape)
        if shape == tuple(spec.shape) and t.dtype == spec.dtype:
            continue
        name = what if len(specs) == 1 else f"{what} {i}"
        if t.dtype != spec.dtype:
            raise RuntimeConfigError(
                f"{name} has dtype {t.dtype}, but the pipeline was compiled for {spec.dtype} "
                f"({example}): pass {spec.dtype} {what}s, or call tfcompile.compile() again "
                f"with {example} of that dtype"
            )
        rows = spec.shape[0] * M if spec.shape else M
        same_rest = shape[1:] == tuple(spec.shape[1:])
        batch_shape = (rows, *spec.shape[1:])
        do = f"batches of {rows} rows" if same_rest else f"batches of shape {batch_shape}"
        raise RuntimeConfigError(
            f"{name}: the batch splits into {M} microbatches of shape {shape}, but the "
            f"pipeline was compiled for microbatches of shape {tuple(spec.shape)} (its "
            f"{example} are one microbatch): pass {do}, or call tfcompile.compile() again with "
            f"{example} of one microbatch of the new shape"
        )


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
        forward_only_stages: Collection[int] = (),
        loss_fn: Callable | None = None,
        eval_tracer: Callable[[int], StageProgram] | None = None,
        parallel: ParallelMesh | None = None,
    ) -> None:
        """`stage_programs` are this rank's traced stages (stage -> StageProgram) and `order`
        the actions this process runs per step. `grad_specs[stage]` describe the gradients a
        local stage sends for its inputs (zeros when one is None); `loss_dtype` is the dtype
        of the last stage's loss (the backward seed). `timer_window` is how many steps of
        timings are kept (a freezer's monitoring window must fit). `failure` is the
        cross-rank failure signal under torchrun; `tied_groups` pairs the model names of
        parameters held on several ranks with the process group that sums their gradients.
        `forward_only_stages` (all ranks' stages that take no part in the backward: nothing in
        or before them trains) run forward only and get no gradient messages. `eval_tracer(s)`
        traces local stage `s` into a forward-only evaluation program in the current module
        modes and autocast state (the last stage without its loss, `loss_fn` is applied by
        :meth:`evaluate`). `parallel` places the pipeline on a (dp, pp) mesh (None: the whole
        world is this one pipeline); gradients are then averaged over dp after each step."""
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
        self.forward_only_stages = frozenset(forward_only_stages)
        self.loss_fn = loss_fn
        self._eval_tracer = eval_tracer
        self._eval_programs: dict[tuple, dict[int, StageProgram]] = {}
        local_grad_specs = {stage: grad_specs[stage] for stage in self.stage_programs}
        self.runner = StepRunner(
            self.stage_programs,
            schedule.num_stages,
            transport,
            self.timer,
            local_grad_specs,
            forward_only=self.forward_only_stages,
        )
        if hasattr(transport, "on_arrival"):
            transport.on_arrival = lambda key: self.timer.arrival(key[0], key[1], key[2])
        self._local_param_names = self._collect_local_params()
        self.parallel = parallel
        self._reducer = self._make_reducer()
        #: the step at which load_checkpoint started the freezer over (a changed layout: its
        #: warm-up is longer by this many steps); 0 when it never did
        self.freeze_restart_step = 0
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
        local = {n: params[n] for n in model_order if n in params}
        # kind 4: an nn.Module loss_fn's parameters (a learnable temperature) belong to the
        # last stage; its program holds them as "loss_fn.<name>"
        last = self.stage_programs.get(self.num_stages - 1)
        if last is not None:
            from tfcompile.lifting import LOSS_PREFIX

            for n in last.traced.param_names:
                if n.startswith(LOSS_PREFIX) and n not in self.specs[-1].param_names:
                    local.setdefault(n, last.traced.params[n])
        return local

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
        return {g: [spec.param_names.get(n, n) for n in program.groups[g]] for g in order}

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

        The stage programs are fixed to the context of compile(): a step after
        ``model.eval()`` (or another ``.train()/.eval()`` pattern), under a torch.autocast
        other than compile()'s, or with gradients disabled (``torch.no_grad()``) is refused
        with RuntimeConfigError before anything runs. Use :meth:`evaluate` for evaluation.
        """
        # refused before anything runs (freezer, measurement, actions); under torchrun the
        # refusal reaches the peer ranks through the failure signal
        with self._reporting_failures():
            self._check_step_context()
            stage_inputs, target_mbs = self._split_microbatches(inputs, targets)
        validate.check_frozen(frozen)
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
        with self._reporting_failures(with_traceback=True):
            seed = torch.tensor(1.0 / M, dtype=self.loss_dtype, device=self.device)
            self._begin_dp_reduction(frozen)
            try:
                losses = self.runner.run_step(
                    self.step_index, self.order, stage_inputs, target_mbs, frozen, seed,
                    self.lookahead,
                )  # fmt: skip
                if self._reducer is not None:
                    with guarded(self.failure, self.rank, "the data-parallel all_reduce"):
                        self._reducer.finish()  # dp average before the tied sum (both linear)
            finally:
                self.runner.on_action_done = None
                if self._reducer is not None:
                    self._reducer.abandon()
            with guarded(self.failure, self.rank, "the tied-gradient all_reduce"):
                self._reduce_tied_grads()
        self.step_index += 1
        loss = torch.stack([losses[m] for m in range(M)]).mean().item() if losses else None
        if self.freezer is not None:
            self.freezer.after_step(self.last_step_seconds(), loss, frozen=frozen)
        return loss

    # -- data parallelism -------------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        """This replica's index among the dp replicas (0 without data parallelism): the shard
        of the global batch that :meth:`step` should be given."""
        return self.parallel.dp_rank if self.parallel is not None else 0

    @property
    def dp_size(self) -> int:
        """Number of pipeline replicas (1 without data parallelism)."""
        return self.parallel.dp_size if self.parallel is not None else 1

    @property
    def pp_group(self):
        """Process group of this replica's pipeline ranks (None: the default group)."""
        return self.parallel.pp_group if self.parallel is not None else None

    def _make_reducer(self):
        """Averages gradients over dp (None without data parallelism); see data_parallel."""
        if self.parallel is None or self.parallel.dp_size == 1:
            return None
        from tfcompile.runtime.data_parallel import GradReducer

        holders: dict[str, list[int]] = {n: [] for n in self._local_param_names}
        for stage in self.local_stages:
            names = set(self.specs[stage].param_names.values())
            if stage == self.num_stages - 1:  # an nn.Module loss_fn's parameters
                names |= set(self._local_param_names) - set(self._model_param_names())
            for n in names & set(holders):
                holders[n].append(stage)
        return GradReducer(
            self._local_param_names,
            holders,
            {s: self.stage_groups(s) for s in self.local_stages},
            self.parallel.dp_group,
            self.parallel.dp_size,
        )

    def _model_param_names(self) -> set[str]:
        return {n for spec in self.specs for n in spec.param_names.values()}

    def _begin_dp_reduction(self, frozen: Mapping) -> None:
        if self._reducer is None:
            return
        order = [a for a in self.order if a.kind == "F" or a.stage not in self.forward_only_stages]
        self._reducer.begin_step(order, frozen, self.num_microbatches)
        self.runner.on_action_done = self._reducer.action_done

    def comm_stats(self) -> dict[str, int]:
        """Gradient reduction of the last step on this rank: ``bytes_reduced`` (gradient
        bytes all-reduced over dp), ``buckets`` (``buckets_overlapped``: started while this
        rank still had actions of the step to run), ``params_reduced``, ``params_skipped_frozen``
        and ``bytes_skipped_frozen`` (parameters of groups frozen in every microbatch of the
        step on this rank's stages: not reduced at all), ``groups_skipped``, ``dp_size``.
        Zeros without data parallelism."""
        if self._reducer is None or not self._reducer.stats:
            return {"bytes_reduced": 0, "buckets": 0, "dp_size": self.dp_size}
        return dict(self._reducer.stats)

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradients of the whole model (all pp and dp ranks) to total norm
        ``max_norm``; returns the total norm (0-d float32 tensor), as
        ``torch.nn.utils.clip_grad_norm_`` on the whole eager model would (tied weights
        counted once, parameters without .grad absent; ``norm_type`` may be ``inf``).
        Collective under torchrun: every rank calls it after :meth:`step`."""
        from tfcompile.runtime.data_parallel import clip_grad_norm_

        counted = dict(self._local_param_names)
        rank = dist.get_rank() if self.distributed else 0
        for names, group in self.tied_groups:  # a tied weight counts on its lowest rank
            if rank != min(dist.get_process_group_ranks(group)):
                for name in names:
                    counted.pop(name, None)
        return clip_grad_norm_(
            list(self._local_param_names.values()),
            list(counted.values()),
            max_norm,
            norm_type,
            self.pp_group,
            self.distributed,
        )

    def _check_step_context(self) -> None:
        """A training step runs in compile()'s context (see :meth:`step`)."""
        if not torch.is_grad_enabled():
            raise RuntimeConfigError(
                "Pipeline.step computes gradients but gradients are disabled here "
                "(torch.no_grad()/inference_mode): call step outside it, or use "
                "pipe.evaluate() for a forward-only pass"
            )
        for stage, program in self.stage_programs.items():
            try:
                program.check_context()
            except RuntimeConfigError as e:
                raise RuntimeConfigError(
                    f"stage {stage}: {e}. Pipeline.step runs the programs traced at "
                    "compile(): call model.train() (the mode compile() saw) before step, and "
                    "step in the same torch.autocast context as compile(); pipe.evaluate() "
                    "honours the current mode"
                ) from None

    @torch.no_grad()
    def evaluate(self, inputs, targets=None, *, return_outputs: bool = False):
        """Mean loss of a batch, forward only, without touching gradients, buffers or the
        profile. Collective under torchrun; every rank gets the loss.

        Evaluation uses the model's *current* mode: after ``model.eval()`` dropout is off and
        BatchNorm uses its running statistics; in training mode dropout is on and batch
        statistics are used, but running statistics are never updated. It runs forward-only
        programs traced on first use per pattern of the stage modules' training flags and
        the ambient autocast state (cached), not the training programs. With
        ``return_outputs=True`` it returns ``(loss, outputs)``: the last stage's outputs
        (e.g. logits) of the whole batch, microbatches concatenated along dim 0, on the last
        stage's rank (None on the others).
        """
        M = self.num_microbatches
        stage_inputs, target_mbs = self._microbatches(inputs, targets)
        order = forward_only_order(self.schedule.programs, self.local_stages)
        programs = dict(self._eval_stage_programs())
        last = self.num_stages - 1
        if last in programs:
            programs[last] = _EvalLastStage(programs[last], self.loss_fn)
        runner = StepRunner(programs, self.num_stages, self.transport, self.timer, {})
        try:
            losses = runner.run_step(
                -1, order, stage_inputs, target_mbs, {}, None, self.lookahead, timed=False
            )
        finally:
            for program in programs.values():
                program.release()
        local = torch.stack([losses[m] for m in range(M)]).mean().item() if losses else None
        # one loss per replica (its last stage's rank): their mean is the global batch's
        replica_losses = [v for v in self._gather(local) if v is not None]
        loss = sum(replica_losses) / len(replica_losses)
        if not return_outputs:
            return loss
        outputs = programs[last].gathered_outputs(M) if last in programs else None
        return loss, outputs

    def _eval_stage_programs(self) -> dict[int, StageProgram]:
        """Forward-only programs of the local stages for the current module modes and autocast
        state, traced on first use and cached per pattern."""
        from tfcompile.program import autocast_state, training_flags

        if self._eval_tracer is None:
            raise RuntimeConfigError(
                "this Pipeline was built without an eval_tracer: build it with "
                "tfcompile.compile() to evaluate"
            )
        key = (
            tuple(training_flags(self.specs[s].module) for s in self.local_stages),
            autocast_state(),
        )
        programs = self._eval_programs.get(key)
        if programs is None:
            programs = {s: self._eval_tracer(s) for s in self.local_stages}
            self._eval_programs[key] = programs
        return programs

    def _microbatches(self, inputs, targets):
        """The batch's inputs and targets split into microbatches, checked against the shapes
        and dtypes compile() traced for (one microbatch of its example_inputs/example_target):
        a pipeline has static shapes, so others are refused here, in compile()'s terms. Under
        torchrun a refusal reaches the peer ranks through the failure signal."""
        with self._reporting_failures():
            return self._split_microbatches(inputs, targets)

    @contextlib.contextmanager
    def _reporting_failures(self, with_traceback: bool = False) -> Iterator[None]:
        """Publish an exception raised inside to the other ranks (torchrun's failure signal),
        so that they raise its root cause instead of waiting for this rank until the timeout."""
        try:
            yield
        except BaseException as exc:
            if self.failure is not None:
                text = f"{type(exc).__name__}: {exc}"
                self.failure.report(
                    self.rank, f"{text}\n{traceback.format_exc()}" if with_traceback else text
                )
            raise

    def _split_microbatches(self, inputs, targets):
        M = self.num_microbatches
        if self.has_first_stage:
            validate.check_tensors(inputs, "inputs", "a batch like example_inputs")
        if self.has_last_stage and targets is not None:
            validate.check_tensors(targets, "targets", "a batch like example_target")
        stage_inputs = []
        if self.has_first_stage:
            chunks = _chunk_microbatches(inputs, M, "input")
            stage_inputs = [tuple(t.to(self.device) for t in mb) for mb in chunks]
            specs = self.stage_programs[0].traced.input_specs
            _check_microbatch(stage_inputs[0], specs, M, "input", "example_inputs")
        target_mbs = None
        if self.has_last_stage:
            if targets is None:
                raise RuntimeConfigError("the last stage needs targets: step(inputs, targets)")
            traced = self.stage_programs[self.num_stages - 1].traced
            leaves, tree = compat.tree_flatten(targets)
            if traced.target_spec is not None and tree != traced.target_spec:
                raise RuntimeConfigError(
                    f"targets are structured as {tree}, but the pipeline was compiled with "
                    f"example_target structured as {traced.target_spec}: pass targets of "
                    "the same structure (a tensor, tuple or dict like example_target)"
                )
            chunks = _chunk_microbatches(tuple(leaves), M, "target")
            _check_microbatch(chunks[0], traced.target_specs, M, "target", "example_target")
            target_mbs = [
                compat.tree_unflatten([t.to(self.device) for t in mb], tree) for mb in chunks
            ]
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
        with guarded(self.failure, self.rank, "all_gather"):
            dist.all_gather_object(gathered, value)
        return gathered

    def measured_profile(self, window: int | None = None, frozen: str | None = None) -> CostProfile:
        """Median F, I, W per stage (ms) and comm over the last `window` steps, all ranks.

        `frozen` ("none", "some", "all") restricts I and W to backward parts run with that
        much of their stage frozen. "paired" returns the "all" profile with the "none" profile
        of the same steps in ``meta["unfrozen"]`` (a window where some microbatches froze
        everything and the others nothing: both measured under the same machine conditions).
        Collective under torchrun: every rank must call it at the same step.
        """
        local = (self.timer.window(window), self.timer.window_arrivals(window))
        gathered = self._gather(local)
        parts = [p for g in gathered for p in g[0]]
        arrivals = [a for g in gathered for a in g[1]]
        if frozen == "paired":
            profile = median_profile(parts, arrivals, self.num_stages, "all")
            unfrozen = median_profile(parts, arrivals, self.num_stages, "none")
            return CostProfile.from_dict({**profile, "meta": {"unfrozen": unfrozen}})
        return CostProfile.from_dict(median_profile(parts, arrivals, self.num_stages, frozen))

    def memory_stats(self) -> dict[str, int]:
        """This rank's memory in bytes: ``peak_bytes`` (CUDA peak allocated, or the process's
        peak RSS on CPU), ``activation_bytes`` (kept for pending backwards now: between
        steps 0) and ``recv_buffer_bytes`` (receive buffers allocated, bounded per stage
        boundary by the schedule's in-flight microbatches). See ``runtime/memory.py``."""
        return memory_stats(self.stage_programs.values(), self.transport, self.device)

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
        if self.rank != 0 or self.dp_rank != 0:  # one writer (replica 0's first rank)
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
            with guarded(self.failure, self.rank, "close()'s barrier"):
                dist.barrier()
        if self.failure is not None:
            self.failure.stop()


class _EvalLastStage:
    """The last stage in evaluation: its forward-only program (traced without the loss) plus
    ``loss_fn`` applied eagerly to each microbatch's outputs, which are kept for
    ``evaluate(return_outputs=True)``."""

    groups: dict = {}

    def __init__(self, program: StageProgram, loss_fn: Callable | None) -> None:
        if loss_fn is None:
            raise RuntimeConfigError("evaluate needs the pipeline's loss_fn (from compile())")
        self.program = program
        self.loss_fn = loss_fn
        self.outputs: dict[int, Any] = {}

    def forward(self, mb: int, *inputs, target=None):
        out = self.program.forward(mb, *inputs)
        self.outputs[mb] = out
        return self.loss_fn(out, target)

    def gathered_outputs(self, microbatches: int):
        flat = [compat.tree_flatten(self.outputs[m]) for m in range(microbatches)]
        leaves = [torch.cat(parts) for parts in zip(*(f[0] for f in flat))]
        return compat.tree_unflatten(leaves, flat[0][1])

    def release(self) -> None:
        self.program.release()


__all__ = ["Pipeline"]
