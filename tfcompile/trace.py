"""Trace one pipeline stage into a TracedStage, and wrap it in a StageProgram.

``trace_stage`` runs AOTAutograd (``functorch.compile.aot_function`` over
``torch.func.functional_call``, parameters and buffers as flat graph inputs; see TORCH-NOTES.md)
to get forward and backward fx GraphModules, then ``passes.split_weight_grad`` cuts the backward
into ``backward_input`` (input gradients + the values the weight work needs, each computed once)
and one weight-gradient region per parameter group. What tracing found is one frozen
:class:`TracedStage` with public fields; placeholder and output roles are also written into the
graphs' ``node.meta`` (see ``passes/roles.py``) so passes need the graphs only. The
:class:`~tfcompile.program.StageProgram` built from it runs the graphs.

The steps are small named graph functions, called in order by ``trace_stage``:
``_mutated_buffers`` (eager probe), ``_aot_graphs`` (AOTAutograd), ``_map_outputs`` (forward
outputs -> buffers, user outputs, saved values), ``_label_backward_outputs`` (backward outputs
-> groups), ``_forward_order`` (groups in forward order), ``_write_roles`` (node.meta).

Shapes are static: a program is traced for the example inputs' shapes and dtypes; calling it with
others raises TraceError (trace one program per shape).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tfcompile import _torch_compat as compat
from tfcompile.errors import TraceError
from tfcompile.groups import ROOT_GROUP, GroupChoice, resolve_groups
from tfcompile.lifting import (
    LOSS_PREFIX,
    check_graph_constants,
    check_plain_tensor_attributes,
    lift_loss_fn,
)
from tfcompile.passes import checkpointing
from tfcompile.passes.flops import graph_flops
from tfcompile.passes.roles import OUTPUT_GROUPS, OUTPUT_ROLES, ROLE, output_node
from tfcompile.passes.split_weight_grad import INPUT, split_weight_grad
from tfcompile.precision import check_precision, eager_probe, mixed_stage_fn
from tfcompile.program import Backend, StageProgram, TracedStage, autocast_state, training_flags
from tfcompile.split import as_stage_blocks
from tfcompile.tensor_spec import TensorSpec

__all__ = ["ROOT_GROUP", "StageProgram", "TracedStage", "resolve_groups", "trace_stage"]



def trace_stage(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    example_target: Any = None,
    groups: GroupChoice = "block",
    input_requires_grad: Sequence[bool] | None = None,
    forward_only: bool = False,
    backend: str | Backend = "eager",
    activation_checkpointing: str = "none",
    mixed_precision: str | None = None,
) -> StageProgram:
    """Trace `module` (one pipeline stage) into a :class:`StageProgram`.

    An input gets a gradient when it is floating point and ``requires_grad`` is set on its
    example (an activation coming from an earlier stage), or when ``input_requires_grad`` (one
    bool per input) says so; integer token ids and inputs without ``requires_grad`` get None,
    and then the backward stops at the earliest unfrozen group.
    With ``loss_fn`` (last stage) the loss ``loss_fn(outputs, target)`` is part of the forward
    and must be a scalar; pass ``example_target`` (a tensor or a pytree of tensors, e.g.
    ``(labels, mask)`` or a dict: loss_fn receives the same structure). A plain nn.Sequential
    composes its blocks as compile()'s stages do (a tuple output is passed on as separate
    arguments). The program's ``traced`` field is the :class:`TracedStage`.

    The graphs are fixed to the context of the call: every submodule's ``training`` flag
    (dropout, batch statistics) and the ambient autocast state are recorded on the TracedStage,
    and the program refuses to run in another one (see ``StageProgram.forward``).

    A stage where nothing needs a gradient (no trainable parameter reaches the outputs and no
    input gets a gradient: frozen lower layers), or any stage with ``forward_only=True``
    (parameters and inputs then treated as constants: an evaluation program), becomes a
    forward-only program: no groups, ``backward_input`` returns None per input and
    ``backward_weight`` does nothing.

    ``activation_checkpointing`` (``"none"``, ``"full"``, ``"selective"``; see
    ``passes/checkpointing.py``) chooses which forward values are saved for the backward;
    ``backward_input`` recomputes the others. ``torch.utils.checkpoint`` regions inside the
    module are recomputed under every policy. ``mixed_precision="bf16"`` traces the stage under
    bfloat16 autocast with float32 parameters and bfloat16 activations at the stage boundary
    (see ``tfcompile/precision.py``).

    ``backend`` runs the graphs: ``"eager"`` (op by op), ``"inductor"`` (each graph compiled
    by inductor on first use; see ``tfcompile.compile_backend``), or a Backend instance
    (``InductorBackend(cuda_graphs=True)``). Unknown names raise RuntimeConfigError.
    """
    from tfcompile.compile_backend import make_backend

    precision = check_precision(mixed_precision)
    ac_policy = checkpointing.check_policy(activation_checkpointing)
    call = as_stage_blocks(module)  # same children and parameter names as `module`
    inputs = _check_example(call, example_inputs, loss_fn, example_target)
    t_leaves, t_spec = _target_leaves(example_target) if loss_fn is not None else ([], None)
    group_map = resolve_groups(module, groups)
    check_plain_tensor_attributes(module, loss_fn)
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    first = next(iter(params.values()), inputs[0] if inputs else None)
    device = getattr(first, "device", None)
    runner = make_backend(backend, device=device, stage=type(module).__name__)
    is_loss = loss_fn is not None
    probe_inputs, probe_ctx = eager_probe(precision, inputs)
    with _rng_kept(), _module_state_kept(module), probe_ctx:
        eager_out, probed, boundary = _mutated_buffers(call, params, buffers, probe_inputs)
    loss_names = lift_loss_fn(loss_fn, params, buffers, group_map)
    param_names, buffer_names = tuple(params), tuple(buffers)
    needs_grad = _input_grad_flags(inputs, input_requires_grad)
    if forward_only:
        needs_grad = [False] * len(inputs)

    fn = _stage_fn(
        call, param_names, buffer_names, len(inputs), loss_fn, t_spec,
        loss_names=loss_names, boundary=boundary,
    )  # fmt: skip
    fn = mixed_stage_fn(fn, len(params) + len(buffers), len(inputs), is_loss, precision)
    args = [
        *(
            params[n].detach().requires_grad_(params[n].requires_grad and not forward_only)
            for n in param_names
        ),
        *(buffers[n].clone() for n in buffer_names),
        *(x.detach().requires_grad_(needs) for x, needs in zip(inputs, needs_grad)),
    ]
    if is_loss:
        args.extend(t.detach() for t in t_leaves)
    with _rng_kept(), _module_state_kept(module, loss_fn), checkpointing.annotating(call):
        fw_gm, bw_gm, num_fwd_outputs = _aot_graphs(
            module, fn, args, len(params) + len(buffers),
            tag_joint=lambda joint, _n: checkpointing.tag_recompute(joint, ac_policy),
            partition=getattr(runner, "partition", "default"),
        )  # fmt: skip
    check_graph_constants(fw_gm, bw_gm, module, loss_fn)
    # the parameters the graphs were made for: which train (None for an evaluation program,
    # where that does not matter) and their dtypes; the program refuses to run after either
    # changed (see StageProgram.check_parameters)
    fixed = dict(
        param_requires_grad=(
            None if forward_only else tuple(params[n].requires_grad for n in param_names)
        ),
        param_dtypes=tuple(params[n].dtype for n in param_names),
    )
    if bw_gm is None:  # kind 7: nothing needs a gradient
        return StageProgram(
            replace(
                _forward_only_stage(
                    module, fw_gm, eager_out, is_loss, probed, params, buffers, inputs, needs_grad
                ),
                **fixed,
            ),
            backend=runner,
        )

    outs = _map_outputs(
        fw_gm, bw_gm, eager_out, num_fwd_outputs, is_loss, probed, len(params), buffer_names
    )
    device = args[0].device if params else (inputs[0].device if inputs else None)
    tangent_specs = _tangent_specs(bw_gm, outs, is_loss, device or torch.device("cpu"))
    labels = _label_backward_outputs(
        bw_gm, param_names, len(buffers), group_map, needs_grad, len(t_leaves)
    )
    group_order = _forward_order(fw_gm, param_names, group_map)
    _write_roles(fw_gm, bw_gm, param_names, buffer_names, len(inputs), len(t_leaves), outs, labels)
    split = split_weight_grad(bw_gm, labels, group_order)
    n_pb = len(params) + len(buffers)
    traced = TracedStage(
        module=module,
        fw_graph=fw_gm,
        bw_graph=bw_gm,
        split=split,
        params=params,
        buffers=buffers,
        param_names=param_names,
        buffer_names=buffer_names,
        mutated_buffers=outs.mutated,
        input_specs=tuple(TensorSpec.of(x) for x in inputs),
        input_requires_grad=tuple(needs_grad),
        is_loss_stage=is_loss,
        num_outputs=outs.num_outputs,
        output_spec=outs.output_spec,
        saved_names=outs.saved_names,
        tangent_names=outs.tangent_names,
        tangent_outputs=outs.tangent_outputs,
        tangent_specs=tangent_specs,
        groups={g: list(group_map[g]) for g in group_order},
        group_order=group_order,
        region_params={g: [param_names[i] for i in split.region_grads[g]] for g in group_order},
        input_grad_slots=tuple(i - n_pb for i in split.input_grads),
        region_flops={g: graph_flops(split.regions[g].gm) for g in group_order},
        input_flops=graph_flops(split.input_variant(0).gm),
        forward_flops=graph_flops(fw_gm),
        training_flags=training_flags(module),
        autocast_state=autocast_state(),
        target_spec=t_spec,
        target_specs=tuple(TensorSpec.of(t) for t in t_leaves),
        activation_checkpointing=ac_policy,
        **fixed,
    )
    return StageProgram(traced, backend=runner)


def _forward_only_stage(
    module: nn.Module,
    fw_gm: fx.GraphModule,
    eager_out: Any,
    is_loss: bool,
    probed: tuple[str, ...],
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    needs_grad: Sequence[bool],
) -> TracedStage:
    """The TracedStage of a stage without backward (kind 7): AOTAutograd's inference graph
    returns ``mutated buffers, user outputs`` (no saved values); no groups, no regions."""
    if is_loss:
        flat_out, out_spec = [eager_out], compat.leaf_spec()
    else:
        flat_out, out_spec = compat.tree_flatten(eager_out)
    n_user = len(flat_out)
    buffer_names = tuple(buffers)
    mutated = probed
    mut_idx = compat.mutated_input_indices(fw_gm)
    n_p, n_b = len(params), len(buffers)
    if mut_idx is not None and all(n_p <= i < n_p + n_b for i in mut_idx):
        mutated = tuple(buffer_names[i - n_p] for i in mut_idx)
    n_graph = len(output_node(fw_gm).args[0])
    if n_graph != n_user + len(mutated):
        raise TraceError(
            f"could not match the forward-only graph's {n_graph} outputs to {n_user} outputs "
            f"and {len(mutated)} mutated buffers; return plain tensors from forward"
        )
    return TracedStage(
        module=module,
        fw_graph=fw_gm,
        bw_graph=None,
        split=None,
        params=params,
        buffers=buffers,
        param_names=tuple(params),
        buffer_names=buffer_names,
        mutated_buffers=mutated,
        input_specs=tuple(TensorSpec.of(x) for x in inputs),
        input_requires_grad=tuple(needs_grad),
        is_loss_stage=is_loss,
        num_outputs=n_user,
        output_spec=out_spec,
        saved_names=(),
        tangent_names=(),
        tangent_outputs=(),
        tangent_specs=(),
        groups={},
        group_order=[],
        region_params={},
        input_grad_slots=(),
        region_flops={},
        input_flops=0,
        forward_flops=graph_flops(fw_gm),
        training_flags=training_flags(module),
        autocast_state=autocast_state(),
        forward_only=True,
    )


# ----------------------------------------------------------------------------- checks
def _check_example(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    loss_fn: Callable | None,
    example_target: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple, refused early with a message that says what to pass
    (instead of an AOTAutograd error from deep inside tracing)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not isinstance(module, nn.Module):
        raise TraceError(f"trace_stage needs an nn.Module, got {type(module).__name__}")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise TraceError(
                f"example input {i} is {type(x).__name__}: every example input must be a tensor"
            )
    _check_arity(module, example_inputs)
    if loss_fn is not None and example_target is None:
        raise TraceError("loss_fn given without example_target: pass example_target=")
    return example_inputs


def _target_leaves(example_target: Any) -> tuple[list[torch.Tensor], Any]:
    """The target's tensor leaves and the pytree spec that rebuilds it for loss_fn."""
    leaves, spec = compat.tree_flatten(example_target)
    for i, t in enumerate(leaves):
        if not isinstance(t, torch.Tensor):
            raise TraceError(
                f"example_target leaf {i} is {type(t).__name__}: the target must be a tensor "
                "or a tuple/list/dict of tensors"
            )
    return leaves, spec


def _check_arity(module: nn.Module, inputs: Sequence[Any]) -> None:
    """Refuse example inputs that forward's signature cannot take (one tensor per argument is
    the convention a stage is called with), naming the signature."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*inputs)
    except TypeError as e:
        params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
        raise TraceError(
            f"{type(module).__name__}.forward{sig} cannot take {len(inputs)} example inputs "
            f"({e}); pass example_inputs as a tuple with one tensor per forward argument "
            f"({len(params)} here)"
        ) from None


def _input_grad_flags(
    inputs: Sequence[torch.Tensor], input_requires_grad: Sequence[bool] | None
) -> list[bool]:
    """Whether each input gets a gradient: whether its gradient is in the backward graph at
    all is decided at trace time, so it must be known now."""
    if input_requires_grad is not None and len(input_requires_grad) != len(inputs):
        raise TraceError(
            f"input_requires_grad has {len(input_requires_grad)} entries for {len(inputs)} "
            "inputs: give one bool per example input"
        )
    flags = []
    for i, x in enumerate(inputs):
        wanted = x.requires_grad if input_requires_grad is None else input_requires_grad[i]
        if wanted and not (x.is_floating_point() or x.is_complex()):
            raise TraceError(
                f"input {i} has dtype {x.dtype} and cannot get a gradient: set "
                "input_requires_grad to False for it"
            )
        flags.append(bool(wanted))
    return flags


# ----------------------------------------------------------------------------- graph steps
def _mutated_buffers(
    module: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
) -> tuple[Any, tuple[str, ...], _Boundary]:
    """Run the module once eagerly on copies of its buffers and inputs: the outputs (their
    structure and devices are the stage's), the buffers the forward mutates (batch-norm
    running stats), which become extra graph outputs copied back after each forward, and the
    aliasing at the stage boundary (:class:`_Boundary`).

    The mutated set here is the fallback for when AOTAutograd's output descriptors are missing
    (a buffer whose version or value changed); ``_map_outputs`` prefers the descriptors. The
    inputs are cloned so that a stage whose first op is in place (``ReLU(inplace=True)``) does
    not change the caller's tensors.
    """
    probe = {n: b.clone() for n, b in buffers.items()}
    versions = {n: compat.version_counter(b) for n, b in probe.items()}
    probe_inputs = tuple(x.detach().clone() for x in inputs)
    in_versions = [compat.version_counter(x) for x in probe_inputs]
    try:
        with torch.no_grad():
            eager_out = torch.func.functional_call(module, {**params, **probe}, probe_inputs)
    except Exception as e:  # noqa: BLE001 - rewrap whatever the user's module raised
        raise TraceError(
            f"running {type(module).__name__} on the example inputs failed "
            f"({type(e).__name__}: {e}). Check that example_inputs match forward's arguments "
            f"(count, dtype: got {[x.dtype for x in inputs]}, shapes)"
        ) from e
    mutated = tuple(
        n
        for n in buffers
        if compat.version_counter(probe[n]) != versions[n] or not torch.equal(probe[n], buffers[n])
    )
    mutated_inputs = frozenset(
        i for i, x in enumerate(probe_inputs) if compat.version_counter(x) != in_versions[i]
    )
    # an output aliases when its storage is an input's, a parameter's, a buffer's or an
    # earlier output's (views of one intermediate: the first keeps it, the others alias)
    seen = {_storage_key(t) for t in (*probe_inputs, *params.values(), *probe.values())}
    alias_outputs = set()
    for i, o in enumerate(compat.tree_flatten(eager_out)[0]):
        if isinstance(o, torch.Tensor) and o.numel() > 0:
            key = _storage_key(o)
            if key in seen:
                alias_outputs.add(i)
            seen.add(key)
    return eager_out, mutated, _Boundary(mutated_inputs, frozenset(alias_outputs))


@dataclass(frozen=True)
class _Boundary:
    """Kind 2: aliasing and mutation at the stage boundary, removed inside the traced function.

    AOTAutograd handles aliased outputs and mutated inputs in its runtime wrappers (outputs
    regenerated from their base, no tangent for them; mutations of inputs appended to the
    forward's outputs), which the raw fw/bw graphs tfcompile runs do not have. Instead the
    traced function owns its boundary: inputs the probe saw mutated are cloned on entry (the
    mutation becomes internal, the caller's tensor is left alone) and outputs that alias an
    input, a parameter, a buffer or an earlier output are cloned on exit, so every output is
    a fresh tensor with its own tangent and the clone's backward sends its gradient to the
    base. Exact: clone is the identity for values and gradients.
    """

    mutated_inputs: frozenset[int] = frozenset()
    alias_outputs: frozenset[int] = frozenset()


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class _LossShapeError(Exception):
    pass


def _stage_fn(
    module: nn.Module,
    param_names: Sequence[str],
    buffer_names: Sequence[str],
    n_in: int,
    loss_fn: Callable | None,
    target_spec: Any = None,
    *,
    loss_names: Sequence[str] = (),
    boundary: _Boundary = _Boundary(),
) -> Callable[..., Any]:
    """The function AOTAutograd traces: parameters and buffers as flat inputs (so they are graph
    placeholders, not constants), then the inputs, then the target leaves of a loss stage
    (rebuilt into the target's structure for loss_fn). ``loss_names`` are the flat
    parameters/buffers of an nn.Module loss_fn (called through functional_call); ``boundary``
    says which inputs/outputs are cloned (kind 2)."""
    n_p, n_b = len(param_names), len(buffer_names)
    loss_set = frozenset(loss_names)

    def stage_fn(*args):
        p = dict(zip(param_names, args[:n_p]))
        p.update(zip(buffer_names, args[n_p : n_p + n_b]))
        lp = {n[len(LOSS_PREFIX) :]: p.pop(n) for n in loss_names}
        xs = args[n_p + n_b : n_p + n_b + n_in]
        if boundary.mutated_inputs:
            xs = tuple(x.clone() if i in boundary.mutated_inputs else x for i, x in enumerate(xs))
        out = torch.func.functional_call(module, p, xs)
        if boundary.alias_outputs:
            leaves, spec = compat.tree_flatten(out)
            leaves = [o.clone() if i in boundary.alias_outputs else o for i, o in enumerate(leaves)]
            out = compat.tree_unflatten(leaves, spec)
        if loss_fn is None:
            return out
        target = compat.tree_unflatten(list(args[n_p + n_b + n_in :]), target_spec)
        if loss_set:
            loss = torch.func.functional_call(loss_fn, lp, (out, target))
        else:
            loss = loss_fn(out, target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
            raise _LossShapeError(
                f"loss_fn must return a scalar tensor, it returned {shape}: reduce it "
                "(e.g. .mean() or reduction='mean')"
            )
        if not loss.dtype.is_floating_point:
            raise _LossShapeError(
                f"loss_fn must return a floating-point scalar, it returned {loss.dtype}: an "
                "integer-valued loss has no gradient (compute it in floating point, e.g. "
                "without .long()/.round() or with .float() on its inputs)"
            )
        return loss

    return stage_fn


@contextlib.contextmanager
def _module_state_kept(*modules: Any):
    """Kind 8: every parameter/buffer slot of every submodule is put back as it was after
    tracing. torch.func.functional_call swaps tensors in and restores them per alias; a module
    reached twice (``nn.Sequential(l, nn.Tanh(), l)``) is restored from its second alias, which
    saved the already-swapped (functional) value."""
    saved = [
        (m, dict(m._parameters), dict(m._buffers))
        for mod in modules
        if isinstance(mod, nn.Module)
        for m in mod.modules()
    ]
    try:
        yield
    finally:
        for m, ps, bs in saved:
            m._parameters.clear()
            m._parameters.update(ps)
            m._buffers.clear()
            m._buffers.update(bs)


@contextlib.contextmanager
def _rng_kept():
    """Kind 8: the eager probe (dropout) and AOTAutograd's tracing draw from the global RNG;
    leave its state as it was."""
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _aot_graphs(
    module: nn.Module,
    fn: Callable[..., Any],
    args: list,
    num_params_buffers: int,
    tag_joint: Callable[[fx.GraphModule, int], Any] | None = None,
    partition: str = "default",
) -> tuple[fx.GraphModule, fx.GraphModule | None, int]:
    """Forward and backward GraphModules of `fn` (backward None when nothing needs a gradient),
    with AOTAutograd's errors turned into ones that say what to change in the user's module.
    `tag_joint` writes recompute tags into the joint graph before the partition; `partition`
    is the backend's partitioner (``Backend.partition``)."""
    try:
        fw_gm, bw_gm, num_fwd_outputs, _ = compat.aot_trace(
            fn, args, num_params_buffers, tag_joint=tag_joint, partition=partition
        )
    except _LossShapeError as e:
        raise TraceError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        if compat.is_data_dependent_error(e):
            raise TraceError(
                f"{_user_frame(e)}{type(module).__name__} has Python control flow that depends "
                "on tensor values (e.g. `if x.sum() > 0:` or `.item()`), which a traced graph "
                "cannot represent. Rewrite it with tensor ops (torch.where, masking) or move the "
                f"decision out of forward. Original error: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        raise TraceError(f"tracing {type(module).__name__} failed: {type(e).__name__}: {e}") from e
    return fw_gm, bw_gm, num_fwd_outputs


# torch's and tfcompile's own directories: frames there are never "the user's code"
_SKIP_DIRS = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep for f in (torch.__file__, __file__)
)


def _user_frame(exc: BaseException) -> str:
    """``"file:line: `code`\n"`` of the innermost traceback frame outside torch/ and tfcompile/
    (the user's or a library's code that made the data-dependent decision), over the whole
    exception chain (torch re-raises; the deepest chained traceback reaches the user's frame).
    Empty when there is none."""
    best = None
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for fr in traceback.extract_tb(e.__traceback__):
            path = os.path.abspath(fr.filename)
            if not path.startswith(_SKIP_DIRS) and not fr.filename.startswith("<"):
                best = fr  # later frames in a traceback are deeper; later links are deeper
        e = e.__cause__ or e.__context__
    if best is None:
        return ""
    return f"{best.filename}:{best.lineno}: `{(best.line or '').strip()}`\n"


@dataclass(frozen=True)
class _Outputs:
    """How the forward's outputs and the backward's placeholders line up."""

    mutated: tuple[str, ...]
    num_outputs: int
    output_spec: Any
    flat_outputs: tuple[Any, ...]  # eager user outputs, flattened
    saved_names: tuple[str, ...]
    tangent_names: tuple[str, ...]
    tangent_outputs: tuple[int, ...]


def _map_outputs(
    fw_gm: fx.GraphModule,
    bw_gm: fx.GraphModule,
    eager_out: Any,
    num_fwd_outputs: int,
    is_loss: bool,
    probed: tuple[str, ...],
    n_p: int,
    buffer_names: tuple[str, ...],
) -> _Outputs:
    """Split the forward's outputs into mutated buffers, user outputs and saved values, and the
    backward's placeholders into saved values and tangents (one per floating-point output).

    AOTAutograd returns mutated inputs first; its output descriptors name them (preferred over
    the eager probe). Saved-value placeholders carry no descriptor, so they are matched by count.
    """
    if is_loss:
        flat_out, out_spec = [eager_out], compat.leaf_spec()
    else:
        flat_out, out_spec = compat.tree_flatten(eager_out)
    n_user = 1 if is_loss else len(flat_out)
    n_b = len(buffer_names)
    mutated = probed
    mut_idx = compat.mutated_input_indices(fw_gm)
    if mut_idx is not None and all(n_p <= i < n_p + n_b for i in mut_idx):
        mutated = tuple(buffer_names[i - n_p] for i in mut_idx)
    if num_fwd_outputs - n_user != len(mutated):
        raise TraceError(
            f"could not match the forward graph's {num_fwd_outputs} outputs to {n_user} "
            f"outputs and {len(mutated)} mutated buffers; return plain tensors from forward"
        )
    n_saved = len(output_node(fw_gm).args[0]) - num_fwd_outputs
    bw_ph = [n for n in bw_gm.graph.nodes if n.op == "placeholder"]
    tangent_nodes = bw_ph[n_saved:]
    described = None if is_loss else compat.tangent_output_indices(tangent_nodes)
    if is_loss:
        tangent_outputs = (0,)
    elif described is not None:  # only outputs that require grad have a tangent
        tangent_outputs = tuple(described)
    else:
        tangent_outputs = tuple(i for i, o in enumerate(flat_out) if _is_differentiable(o))
    if len(tangent_outputs) != len(tangent_nodes):
        raise TraceError(
            f"the backward graph takes {len(tangent_nodes)} output gradients but the stage has "
            f"{len(tangent_outputs)} floating-point outputs; make every floating-point output "
            "depend on a parameter or an input that requires grad"
        )
    return _Outputs(
        mutated=mutated,
        num_outputs=n_user,
        output_spec=out_spec,
        flat_outputs=tuple(flat_out),
        saved_names=tuple(n.name for n in bw_ph[:n_saved]),
        tangent_names=tuple(n.name for n in tangent_nodes),
        tangent_outputs=tangent_outputs,
    )


def _is_differentiable(o: Any) -> bool:
    return isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex())


def _tangent_specs(
    bw_gm: fx.GraphModule, outs: _Outputs, is_loss: bool, param_device: torch.device
) -> tuple[TensorSpec, ...]:
    """Shape, dtype and device of each output gradient the backward takes (what backward_input
    builds when the caller passes None or a plain loss seed).

    Fake values carry the device the graph was traced on; the real outputs' device (the
    parameters' for a loss) is the one gradients arrive on.
    """
    by_name = {n.name: n for n in bw_gm.graph.nodes if n.op == "placeholder"}
    if is_loss:
        devices = [param_device]
    else:
        devices = [outs.flat_outputs[i].device for i in outs.tangent_outputs]
    return tuple(
        TensorSpec.of(compat.fake_value(by_name[name]), dev)
        for name, dev in zip(outs.tangent_names, devices)
    )


def _label_backward_outputs(
    bw_gm: fx.GraphModule,
    param_names: Sequence[str],
    n_buffers: int,
    group_map: Mapping[str, Sequence[str]],
    input_needs_grad: Sequence[bool],
    n_targets: int,
) -> list[str | None]:
    """The label ``split_weight_grad`` needs for each backward output: the group of a parameter
    gradient, INPUT for an input gradient the caller wants, None for everything else (buffers,
    the target, parameters unused by the stage's outputs, whose gradient slot is None)."""
    param_group = {p: g for g, ps in group_map.items() for p in ps}
    labels: list[str | None] = [param_group.get(n) for n in param_names]
    labels += [None] * n_buffers
    labels += [INPUT if needs else None for needs in input_needs_grad]
    labels += [None] * n_targets  # the target's leaves
    bw_outs = list(output_node(bw_gm).args[0])
    if len(bw_outs) != len(labels):
        raise TraceError(f"backward graph has {len(bw_outs)} outputs, expected {len(labels)}")
    return [lab if o is not None else None for o, lab in zip(bw_outs, labels)]


def _forward_order(
    fw_gm: fx.GraphModule, param_names: Sequence[str], group_map: Mapping[str, Sequence[str]]
) -> list[str]:
    """Groups sorted by where their parameters are first used in the forward graph: the
    backward meets them in reverse, which is what frozen-prefix truncation relies on."""
    placeholders = [n for n in fw_gm.graph.nodes if n.op == "placeholder"]
    pos = {n: i for i, n in enumerate(fw_gm.graph.nodes)}
    first_use = {}
    for name, ph in zip(param_names, placeholders):
        first_use[name] = min((pos[u] for u in ph.users), default=len(pos))
    declared = list(group_map)
    return sorted(
        [g for g in declared if group_map[g]],
        key=lambda g: (min(first_use[p] for p in group_map[g]), declared.index(g)),
    )


def _write_roles(
    fw_gm: fx.GraphModule,
    bw_gm: fx.GraphModule,
    param_names: Sequence[str],
    buffer_names: Sequence[str],
    n_inputs: int,
    n_targets: int,
    outs: _Outputs,
    labels: Sequence[str | None],
) -> None:
    """Write placeholder and output roles into ``node.meta`` (see ``passes/roles.py``), so
    passes read what each graph input and output is from the graphs alone. Runs before the
    split, whose extracted regions copy their placeholders' meta."""
    primal = [
        *(f"param {n}" for n in param_names),
        *(f"buffer {n}" for n in buffer_names),
        *(f"input {i}" for i in range(n_inputs)),
        *(["target"] if n_targets == 1 else [f"target {i}" for i in range(n_targets)]),
    ]
    for node, role in zip((n for n in fw_gm.graph.nodes if n.op == "placeholder"), primal):
        _set_meta(node, ROLE, role)
    n_saved = len(outs.saved_names)
    fw_outputs = [
        *(f"updated buffer {n}" for n in outs.mutated),
        *(f"output {i}" for i in range(outs.num_outputs)),
        *(f"saved {i}" for i in range(n_saved)),
    ]
    _set_meta(output_node(fw_gm), OUTPUT_ROLES, fw_outputs)
    bw_roles = {n: f"saved {i}" for i, n in enumerate(outs.saved_names)}
    bw_roles.update({n: f"tangent {i}" for i, n in enumerate(outs.tangent_names)})
    for node in bw_gm.graph.nodes:
        if node.op == "placeholder" and node.name in bw_roles:
            _set_meta(node, ROLE, bw_roles[node.name])
    _set_meta(output_node(bw_gm), OUTPUT_ROLES, [f"grad {role}" for role in primal])
    _set_meta(output_node(bw_gm), OUTPUT_GROUPS, list(labels))


def _set_meta(node: fx.Node, key: str, value: Any) -> None:
    """Set one meta entry on a copy of the node's meta dict: the partitioner shares meta dicts
    between the joint, forward and backward graphs' nodes (a saved parameter's backward
    placeholder has its forward placeholder's dict), so an in-place write would leak."""
    node.meta = {**node.meta, key: value}
