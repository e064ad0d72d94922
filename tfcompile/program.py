"""StageProgram: runs a traced stage, microbatch by microbatch.

A :class:`TracedStage` is what tracing (``tfcompile.trace``) found (graphs, names, specs, groups);
a StageProgram is the execution state machine over it. Per microbatch it goes
``forward`` -> ``backward_input`` -> ``backward_weight`` (or ``backward`` for both), keeping
between the calls only what the next one reads: the saved activations after the forward, the
stash of the unfrozen groups after backward_input.

Every graph runs through a :class:`Backend`. The default, :class:`EagerBackend`, calls the fx
GraphModules as traced under ``torch.no_grad()``; a compiled backend plugs in by returning other
callables for the same graphs and calling convention.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.fx as fx
from torch import nn

from tfcompile import _torch_compat as compat
from tfcompile.errors import GroupError, RuntimeConfigError, TraceError
from tfcompile.lifting import LOSS_PREFIX
from tfcompile.passes.checkpointing import saved_bytes
from tfcompile.passes.split_weight_grad import INPUT, Region, SplitBackward
from tfcompile.tensor_spec import TensorSpec

__all__ = ["PARTITIONS", "Backend", "EagerBackend", "GraphFn", "StageProgram", "TracedStage"]

# A runnable graph: takes its inputs as one list, which it may clear to free inputs early (the
# boxed calling convention), and returns the graph's outputs in order.
GraphFn = Callable[[list], Sequence[Any]]


@dataclass(frozen=True, eq=False)
class TracedStage:
    """Everything tracing found about one stage; what a StageProgram (or a backend) runs.

    Flat graph inputs are ``params, buffers, inputs[, target]`` in the order of the name
    fields; the forward returns ``mutated buffers, user outputs, saved values``; the backward
    takes ``saved values, tangents`` and returns one gradient per flat input. Compared by
    identity (``eq=False``): two traces are never "equal" by their graph objects.
    """

    module: nn.Module = field(repr=False)
    fw_graph: fx.GraphModule = field(repr=False)  # forward, as traced
    # backward, as traced (before the split); None for a forward-only stage
    bw_graph: fx.GraphModule | None = field(repr=False)
    # backward_input variants and one weight-gradient region per group (None: forward-only)
    split: SplitBackward | None = field(repr=False)
    params: Mapping[str, torch.Tensor] = field(repr=False)  # live parameters, canonical names
    buffers: Mapping[str, torch.Tensor] = field(repr=False)  # the module's live buffers
    param_names: tuple[str, ...]  # forward placeholders, in order
    buffer_names: tuple[str, ...]
    mutated_buffers: tuple[str, ...]  # buffers the forward updates (returned first)
    input_specs: tuple[TensorSpec, ...]  # one per example input
    input_requires_grad: tuple[bool, ...]  # whether each input gets a gradient
    is_loss_stage: bool  # the forward returns loss_fn(outputs, target)
    num_outputs: int  # user outputs of the forward (1 for a loss stage)
    output_spec: Any  # pytree spec that rebuilds the module's output structure
    saved_names: tuple[str, ...]  # backward placeholders holding saved forward values
    tangent_names: tuple[str, ...]  # backward placeholders holding output gradients
    tangent_outputs: tuple[int, ...]  # user output index of each tangent
    tangent_specs: tuple[TensorSpec, ...]  # shape/dtype/device of each tangent
    groups: dict[str, list[str]]  # group -> parameter names, in group_order
    group_order: list[str]  # groups in order of first use in the forward
    region_params: dict[str, list[str]]  # group -> parameters its region returns, in order
    input_grad_slots: tuple[int, ...]  # input index of each input gradient backward_input returns
    region_flops: dict[str, Any]  # group -> FLOPs of its weight-gradient region
    input_flops: Any  # FLOPs of backward_input with nothing frozen
    forward_flops: Any
    # the context the graphs were traced in (kind 3): module.training of every submodule in
    # module.modules() order, and the autocast state (see ``trace_context``)
    training_flags: tuple[bool, ...] = ()
    autocast_state: tuple = ()
    # no backward (kind 7): nothing needs a gradient; bw_graph and split are None, no groups
    forward_only: bool = False
    # a loss stage's target: the pytree spec that rebuilds it from its leaves (graph inputs
    # after the stage inputs) and each leaf's shape/dtype/device
    target_spec: Any = None
    target_specs: tuple[TensorSpec, ...] = ()
    # the parameters the graphs were made for (in param_names order): whether each trains
    # (None: an evaluation program, for which it does not matter) and its dtype
    param_requires_grad: tuple[bool, ...] | None = None
    param_dtypes: tuple[torch.dtype, ...] = ()
    # which forward values the backward recomputes ("none", "full", "selective"; see
    # passes/checkpointing.py)
    activation_checkpointing: str = "none"


class Backend(Protocol):
    """Turns the graphs of a traced stage into callables (the seam for compiled regions).

    A backend may also have a ``partition`` attribute, the AOTAutograd partitioner tracing uses
    for it (``"default"`` when absent; see :data:`PARTITIONS`): which forward values the
    forward saves and which the backward recomputes."""

    def forward(self, gm: fx.GraphModule) -> GraphFn: ...

    def region(self, region: Region) -> GraphFn: ...


#: AOTAutograd partitioners a backend may ask for: ``"default"`` saves what eager autograd
#: saves; ``"min_cut"`` (torch.compile's choice for training) saves fewer values and recomputes
#: cheap elementwise ops in the backward, where a compiler fuses them into kernels it runs anyway.
PARTITIONS = ("default", "min_cut")


class EagerBackend:
    """Runs the fx GraphModules as traced: today's behaviour, and the reference for others.

    Keeps the default partition: op by op, a recomputed op costs a kernel of its own."""

    partition = "default"

    def forward(self, gm: fx.GraphModule) -> GraphFn:
        return lambda args: gm(*args)

    def region(self, region: Region) -> GraphFn:
        # Region.run uses the boxed convention where torch has it: the graph frees each input
        # at its last use, as eager autograd frees saved tensors
        return region.run


@dataclass
class _Microbatch:
    """What one microbatch keeps between its forward, backward_input and backward_weight."""

    env: dict[str, torch.Tensor]  # value name -> tensor the later graphs read
    versions: list[tuple[int, torch.Tensor, int]]  # (input index, input, version at forward)
    stage: str = "F"  # "F" after forward, "I" after backward_input
    frozen: frozenset[str] = field(default_factory=frozenset)  # as told to backward_input
    # storages .grad must not adopt: the tangents (the caller's grad_output, a receive buffer,
    # the loss seed) and the input gradients handed out (see _accumulate)
    held: set[int] = field(default_factory=set)


class StageProgram:
    """A traced pipeline stage: forward, backward_input and per-group weight-gradient regions.

    See docs/interfaces.md for the contract. ``traced`` is the :class:`TracedStage`; its public
    fields are mirrored here (``module``, ``groups``, ``group_order``, ``region_flops``,
    ``input_flops``, ``forward_flops``, ``is_loss_stage``, ``input_requires_grad``, and for
    inspection ``fw_graph``, ``bw_graph`` and ``split``). ``region_calls`` counts region runs;
    ``last_times`` holds the seconds of the last backward_input and of each region.
    ``grad_scale`` (group -> factor, empty by default) multiplies a group's weight gradient
    before it is accumulated: ``grad="rescale"`` sets it per step, so each use of a tied
    parameter is scaled by its own count before the uses are summed.
    """

    def __init__(
        self, traced: TracedStage, *, backend: Backend | None = None, update_buffers: bool = True
    ):
        """`update_buffers=False` discards the buffer updates the forward computes (BatchNorm
        running stats in training mode): an evaluation program never touches the module."""
        self.traced = traced
        self.update_buffers = update_buffers
        self.backend: Backend = backend if backend is not None else EagerBackend()
        self.region_calls: Counter[str] = Counter()
        # wall seconds of the last backward_input ("input") and of each region that last ran
        self.last_times: dict[str, float] = {}
        self._state: dict[int, _Microbatch] = {}
        self.grad_scale: dict[str, float] = {}
        self._forward_fn = self.backend.forward(traced.fw_graph)
        self._region_fns: dict[tuple[str, str], GraphFn] = {}

    # -- the traced stage's public fields
    module = property(lambda self: self.traced.module)
    groups = property(lambda self: self.traced.groups)
    group_order = property(lambda self: self.traced.group_order)
    region_flops = property(lambda self: self.traced.region_flops)
    input_flops = property(lambda self: self.traced.input_flops)
    forward_flops = property(lambda self: self.traced.forward_flops)
    is_loss_stage = property(lambda self: self.traced.is_loss_stage)
    input_requires_grad = property(lambda self: self.traced.input_requires_grad)
    fw_graph = property(lambda self: self.traced.fw_graph)
    bw_graph = property(lambda self: self.traced.bw_graph)
    split = property(lambda self: self.traced.split)
    forward_only = property(lambda self: self.traced.forward_only)

    # -- execution
    def forward(self, mb: int, *inputs: torch.Tensor, target: Any = None):
        """Run the forward of microbatch `mb`; keeps what its backward needs. A loss stage's
        `target` has the structure of the example target (a tensor or a pytree of tensors).

        Refused (RuntimeConfigError) when a submodule's ``training`` flag or the ambient
        autocast state differs from the traced one: the graphs are fixed to that context
        (dropout, batch vs running statistics, casts). Trace a program in the new context
        (``Pipeline.evaluate`` does so itself for evaluation). A forward-only program keeps
        nothing (its backward is a no-op)."""
        t = self.traced
        self.check_context()
        target_leaves = self._check_inputs(inputs, target)
        if mb in self._state:
            raise RuntimeConfigError(
                f"microbatch {mb} already has a pending forward on this stage: run its "
                "backward (backward_weight) before reusing the index"
            )
        args = [
            *(t.params[n] for n in t.param_names),
            *(t.buffers[n] for n in t.buffer_names),
            *(_traced_layout(x.detach(), spec) for x, spec in zip(inputs, t.input_specs)),
        ]
        if t.is_loss_stage:
            args.extend(target_leaves)
        with torch.no_grad():
            outs = self._forward_fn(args)
        n_mut, n_user = len(t.mutated_buffers), t.num_outputs
        if self.update_buffers:
            for name, val in zip(t.mutated_buffers, outs[:n_mut]):
                t.buffers[name].copy_(val)
        user = outs[n_mut : n_mut + n_user]
        if t.forward_only:
            return compat.tree_unflatten(list(user), t.output_spec)
        saved = outs[n_mut + n_user :]
        # like eager autograd, detect saved inputs modified in place before the backward
        versions = [(i, x, compat.version_counter(x)) for i, x in enumerate(inputs)]
        self._state[mb] = _Microbatch(env=dict(zip(t.saved_names, saved)), versions=versions)
        return compat.tree_unflatten(user, t.output_spec)

    def backward_input(self, mb: int, *grad_outputs, frozen=frozenset()):
        """Input gradients of `mb` (None where none is needed); keeps the weight-work stash."""
        t = self.traced
        frozen = self._frozen_set(frozen)
        if t.forward_only:  # no backward: no input gets a gradient, nothing is kept
            return (None,) * len(t.input_specs)
        st = self._state.get(mb)
        if st is None or st.stage != "F":
            raise RuntimeConfigError(
                f"backward_input({mb}) needs a preceding forward({mb}) and no earlier "
                "backward_input for it"
            )
        _check_unmodified(mb, st.versions)
        tangents = self._tangents(grad_outputs)
        st.env.update(zip(t.tangent_names, tangents))
        unfrozen = [g for g in t.group_order if g not in frozen]
        k = t.group_order.index(unfrozen[0]) if unfrozen else len(t.group_order)
        region = t.split.input_variant(k)
        args = [st.env[n] for n in region.inputs]
        # keep only what the unfrozen regions read; the rest is freed inside the graph at its
        # last use (boxed calling convention), as eager autograd frees saved tensors
        keep = {n for g in unfrozen for n in t.split.regions[g].inputs}
        st.env = {n: v for n, v in st.env.items() if n in keep}
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = self._region_fn(INPUT, region)(args)
        del args
        self.last_times = {INPUT: time.perf_counter() - t0}
        n_in = len(t.split.input_grads)
        st.env.update((n, v) for n, v in zip(region.outputs[n_in:], outs[n_in:]) if n in keep)
        st.stage, st.frozen = "I", frozen
        st.held = {_storage(x) for x in tangents}
        st.held.update(_storage(g) for g in outs[:n_in] if isinstance(g, torch.Tensor))
        grads: list[torch.Tensor | None] = [None] * len(t.input_specs)
        for pos, g in zip(t.input_grad_slots, outs[:n_in]):
            grads[pos] = g
        return tuple(grads)

    def backward_weight(self, mb: int, frozen=frozenset()) -> None:
        """Accumulate .grad of the unfrozen groups' parameters; release `mb`'s state."""
        t = self.traced
        frozen = self._frozen_set(frozen)
        if t.forward_only:
            return
        st = self._state.get(mb)
        if st is None or st.stage != "I":
            raise RuntimeConfigError(f"backward_weight({mb}) needs backward_input({mb}) first")
        if not frozen >= st.frozen:
            raise RuntimeConfigError(
                f"backward_weight({mb}) unfreezes {sorted(st.frozen - frozen)} but "
                "backward_input was told they were frozen: pass the same frozen set to both"
            )
        env = st.env
        # like eager AccumulateGrad, .grad adopts only a tensor nothing else holds
        held = st.held
        held.update(_storage(v) for v in env.values() if isinstance(v, torch.Tensor))
        held.update(_storage(v) for v in (*t.params.values(), *t.buffers.values()))
        held.update(_storage(p.grad) for p in t.params.values() if p.grad is not None)
        todo = [g for g in reversed(t.group_order) if g not in frozen]
        remaining = Counter(n for g in todo for n in t.split.regions[g].inputs)
        try:
            with torch.no_grad():
                for g in todo:
                    region = t.split.regions[g]
                    args = [env[n] for n in region.inputs]
                    for n in region.inputs:  # last reader: let the region free it early
                        remaining[n] -= 1
                        if remaining[n] == 0:
                            env.pop(n, None)
                    t0 = time.perf_counter()
                    outs = self._region_fn("W", region)(args)
                    del args
                    self.region_calls[g] += 1
                    scale = self.grad_scale.get(g)  # per use, before uses are summed
                    for pname, grad in zip(t.region_params[g], outs):
                        _accumulate(t.params[pname], grad, held, scale)
                    self.last_times[g] = time.perf_counter() - t0
        finally:
            del self._state[mb]

    def backward(self, mb: int, *grad_outputs, frozen=frozenset()):
        """backward_input then backward_weight; returns the input gradients."""
        grads = self.backward_input(mb, *grad_outputs, frozen=frozen)
        self.backward_weight(mb, frozen=frozen)
        return grads

    @property
    def compile_seconds(self) -> float:
        """Seconds the backend spent compiling this program's graphs so far (0 for eager)."""
        return float(getattr(self.backend, "compile_seconds", 0.0))

    def precompile(self) -> StageProgram:
        """Build every backward_input variant (and its backend callable) now; they are otherwise
        built on first use, which would slow the first steps. Returns self."""
        split = self.traced.split
        if split is None:  # forward-only: nothing to build
            return self
        for k in range(len(self.group_order) + 1):
            self._region_fn(INPUT, split.input_variant(k))
        for g in self.group_order:
            self._region_fn("W", split.regions[g])
        return self

    def release(self, mb: int | None = None) -> None:
        """Drop kept state of `mb` (all microbatches when None) without computing gradients."""
        if mb is None:
            self._state.clear()
        else:
            self._state.pop(mb, None)

    @property
    def pending(self) -> list[int]:
        return sorted(self._state)

    def activation_bytes(self) -> int:
        """Bytes kept for pending backwards right now (saved activations after a forward, the
        stash after backward_input), each storage once; parameters, buffers and their views
        (a saved transposed weight) are not counted."""
        t = self.traced
        own = {_storage(v) for v in (*t.params.values(), *t.buffers.values())}
        kept = (v for st in self._state.values() for v in st.env.values())
        return saved_bytes(
            v for v in kept if isinstance(v, torch.Tensor) and _storage(v) not in own
        )

    def check_context(self) -> None:
        """Refuse to run in a context other than the traced one (kind 3): every submodule's
        ``training`` flag and the ambient autocast state must be as at trace time."""
        t = self.traced
        self.check_parameters()
        if t.training_flags and training_flags(t.module) != t.training_flags:
            now = training_flags(t.module)
            names = [n or type(t.module).__name__ for n, _ in t.module.named_modules()]
            diff = [n for n, a, b in zip(names, t.training_flags, now) if a != b]
            mode = "training" if t.training_flags[0] else "eval"
            raise RuntimeConfigError(
                f"{type(t.module).__name__} was traced in {mode} mode but the training flag of "
                f"{diff[:5]} changed since (module.train()/.eval() after tracing); the graphs "
                "are fixed to the traced mode (dropout, batch statistics): switch the module "
                "back, or trace a program in this mode (Pipeline.evaluate traces its own "
                "forward-only programs in the model's current mode)"
            )
        if t.autocast_state and autocast_state() != t.autocast_state:
            raise RuntimeConfigError(
                f"{type(t.module).__name__} was traced with autocast "
                f"{_autocast_text(t.autocast_state)} and runs under autocast "
                f"{_autocast_text(autocast_state())}; the graphs hold "
                "the casts of the trace: run it in the same torch.autocast context as the "
                "trace, or trace it (call trace_stage/compile()) inside the context you run in"
            )

    def check_parameters(self) -> None:
        """Refuse to run when the module's parameters are no longer those the graphs were
        traced for: a parameter replaced (``m.weight = nn.Parameter(...)``), its
        ``requires_grad`` flipped (which groups have weight-gradient regions, which stages
        have a backward at all, is fixed at trace time) or its dtype changed (``.double()``).
        Changing values in place (``p.data``, ``load_state_dict``, optimizer steps) is fine."""
        t = self.traced
        current = dict(t.module.named_parameters())
        replaced, flipped, recast = [], [], []
        for i, name in enumerate(t.param_names):
            traced_p = t.params[name]
            if name.startswith(LOSS_PREFIX) and name not in current:
                continue  # a loss_fn parameter lifted into the last stage, not the module's
            p = current.get(name)
            if p is not traced_p:
                replaced.append(name)
            elif t.param_requires_grad is not None and p.requires_grad != t.param_requires_grad[i]:
                flipped.append(name)
            elif t.param_dtypes and p.dtype != t.param_dtypes[i]:
                recast.append(f"{name} ({t.param_dtypes[i]} -> {p.dtype})")
        problems = [
            (replaced, "were replaced by other tensors"),
            (flipped, "changed requires_grad"),
            (recast, "changed dtype"),
        ]
        for names, what in problems:
            if names:
                raise RuntimeConfigError(
                    f"parameters {names[:5]}{' ...' if len(names) > 5 else ''} of "
                    f"{type(t.module).__name__} {what} after it was traced; its graphs are "
                    "fixed to the parameters they were traced for, so running them would give "
                    "wrong gradients. Call tfcompile.compile() (or trace_stage) again after "
                    "changing which parameters train, replacing or casting them; to skip a "
                    "group's weight gradient for a while, freeze it through FreezeConfig or "
                    "pipe.step(frozen=...) instead"
                )

    # -- helpers
    def _region_fn(self, kind: str, region: Region) -> GraphFn:
        """The backend's callable for `region`, made once per region."""
        key = (kind, region.name)
        fn = self._region_fns.get(key)
        if fn is None:
            fn = self._region_fns[key] = self.backend.region(region)
        return fn

    def _check_inputs(self, inputs: Sequence[Any], target: Any) -> list[torch.Tensor]:
        """Refuse inputs or a target other than the traced ones; returns the target's leaves."""
        specs = self.traced.input_specs
        if len(inputs) != len(specs):
            raise TraceError(
                f"forward got {len(inputs)} inputs, the stage was traced with "
                f"{len(specs)}; pass the same number of inputs as example_inputs"
            )
        for i, (x, spec) in enumerate(zip(inputs, specs)):
            if not isinstance(x, torch.Tensor):
                raise TraceError(f"input {i} is {type(x).__name__}, expected a tensor")
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise TraceError(
                    f"input {i} has shape {tuple(x.shape)} and dtype {x.dtype}, the stage was "
                    f"traced for {spec.shape} {spec.dtype}: trace a program per shape/dtype"
                )
        if not self.is_loss_stage:
            return []
        if target is None:
            raise TraceError("this is a loss stage: pass target= to forward")
        return _check_target(target, self.traced.target_spec, self.traced.target_specs)

    def _frozen_set(self, frozen: Iterable[str] | None) -> frozenset[str]:
        frozen = frozenset(frozen or ())
        unknown = frozen - set(self.groups)
        if unknown:
            raise GroupError(
                f"frozen names unknown groups {sorted(unknown)}; groups are {self.group_order}"
            )
        return frozen

    def _tangents(self, grad_outputs: Sequence[Any]) -> list[torch.Tensor]:
        """The backward's tangent inputs from the caller's output gradients (seed for a loss)."""
        t = self.traced
        if t.is_loss_stage:
            if len(grad_outputs) > 1:
                raise TraceError("the loss stage takes at most one grad_output (the seed)")
            seed = grad_outputs[0] if grad_outputs else None
            spec = t.tangent_specs[0]
            if seed is None:
                seed = torch.ones((), dtype=spec.dtype, device=spec.device)
            elif not isinstance(seed, torch.Tensor):
                seed = torch.tensor(float(seed), dtype=spec.dtype, device=spec.device)
            return [seed.reshape(()).to(dtype=spec.dtype, device=spec.device)]
        flat = list(grad_outputs)
        if len(flat) == 1 and t.num_outputs > 1 and isinstance(flat[0], (tuple, list)):
            flat = list(flat[0])
        if len(flat) != t.num_outputs:
            raise TraceError(
                f"backward_input got {len(flat)} grad_outputs, the stage has {t.num_outputs} "
                "outputs: pass one gradient per output (None for outputs without one)"
            )
        out = []
        for i, spec in zip(t.tangent_outputs, t.tangent_specs):
            g = flat[i]
            if g is None:
                g = spec.empty().zero_()
            elif not isinstance(g, torch.Tensor):
                raise TraceError(
                    f"grad_output {i} is {type(g).__name__}, expected a tensor of shape "
                    f"{spec.shape} and dtype {spec.dtype} (or None)"
                )
            elif tuple(g.shape) != spec.shape or g.dtype != spec.dtype:
                raise TraceError(
                    f"grad_output {i} has shape {tuple(g.shape)} and dtype {g.dtype}, expected "
                    f"{spec.shape} {spec.dtype} (the traced output's): the backward graph "
                    "was traced for that gradient"
                )
            elif not spec.strides_match(g):
                # the backward graph was traced for tangents strided like the output (e.g.
                # channels-last): its views need that layout, whatever layout g arrives in
                g = spec.empty(g.device).copy_(g)
            out.append(g)
        return out

    def __repr__(self) -> str:
        return (
            f"StageProgram({type(self.module).__name__}, groups={self.group_order}, "
            f"loss_stage={self.is_loss_stage})"
        )


def _autocast_text(state: tuple) -> str:
    on = [f"{dev}:{dtype}".replace("torch.", "") for dev, enabled, dtype in state if enabled]
    return ",".join(on) if on else "off"


def _check_target(target: Any, tree_spec: Any, specs: Sequence[Any]) -> list[torch.Tensor]:
    """The target's leaves, refused when its structure, shapes or dtypes differ from the example
    target's (the traced graph is fixed to them)."""
    leaves, got_spec = compat.tree_flatten(target)
    if tree_spec is not None and got_spec != tree_spec:
        raise TraceError(
            f"target has the structure {got_spec}, the stage was traced for {tree_spec}: pass "
            "targets structured like example_target"
        )
    for i, (x, spec) in enumerate(zip(leaves, specs)):
        where = "target" if len(specs) == 1 else f"target leaf {i}"
        if not isinstance(x, torch.Tensor):
            raise TraceError(f"{where} is {type(x).__name__}, expected a tensor")
        if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
            raise TraceError(
                f"{where} has shape {tuple(x.shape)} and dtype {x.dtype}, the stage was traced "
                f"for {spec.shape} {spec.dtype} (example_target): pass targets of that shape "
                "and dtype"
            )
    return leaves


def _traced_layout(x: torch.Tensor, spec) -> torch.Tensor:
    """`x` with the strides its graph input was traced for (kind 8): a channels-last
    activation that arrives contiguous (over the wire) is copied into the traced layout, since
    views in the graphs depend on it."""
    if spec.stride is None or spec.strides_match(x):
        return x
    return spec.empty(x.device).copy_(x)


def _check_unmodified(mb: int, versions: Sequence[tuple[int, torch.Tensor, int]]) -> None:
    """Refuse a backward whose saved inputs were changed in place since the forward."""
    for i, x, v in versions:
        if compat.version_counter(x) != v:
            raise RuntimeConfigError(
                f"input {i} of microbatch {mb} was modified in place after forward({mb}); "
                "the backward needs it unchanged: pass a fresh tensor (or a clone) to forward"
            )


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _accumulate(
    p: torch.Tensor, g: torch.Tensor, held: set[int], scale: float | None = None
) -> None:
    """Add a region's gradient (times ``scale``, grad="rescale") into ``p.grad`` like eager
    AccumulateGrad.

    A first gradient is adopted only when nothing else holds its storage: not in `held` (the
    tangents, input gradients handed out, saved values, parameters, other .grads, a gradient
    already adopted in this call sequence), a whole storage of its own, and p's layout and
    dtype; otherwise .grad is a copy. The adopted storage joins `held`, so a value returned
    twice by a region, or for two parameters, is copied the second time. The scale is applied
    in place of an adopted gradient or fused into the copy or the accumulation (no temporary:
    a rescaled group's weight gradient then costs what an unscaled one does)."""
    if p.grad is None:
        ptr = _storage(g)
        if (
            ptr in held
            or g.stride() != p.stride()
            or g.dtype != p.dtype
            or g.untyped_storage().nbytes() != g.numel() * g.element_size()
        ):
            g = torch.empty_like(p).copy_(g)
            ptr = _storage(g)
        if scale is not None:
            g.mul_(scale)  # a storage of its own (adopted or copied: checked above)
        held.add(ptr)
        p.grad = g
    elif scale is None:
        p.grad.add_(g)
    else:
        p.grad.add_(g, alpha=scale)


def training_flags(module: nn.Module) -> tuple[bool, ...]:
    """``training`` of every submodule, in ``module.modules()`` order: the mode pattern a
    program is traced for (dropout on/off, batch statistics vs running statistics)."""
    return tuple(m.training for m in module.modules())


def autocast_state() -> tuple:
    """The ambient autocast state, ``((device_type, enabled, dtype), ...)`` for cpu and cuda:
    a traced graph has the casts of the state it was traced in."""
    out = []
    for dev in ("cpu", "cuda"):
        try:
            on = torch.is_autocast_enabled(dev)
            out.append((dev, on, torch.get_autocast_dtype(dev) if on else None))
        except (TypeError, RuntimeError):  # a device type this build does not know
            continue
    return tuple(out)
