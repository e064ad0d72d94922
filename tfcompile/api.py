"""`tfcompile.compile(model, schedule=...)` -> Pipeline: the user-facing training object.

compile() is the composition root: it resolves the schedule, splits the model into stages,
traces only this rank's stages into StagePrograms, wires them to a transport
(torch.distributed point-to-point under torchrun, or an in-process mailbox when all stages live
in one process) and hands everything to `runtime.Pipeline`. Each step is a named function
below. `Pipeline.step` runs one training step and leaves gradients on the parameters for the
user's optimizer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tfcompile import _torch_compat as compat
from tfcompile import adapters, schedules, validate
from tfcompile.compile_backend import make_backend
from tfcompile.errors import RuntimeConfigError, TraceError
from tfcompile.freeze.config import FreezeConfig
from tfcompile.groups import stage_groups
from tfcompile.precision import check_precision, wire_inputs
from tfcompile.runtime import distributed
from tfcompile.runtime.collectives import exit_promptly_on_uncaught_error, guarded
from tfcompile.runtime.data_parallel import ParallelMesh, resolve_mesh
from tfcompile.runtime.executor import interleave
from tfcompile.runtime.pipeline import DEFAULT_TIMER_WINDOW, Pipeline
from tfcompile.runtime.transport import DistTransport, FailureSignal, LocalTransport, TensorSpec
from tfcompile.schedules.actions import Action, Schedule
from tfcompile.split import StageSpec, split_model, stage_example_inputs

DEFAULT_TIMEOUT_S = 300.0
_pipeline_ids = itertools.count()


def _specs(tensors: Sequence[torch.Tensor], device) -> tuple[TensorSpec, ...]:
    """Specs of every tensor of a stage boundary (activations: masks and ids included)."""
    return tuple(TensorSpec(tuple(t.shape), t.dtype, device) for t in tensors)


def _float_specs(tensors: Sequence[torch.Tensor], device) -> tuple[TensorSpec, ...]:
    """Specs of the tensors that get a gradient (floating point), in order: what a gradient
    message holds. Non-float tensors (a boolean mask, position ids) travel without one."""
    return _specs([t for t in tensors if _gets_grad(t)], device)


def _gets_grad(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _to(tree, device):
    """A tensor or pytree of tensors moved to `device`."""
    leaves, spec = compat.tree_flatten(tree)
    return compat.tree_unflatten([t.to(device) for t in leaves], spec)


def compile(  # noqa: A001 - the public name the design asks for
    model: nn.Module,
    schedule: str | os.PathLike | Schedule = "1F1B",
    *,
    stages: int | None = None,
    microbatches: int = 4,
    example_inputs=None,
    loss_fn: Callable | None = None,
    example_target=None,
    split_points: Sequence[str] | None = None,
    groups="block",
    freeze: FreezeConfig | None = None,
    ranks: int | None = None,
    device: torch.device | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    recv_lookahead: int | None = None,
    backend="eager",
    activation_checkpointing: str = "none",
    mixed_precision: str | None = None,
    dp: int | None = None,
    mesh=None,
) -> Pipeline:
    """Compile `model` into a pipeline for this process's rank.

    Under torchrun (WORLD_SIZE > 1) each rank traces only its own stages and talks to the
    others over torch.distributed; otherwise every stage runs in this process (`ranks` then
    says how many pipeline ranks the schedule has). example_inputs and example_target are one
    microbatch's; example_target (and the targets given to step) may be a tensor or a pytree
    of tensors (loss_fn gets the same structure). Stages may pass several tensors, non-float
    ones (a boolean mask, position ids) included: those get no gradient. `schedule` (a name,
    a torch-format CSV path or a Schedule) may be given by position, as in
    ``compile(model, "1F1B", ...)``; every parameter after it is keyword-only.
    `backend` runs each stage's graphs: ``"eager"``, ``"inductor"`` (every graph compiled by
    inductor on first use; see ``tfcompile.compile_backend``) or an ``InductorBackend``
    (``cuda_graphs=True``); ``pipe.stage_programs[s].compile_seconds`` is the time spent.
    `activation_checkpointing` ("none", "full", "selective") chooses which forward values each
    stage saves for its backward (see ``tfcompile/passes/checkpointing.py``).
    ``mixed_precision="bf16"``: float32 parameters and .grad, bfloat16 autocast traced into
    each stage, activations and gradients sent between stages in bfloat16, a float32 loss
    (see ``tfcompile/precision.py``).

    Data parallelism (under torchrun): ``dp=N`` runs N replicas of the pipeline on
    world = N x pp processes (a ``DeviceMesh`` with dims ("dp", "pp") is built with
    ``init_device_mesh``), or pass that ``mesh`` yourself. Each replica's ``step`` takes its own
    share of the global batch (``pipe.dp_rank`` of ``pipe.dp_size``); gradients are averaged
    over dp after the step, groups frozen in every microbatch skip the reduction
    (`tfcompile.runtime.data_parallel`).

    A transformers or PEFT model of a known family is split by its adapter
    (``tfcompile.adapters``): blocks named as in the model, and, when omitted, the family's
    loss (causal LM: next-token cross entropy) and example target.
    """
    precision = check_precision(mixed_precision)
    if example_inputs is not None:
        example_inputs = (
            tuple(example_inputs) if isinstance(example_inputs, (tuple, list))
            else (example_inputs,)
        )
    adapter = adapters.find_adapter(model)
    if adapter is not None and example_inputs is not None:
        loss_fn, example_target = adapters.defaults(adapter, loss_fn, example_target,
                                                    example_inputs)
    if example_inputs is None or loss_fn is None or example_target is None:
        raise RuntimeConfigError(
            "compile needs example_inputs, loss_fn and example_target (one microbatch's)"
        )
    validate.check_compile_args(
        model=model,
        example_inputs=example_inputs,
        example_target=example_target,
        freeze=freeze,
        timeout=timeout,
        recv_lookahead=recv_lookahead,
    )
    proc = _init_process(
        schedule=schedule, stages=stages, ranks=ranks, device=device, timeout=timeout,
        dp=dp, mesh=mesh,
    )  # fmt: skip
    try:
        make_backend(backend, device=proc.device)  # refuse a bad backend before tracing
        sched = schedules.resolve(
            schedule, stages=stages, microbatches=microbatches, ranks=proc.ranks
        )
        _check_schedule(sched, ranks=proc.ranks, stages=stages)
        with _state_kept(model, loss_fn):
            blocks = adapter.blocks(model) if adapter is not None else None
            if adapter is not None:
                adapters.check_composition(model, adapter, blocks, example_inputs)
            specs = split_model(model, sched.num_stages, example_inputs, split_points, blocks)
            stage_inputs = stage_example_inputs(specs, example_inputs)
            # what each stage receives over the wire (bfloat16 activations under "bf16")
            wire = [stage_inputs[0], *(wire_inputs(v, precision) for v in stage_inputs[1:])]
            _check_split(specs, stage_inputs, sched)
            local = (
                sched.stages_of(proc.rank) if proc.distributed else list(range(sched.num_stages))
            )
            forward_only = _forward_only_stages(specs, loss_fn)
            programs, loss_dtype = _trace_local_stages(
                model, specs, stage_inputs, local,
                loss_fn=loss_fn, example_target=example_target, groups=groups,
                device=proc.device, forward_only=forward_only,
                activation_checkpointing=activation_checkpointing, mixed_precision=precision,
                backend=backend,
            )  # fmt: skip
        tied: list = []
        if proc.distributed:
            with guarded(proc.failure, proc.rank, "compile()'s config check (all_gather)"):
                _check_same_config(model, sched, specs, example_inputs, example_target, proc)
            with guarded(proc.failure, proc.rank, "compile()'s process groups (new_group)"):
                tied = distributed.tied_weight_groups(
                    specs, sched.stage_to_rank,
                    replicas=proc.parallel.replicas if proc.parallel is not None else None,
                )  # fmt: skip
        transport, order = _make_transport(sched, wire, proc, timeout=timeout)
        return Pipeline(
            model=model,
            schedule=sched,
            specs=specs,
            stage_programs=programs,
            rank=proc.rank,
            device=proc.device,
            transport=transport,
            order=order,
            grad_specs={s: _float_specs(wire[s], proc.device) for s in range(len(specs))},
            loss_dtype=loss_dtype,
            distributed=proc.distributed,
            lookahead=(recv_lookahead if recv_lookahead is not None else 2 * sched.num_stages + 2),
            timer_window=_timer_window(freeze),
            failure=proc.failure,
            tied_groups=tied,
            freezer_factory=_freezer_factory(freeze),
            forward_only_stages=forward_only,
            loss_fn=loss_fn,
            eval_tracer=_eval_tracer(specs, wire, proc.device, precision),
            parallel=proc.parallel,
        )
    except BaseException as exc:
        if proc.failure is not None:
            proc.failure.report(proc.rank, f"{type(exc).__name__}: {exc}")
        raise


@contextlib.contextmanager
def _state_kept(model: nn.Module, loss_fn: Callable | None):
    """Kind 8: compile() runs the model eagerly on the example inputs (composition check, FLOP
    count, stage example inputs, loss dtype) in whatever mode it is in; give back the user's
    buffers (BatchNorm running stats, num_batches_tracked) and the global RNG state unchanged.
    Buffers are restored by name, after compile may have moved them to the device."""
    modules = [m for m in (model, loss_fn) if isinstance(m, nn.Module)]
    saved = [{n: b.detach().clone() for n, b in m.named_buffers()} for m in modules]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for m, before in zip(modules, saved):
                for n, b in m.named_buffers():
                    if n in before:
                        b.copy_(before[n])
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@dataclass(frozen=True)
class _Process:
    """Where this process stands: its pipeline rank among `ranks`, its device, whether it
    runs under torchrun, and (there) the failure signal shared by the ranks."""

    rank: int
    ranks: int
    device: torch.device
    distributed: bool
    failure: FailureSignal | None
    parallel: ParallelMesh | None = None  # the (dp, pp) mesh under data parallelism


def _init_process(
    *, schedule, stages: int | None, ranks: int | None, device, timeout: float,
    dp: int | None = None, mesh=None,
) -> _Process:  # fmt: skip
    """Join torchrun's process group (WORLD_SIZE > 1), or settle a single-process run's rank
    count: the given `ranks`, else the schedule's own (`schedules.default_ranks`). With `dp`
    or `mesh`, this process is one pipeline rank of one of dp replicas."""
    if distributed.wants_distributed():
        ctx = distributed.init(timeout, device)
        parallel = resolve_mesh(dp, mesh, ctx.world_size, ctx.rank, ctx.device)
        failure = distributed.failure_signal(f"tfcompile/{next(_pipeline_ids)}", timeout)
        failure.start_watchdog(ctx.rank)  # from here on, a blocked rank learns of failures
        exit_promptly_on_uncaught_error()
        if parallel is not None:
            if ranks is not None and ranks != parallel.pp_size:
                raise RuntimeConfigError(
                    f"ranks={ranks} but {ctx.world_size} processes with dp={parallel.dp_size} "
                    f"give {parallel.pp_size} pipeline ranks"
                )
            return _Process(
                parallel.pp_rank, parallel.pp_size, ctx.device, True, failure, parallel
            )
        if ranks is not None and ranks != ctx.world_size:
            raise RuntimeConfigError(
                f"ranks={ranks} but torchrun started {ctx.world_size} processes"
            )
        return _Process(ctx.rank, ctx.world_size, ctx.device, True, failure)
    if (dp or 1) > 1 or mesh is not None:
        raise RuntimeConfigError(
            f"dp={dp} needs one process per (dp, pp) rank: start the script with `torchrun "
            "--nproc-per-node <dp x pp> ...`"
        )
    if ranks is None:
        ranks = schedules.default_ranks(schedule, stages=stages)
    return _Process(0, ranks, torch.device(device or "cpu"), False, None)


def _check_schedule(sched: Schedule, *, ranks: int, stages: int | None) -> None:
    """A given Schedule or CSV file must fit the run: its ranks, and `stages` when given."""
    if sched.num_ranks != ranks:
        raise RuntimeConfigError(
            f"schedule has {sched.num_ranks} ranks but the pipeline runs on {ranks}"
        )
    if stages is not None and sched.num_stages != stages:
        raise RuntimeConfigError(f"schedule has {sched.num_stages} stages, stages={stages}")


def _check_split(
    specs: Sequence[StageSpec], stage_inputs: Sequence[tuple], sched: Schedule
) -> None:
    """The split must give the schedule's stage count, and stages must pass tensors (any
    dtype: non-float ones travel without a gradient)."""
    if len(specs) != sched.num_stages:
        raise RuntimeConfigError(
            f"the split gives {len(specs)} stages but the schedule has {sched.num_stages}"
        )
    for s, values in enumerate(stage_inputs[1:], start=1):
        bad = [type(v).__name__ for v in values if not isinstance(v, torch.Tensor)]
        if bad:
            raise RuntimeConfigError(
                f"stage {s} receives {bad} from stage {s - 1} ({specs[s - 1].block_names[-1]}); "
                "blocks at a stage boundary must return a tensor or a tuple of tensors"
            )


def _trace_local_stages(
    model: nn.Module,
    specs: Sequence[StageSpec],
    stage_inputs: Sequence[tuple],
    local: Sequence[int],
    *,
    loss_fn: Callable,
    example_target,
    groups,
    device: torch.device,
    forward_only: frozenset[int] = frozenset(),
    backend="eager",
    activation_checkpointing: str = "none",
    mixed_precision: str = "fp32",
) -> tuple[dict, torch.dtype]:
    """Trace this process's stages (moved to `device`) into StagePrograms; the last stage
    includes the loss. A stage's inputs get gradients when an earlier stage trains (the stage
    before is not in `forward_only`). Also returns the loss dtype (float32 unless the last
    stage is local and its loss says otherwise), the dtype of the backward seed."""
    from tfcompile.trace import trace_stage

    model_names = {n for n, _ in model.named_parameters()}
    last_stage = len(specs) - 1
    loss_dtype = torch.float32
    programs = {}
    if last_stage in local and isinstance(loss_fn, nn.Module):
        loss_fn.to(device)  # kind 4: its parameters/buffers are inputs of the last stage
        _plain_tensors_to(loss_fn, device)
    for s in local:
        spec = specs[s]
        spec.module.to(device)
        _plain_tensors_to(spec.module, device)
        on_device = tuple(t.detach().to(device) for t in stage_inputs[s])
        inputs = wire_inputs(on_device, mixed_precision) if s > 0 else on_device
        if s > 0 and s - 1 not in forward_only:  # masks and ids travel without gradients
            inputs = tuple(t.requires_grad_(_gets_grad(t)) for t in inputs)
        last = s == last_stage
        target = _to(example_target, device) if last else None
        try:
            programs[s] = trace_stage(
                spec.module,
                inputs,
                loss_fn=loss_fn if last else None,
                example_target=target,
                groups=stage_groups(groups, spec, model_names),
                backend=make_backend(backend, device=device, stage=f"stage {s}"),
                activation_checkpointing=activation_checkpointing,
                mixed_precision=mixed_precision,
            )
        except TraceError as e:  # say which of the model's blocks the stage holds
            raise TraceError(f"stage {s} (blocks {', '.join(spec.block_names)}): {e}") from e
        if last:
            with torch.no_grad():  # on the device the stage now lives on
                out = spec.module(*on_device)
                loss_dtype = loss_fn(out, target).dtype
                if mixed_precision != "fp32":
                    loss_dtype = torch.float32  # the traced loss is cast to float32
    return programs, loss_dtype


def _forward_only_stages(specs: Sequence[StageSpec], loss_fn: Callable) -> frozenset[int]:
    """Stages that take no part in the backward (kind 7): no trainable parameter in them nor
    in any earlier stage, so neither their parameters nor their inputs need a gradient
    (frozen lower layers). Every rank computes the same set from the full split."""
    out = set()
    trains = False
    for s, spec in enumerate(specs):
        trains = trains or any(p.requires_grad for p in spec.module.parameters())
        if s == len(specs) - 1 and isinstance(loss_fn, nn.Module):
            trains = trains or any(p.requires_grad for p in loss_fn.parameters())
        if not trains:
            out.add(s)
    return frozenset(out)


def _eval_tracer(
    specs: Sequence[StageSpec],
    stage_inputs: Sequence[tuple],
    device: torch.device,
    mixed_precision: str = "fp32",
) -> Callable[[int], object]:
    """Traces stage `s` into a forward-only program in the current context (module modes,
    autocast), for Pipeline.evaluate; the last stage without its loss (evaluate applies
    loss_fn to the outputs, which it can also return)."""

    def trace(s: int):
        from tfcompile.program import StageProgram
        from tfcompile.trace import trace_stage

        inputs = tuple(t.detach().to(device) for t in stage_inputs[s])
        traced = trace_stage(
            specs[s].module, inputs, forward_only=True, mixed_precision=mixed_precision
        ).traced
        return StageProgram(traced, update_buffers=False)

    return trace


def _plain_tensors_to(module: nn.Module, device: torch.device) -> None:
    """Kind 4: tensors kept as plain attributes (a causal mask not registered as a buffer)
    trace as graph constants; move them with the module (``Module.to`` moves only parameters
    and buffers), so the constants live on the device the stage runs on."""
    for m in module.modules():
        for attr, v in list(vars(m).items()):
            if (
                not attr.startswith("_")
                and isinstance(v, torch.Tensor)
                and not isinstance(v, nn.Parameter)
                and v.device != torch.device(device)
            ):
                setattr(m, attr, v.to(device))


def _check_same_config(
    model: nn.Module,
    sched: Schedule,
    specs: Sequence[StageSpec],
    example_inputs: tuple,
    example_target,
    proc: _Process,
) -> None:
    """Every rank must have compiled the same pipeline (collective; names the difference)."""
    summary = {
        "schedule": distributed.fingerprint(sched.to_csv()),
        "stages": sched.num_stages,
        "microbatches": sched.num_microbatches,
        "example_inputs": [(tuple(t.shape), str(t.dtype)) for t in example_inputs],
        "example_target": [
            (tuple(t.shape), str(t.dtype)) for t in compat.tree_flatten(example_target)[0]
        ],
        "params": distributed.fingerprint(
            [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
        ),
        "split": [spec.block_names for spec in specs],
        "torch": torch.__version__,
        "dp": proc.parallel.dp_size if proc.parallel is not None else 1,
    }
    world = proc.parallel.dp_size * proc.ranks if proc.parallel is not None else proc.ranks
    distributed.check_same_config(summary, proc.rank, world)


def _make_transport(
    sched: Schedule, stage_inputs: Sequence[tuple], proc: _Process, *, timeout: float
) -> tuple[DistTransport | LocalTransport, list[Action]]:
    """The transport between stages and the action order this process runs per step.

    Under torchrun: point-to-point messages with preallocated buffers (activations of every
    stage boundary, input gradients back) and this rank's program. In one process: a mailbox
    and every rank's program interleaved in an order without waits (`interleave`).
    """
    if not proc.distributed:
        return LocalTransport(), interleave(sched)
    n = len(stage_inputs)
    act_specs = {("act", s): _specs(stage_inputs[s + 1], proc.device) for s in range(n - 1)}
    grad_specs = {("grad", s): _float_specs(stage_inputs[s], proc.device) for s in range(1, n)}
    # under dp, pipeline rank r of this replica is global rank pp_ranks[r]
    to_global = proc.parallel.pp_ranks if proc.parallel is not None else range(proc.ranks)
    transport = DistTransport(
        to_global[proc.rank],
        [to_global[r] for r in sched.stage_to_rank],
        {**act_specs, **grad_specs},
        proc.device,
        proc.failure,
        timeout,
        sched.num_microbatches,
    )
    return transport, list(sched.programs[proc.rank])


def _timer_window(freeze: FreezeConfig | None) -> int:
    """Steps of timings to keep: enough for the freezer's monitoring window."""
    if isinstance(freeze, FreezeConfig):
        return max(DEFAULT_TIMER_WINDOW, freeze.monitor_steps)
    return DEFAULT_TIMER_WINDOW


def _freezer_factory(freeze: FreezeConfig | None) -> Callable[[Pipeline], object] | None:
    """The freezing controller, built by Pipeline once it is complete (it reads the
    pipeline's stages, groups and measurements)."""
    if freeze is None:
        return None
    from tfcompile.freeze.controller import Freezer

    return lambda pipe: Freezer.for_pipeline(freeze, pipe)


__all__ = ["Pipeline", "compile"]
