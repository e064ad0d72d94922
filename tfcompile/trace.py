"""Trace one pipeline stage into a StageProgram with skippable weight-gradient regions.

``trace_stage`` runs AOTAutograd (``functorch.compile.aot_function`` over
``torch.func.functional_call``, parameters and buffers as flat graph inputs; see TORCH-NOTES.md)
to get forward and backward fx GraphModules, then ``passes.split_weight_grad`` cuts the backward
into ``backward_input`` (input gradients + the values the weight work needs, each computed once)
and one weight-gradient region per parameter group. The program runs the raw graphs under
``torch.no_grad()`` and keeps per-microbatch state between forward, backward_input and
backward_weight.

Shapes are static: a program is traced for the example inputs' shapes and dtypes; calling it with
others raises TraceError (trace one program per shape).
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from tfcompile import _torch_compat as compat
from tfcompile.errors import GroupError, RuntimeConfigError, TraceError
from tfcompile.passes.flops import graph_flops
from tfcompile.passes.split_weight_grad import INPUT, split_weight_grad

__all__ = ["StageProgram", "trace_stage", "resolve_groups"]

ROOT_GROUP = "_root"


# ----------------------------------------------------------------------------- groups
def _canonical_names(module: nn.Module) -> dict[str, str]:
    """Every name a parameter is reachable under (tied aliases too) -> its canonical name."""
    by_id = {id(p): n for n, p in module.named_parameters()}
    return {n: by_id[id(p)] for n, p in module.named_parameters(remove_duplicate=False)}


def resolve_groups(module: nn.Module, groups: str | Mapping[str, Sequence[str]] = "block"):
    """Group name -> canonical parameter names (only parameters that require grad).

    "block": one group per direct child owning parameters (a ModuleList/Sequential child gives
    one group per element, named e.g. ``layers.0``); parameters held by the module itself form
    the group ``_root``. "tensor": one group per parameter. A dict: group -> parameter names.
    A parameter reachable under several names (tied weights) belongs to the first group that
    reaches it (for "block") and its gradient is the sum of all its uses.
    """
    canon = _canonical_names(module)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    if isinstance(groups, str):
        if groups == "tensor":
            return {n: [n] for n, _ in module.named_parameters() if n in trainable}
        if groups != "block":
            raise GroupError(
                f"groups={groups!r} is not known: use 'block', 'tensor' or a dict "
                "group name -> list of parameter names"
            )
        out: dict[str, list[str]] = {}
        seen: set[str] = set()

        def add(group: str, prefix: str, mod: nn.Module) -> None:
            for local, _ in mod.named_parameters(remove_duplicate=False):
                name = canon[f"{prefix}{local}"]
                if name in trainable and name not in seen:
                    seen.add(name)
                    out.setdefault(group, []).append(name)

        own = [n for n, _ in module.named_parameters(recurse=False, remove_duplicate=False)]
        for cname, child in module.named_children():
            if isinstance(child, (nn.ModuleList, nn.Sequential)):
                for ename, elem in child.named_children():
                    add(f"{cname}.{ename}", f"{cname}.{ename}.", elem)
            else:
                add(cname, f"{cname}.", child)
        for n in own:
            name = canon[n]
            if name in trainable and name not in seen:
                seen.add(name)
                out.setdefault(ROOT_GROUP, []).append(name)
        return out
    if not isinstance(groups, Mapping):
        raise GroupError("groups must be 'block', 'tensor' or a dict group -> parameter names")
    out = {}
    owner: dict[str, str] = {}
    for g, names in groups.items():
        if isinstance(names, str):
            raise GroupError(
                f"group {g!r}: give a list of parameter names, not the string {names!r}"
            )
        for n in names:
            if n not in canon:
                close = [c for c in canon if n.split(".")[-1] in c][:5]
                raise GroupError(
                    f"group {g!r} names unknown parameter {n!r}; known parameters look like "
                    f"{close or list(canon)[:5]} (see module.named_parameters())"
                )
            name = canon[n]
            if name in owner:
                raise GroupError(
                    f"parameter {n!r} is listed in group {owner[name]!r} and again in {g!r}"
                    + (f" (it is tied to {name!r})" if name != n else "")
                    + ": each parameter must belong to exactly one group"
                )
            owner[name] = g
            if name in trainable:
                out.setdefault(g, []).append(name)
    missing = sorted(trainable - set(owner))
    if missing:
        raise GroupError(
            f"parameters {missing[:8]}{' ...' if len(missing) > 8 else ''} are in no group: "
            "add them to a group (every trainable parameter needs one)"
        )
    return out


# ----------------------------------------------------------------------------- program
class _Spec:
    __slots__ = ("shape", "dtype", "device")

    def __init__(self, t: torch.Tensor, device: torch.device | None = None):
        self.shape, self.dtype = tuple(t.shape), t.dtype
        self.device = device if device is not None else t.device


class StageProgram:
    """A traced pipeline stage: forward, backward_input and per-group weight-gradient regions.

    See docs/interfaces.md for the contract. Attributes: ``module``, ``groups``,
    ``group_order``, ``region_flops``, ``input_flops``, ``forward_flops``, ``is_loss_stage``,
    ``region_calls``, ``last_times`` (seconds of the last backward_input and of each region);
    ``fw_graph``, ``bw_graph`` (raw traced graphs) and ``split`` (the
    :class:`~tfcompile.passes.SplitBackward`) for inspection.
    """

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)
        self.region_calls: Counter[str] = Counter()
        # wall seconds of the last backward_input ("input") and of each region that last ran
        self.last_times: dict[str, float] = {}
        self._state: dict[int, dict[str, Any]] = {}

    # -- helpers
    def _check_inputs(self, inputs: Sequence[Any], target: Any) -> None:
        if len(inputs) != len(self._input_specs):
            raise TraceError(
                f"forward got {len(inputs)} inputs, the stage was traced with "
                f"{len(self._input_specs)}; pass the same number of inputs as example_inputs"
            )
        for i, (x, spec) in enumerate(zip(inputs, self._input_specs)):
            if not isinstance(x, torch.Tensor):
                raise TraceError(f"input {i} is {type(x).__name__}, expected a tensor")
            if tuple(x.shape) != spec.shape or x.dtype != spec.dtype:
                raise TraceError(
                    f"input {i} has shape {tuple(x.shape)} and dtype {x.dtype}, the stage was "
                    f"traced for {spec.shape} {spec.dtype}: trace a program per shape/dtype"
                )
        if self.is_loss_stage and target is None:
            raise TraceError("this is a loss stage: pass target= to forward")

    def _frozen_set(self, frozen) -> frozenset[str]:
        frozen = frozenset(frozen or ())
        unknown = frozen - set(self.groups)
        if unknown:
            raise GroupError(
                f"frozen names unknown groups {sorted(unknown)}; groups are {self.group_order}"
            )
        return frozen

    # -- execution
    def forward(self, mb: int, *inputs: torch.Tensor, target: torch.Tensor | None = None):
        """Run the forward of microbatch `mb`; keeps what its backward needs."""
        self._check_inputs(inputs, target)
        if mb in self._state:
            raise RuntimeConfigError(
                f"microbatch {mb} already has a pending forward on this stage: run its "
                "backward (backward_weight) before reusing the index"
            )
        params = [self._params[n] for n in self._param_names]
        buffers = [self._buffers[n] for n in self._buffer_names]
        args = [*params, *buffers, *(x.detach() for x in inputs)]
        if self.is_loss_stage:
            args.append(target)
        with torch.no_grad():
            outs = self.fw_graph(*args)
        n_mut = len(self._mutated_buffers)
        for name, val in zip(self._mutated_buffers, outs[:n_mut]):
            self._buffers[name].copy_(val)
        user = outs[n_mut : n_mut + self._n_user]
        saved = outs[n_mut + self._n_user :]
        env = dict(zip(self._saved_names, saved))
        # like eager autograd, detect saved inputs modified in place before the backward
        versions = [(i, x, x._version) for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        self._state[mb] = {"env": env, "stage": "F", "versions": versions}
        result = pytree.tree_unflatten(list(user), self._out_spec)
        return result

    def backward_input(self, mb: int, *grad_outputs, frozen=frozenset()):
        """Input gradients of `mb` (None where none is needed); keeps the weight-work stash."""
        frozen = self._frozen_set(frozen)
        st = self._state.get(mb)
        if st is None or st["stage"] != "F":
            raise RuntimeConfigError(
                f"backward_input({mb}) needs a preceding forward({mb}) and no earlier "
                "backward_input for it"
            )
        for i, x, v in st["versions"]:
            if x._version != v:
                raise RuntimeConfigError(
                    f"input {i} of microbatch {mb} was modified in place after forward({mb}); "
                    "the backward needs it unchanged: pass a fresh tensor (or a clone) to forward"
                )
        env = st["env"]
        tangents = self._tangents(grad_outputs)
        env.update(zip(self._tangent_names, tangents))
        unfrozen = [g for g in self.group_order if g not in frozen]
        k = self.group_order.index(unfrozen[0]) if unfrozen else len(self.group_order)
        region = self.split.input_variant(k)
        args = [env[n] for n in region.inputs]
        # keep only what the unfrozen regions read; the rest is freed inside the graph at its
        # last use (boxed calling convention), as eager autograd frees saved tensors
        keep = set()
        for g in unfrozen:
            keep.update(self.split.regions[g].inputs)
        env = {n: v for n, v in env.items() if n in keep}
        st["env"] = env
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = region.run(args)
        del args
        self.last_times = {INPUT: time.perf_counter() - t0}
        n_in = len(self.split.input_grads)
        env.update((n, v) for n, v in zip(region.outputs[n_in:], outs[n_in:]) if n in keep)
        st["stage"] = "I"
        st["frozen"] = frozen
        grads: list[torch.Tensor | None] = [None] * len(self._input_specs)
        for pos, g in zip(self._input_grad_slots, outs[:n_in]):
            grads[pos] = g
        return tuple(grads)

    def backward_weight(self, mb: int, frozen=frozenset()) -> None:
        """Accumulate .grad of the unfrozen groups' parameters; release `mb`'s state."""
        frozen = self._frozen_set(frozen)
        st = self._state.get(mb)
        if st is None or st["stage"] != "I":
            raise RuntimeConfigError(f"backward_weight({mb}) needs backward_input({mb}) first")
        if not frozen >= st["frozen"]:
            raise RuntimeConfigError(
                f"backward_weight({mb}) unfreezes {sorted(st['frozen'] - frozen)} but "
                "backward_input was told they were frozen: pass the same frozen set to both"
            )
        env = st["env"]
        todo = [g for g in reversed(self.group_order) if g not in frozen]
        remaining = Counter(n for g in todo for n in self.split.regions[g].inputs)
        try:
            with torch.no_grad():
                for g in todo:
                    region = self.split.regions[g]
                    args = [env[n] for n in region.inputs]
                    for n in region.inputs:  # last reader: let the region free it early
                        remaining[n] -= 1
                        if remaining[n] == 0:
                            env.pop(n, None)
                    t0 = time.perf_counter()
                    outs = region.run(args)
                    del args
                    self.region_calls[g] += 1
                    for pname, grad in zip(self._region_params[g], outs):
                        _accumulate(self._params[pname], grad)
                    self.last_times[g] = time.perf_counter() - t0
        finally:
            del self._state[mb]

    def backward(self, mb: int, *grad_outputs, frozen=frozenset()):
        """backward_input then backward_weight; returns the input gradients."""
        grads = self.backward_input(mb, *grad_outputs, frozen=frozen)
        self.backward_weight(mb, frozen=frozen)
        return grads

    def precompile(self) -> StageProgram:
        """Build every backward_input variant now (they are otherwise built on first use), so
        the first steps are not slowed by it. Returns self."""
        for k in range(len(self.group_order) + 1):
            self.split.input_variant(k)
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

    def _tangents(self, grad_outputs):
        if self.is_loss_stage:
            if len(grad_outputs) > 1:
                raise TraceError("the loss stage takes at most one grad_output (the seed)")
            seed = grad_outputs[0] if grad_outputs else None
            spec = self._tangent_specs[0]
            if seed is None:
                seed = torch.ones((), dtype=spec.dtype, device=spec.device)
            elif not isinstance(seed, torch.Tensor):
                seed = torch.tensor(float(seed), dtype=spec.dtype, device=spec.device)
            return [seed.reshape(()).to(dtype=spec.dtype, device=spec.device)]
        flat = list(grad_outputs)
        if len(flat) == 1 and self._n_user > 1 and isinstance(flat[0], (tuple, list)):
            flat = list(flat[0])
        if len(flat) != self._n_user:
            raise TraceError(
                f"backward_input got {len(flat)} grad_outputs, the stage has {self._n_user} "
                "outputs: pass one gradient per output (None for outputs without one)"
            )
        out = []
        for i, spec in zip(self._tangent_outputs, self._tangent_specs):
            g = flat[i]
            if g is None:
                g = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
            elif tuple(g.shape) != spec.shape:
                raise TraceError(
                    f"grad_output {i} has shape {tuple(g.shape)}, expected {spec.shape}"
                )
            out.append(g.contiguous())
        return out

    def __repr__(self) -> str:
        return (
            f"StageProgram({type(self.module).__name__}, groups={self.group_order}, "
            f"loss_stage={self.is_loss_stage})"
        )


def _accumulate(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        if g.stride() != p.stride() or g.dtype != p.dtype:
            g = torch.empty_like(p).copy_(g)
        p.grad = g
    else:
        p.grad.add_(g)


# ----------------------------------------------------------------------------- tracing
def _check_arity(module: nn.Module, inputs: Sequence[Any]) -> None:
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


def trace_stage(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    loss_fn=None,
    example_target: torch.Tensor | None = None,
    groups: str | Mapping[str, Sequence[str]] = "block",
    input_requires_grad: Sequence[bool] | None = None,
) -> StageProgram:
    """Trace `module` (one pipeline stage) into a :class:`StageProgram`.

    An input gets a gradient when it is floating point and ``requires_grad`` is set on its
    example (an activation coming from an earlier stage), or when ``input_requires_grad`` (one
    bool per input) says so; integer token ids and inputs without ``requires_grad`` get None,
    and then the backward stops at the earliest unfrozen group.
    With ``loss_fn`` (last stage) the loss ``loss_fn(outputs, target)`` is part of the forward
    and must be a scalar; pass ``example_target``.
    """
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
    group_map = resolve_groups(module, groups)

    param_names = [n for n, _ in module.named_parameters()]
    params = dict(module.named_parameters())
    buffer_names = [n for n, _ in module.named_buffers()]
    buffers = dict(module.named_buffers())
    n_p, n_b = len(param_names), len(buffer_names)
    n_in = len(example_inputs)
    is_loss = loss_fn is not None

    # which buffers does the forward mutate (batch-norm running stats)? -> they become outputs
    probe = {n: b.clone() for n, b in buffers.items()}
    versions = {n: b._version for n, b in probe.items()}
    try:
        with torch.no_grad():
            eager_out = torch.func.functional_call(module, {**params, **probe}, example_inputs)
    except Exception as e:  # noqa: BLE001 - rewrap whatever the user's module raised
        raise TraceError(
            f"running {type(module).__name__} on the example inputs failed "
            f"({type(e).__name__}: {e}). Check that example_inputs match forward's arguments "
            f"(count, dtype: got {[x.dtype for x in example_inputs]}, shapes)"
        ) from e
    # fallback when AOTAutograd's output descriptors are unavailable: version or value changed
    mutated = [
        n
        for n in buffer_names
        if probe[n]._version != versions[n] or not torch.equal(probe[n], buffers[n])
    ]
    del probe

    def stage_fn(*args):
        p = dict(zip(param_names, args[:n_p]))
        p.update(zip(buffer_names, args[n_p : n_p + n_b]))
        xs = args[n_p + n_b : n_p + n_b + n_in]
        out = torch.func.functional_call(module, p, xs)
        if is_loss:
            loss = loss_fn(out, args[-1])
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.dim() != 0:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
                raise _LossShapeError(
                    f"loss_fn must return a scalar tensor, it returned {shape}: reduce it "
                    "(e.g. .mean() or reduction='mean')"
                )
            return loss
        return out

    trace_params = [params[n].detach().requires_grad_(params[n].requires_grad) for n in param_names]
    trace_buffers = [buffers[n].clone() for n in buffer_names]
    trace_inputs = []
    input_needs_grad = []
    if input_requires_grad is not None and len(input_requires_grad) != n_in:
        raise TraceError(
            f"input_requires_grad has {len(input_requires_grad)} entries for {n_in} inputs: "
            "give one bool per example input"
        )
    for i, x in enumerate(example_inputs):
        wanted = x.requires_grad if input_requires_grad is None else input_requires_grad[i]
        if wanted and not (x.is_floating_point() or x.is_complex()):
            raise TraceError(
                f"input {i} has dtype {x.dtype} and cannot get a gradient: set "
                "input_requires_grad to False for it"
            )
        needs = bool(wanted)
        input_needs_grad.append(needs)
        trace_inputs.append(x.detach().requires_grad_(needs))
    args = [*trace_params, *trace_buffers, *trace_inputs]
    if is_loss:
        args.append(example_target.detach())
    try:
        fw_gm, bw_gm, num_fwd_outputs, _ = compat.aot_trace(stage_fn, args, n_p + n_b)
    except _LossShapeError as e:
        raise TraceError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        if compat.is_data_dependent_error(e):
            raise TraceError(
                f"{type(module).__name__} has Python control flow that depends on tensor "
                f"values (e.g. `if x.sum() > 0:` or `.item()`), which a traced graph cannot "
                "represent. Rewrite it with tensor ops (torch.where, masking) or move the "
                f"decision out of forward. Original error: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        raise TraceError(f"tracing {type(module).__name__} failed: {type(e).__name__}: {e}") from e
    if bw_gm is None:
        raise TraceError(
            "nothing in this stage requires a gradient (no trainable parameter reaches the "
            "outputs and no input requires grad): there is no backward to compile"
        )

    # --- map graph outputs
    if is_loss:
        flat_out, out_spec = [eager_out], None
    else:
        flat_out, out_spec = pytree.tree_flatten(eager_out)
    n_user = 1 if is_loss else len(flat_out)
    n_mut = num_fwd_outputs - n_user
    mut_idx = compat.mutated_input_indices(fw_gm)
    if mut_idx is not None and all(n_p <= i < n_p + n_b for i in mut_idx):
        mutated = [buffer_names[i - n_p] for i in mut_idx]
    if n_mut != len(mutated):
        raise TraceError(
            f"could not match the forward graph's {num_fwd_outputs} outputs to {n_user} "
            f"outputs and {len(mutated)} mutated buffers; return plain tensors from forward"
        )
    fw_out_node = next(n for n in reversed(fw_gm.graph.nodes) if n.op == "output")
    n_saved = len(fw_out_node.args[0]) - num_fwd_outputs
    bw_ph = [n for n in bw_gm.graph.nodes if n.op == "placeholder"]
    saved_names = [n.name for n in bw_ph[:n_saved]]
    tangent_nodes = bw_ph[n_saved:]
    if is_loss:
        tangent_outputs = [0]
    else:
        tangent_outputs = [
            i
            for i, o in enumerate(flat_out)
            if isinstance(o, torch.Tensor) and o.is_floating_point() or _is_complex(o)
        ]
    if len(tangent_outputs) != len(tangent_nodes):
        # fall back: outputs that actually require grad in the traced call
        raise TraceError(
            f"the backward graph takes {len(tangent_nodes)} output gradients but the stage has "
            f"{len(tangent_outputs)} floating-point outputs; make every floating-point output "
            "depend on a parameter or an input that requires grad"
        )
    # fake values carry the device the graph was traced on; prefer the real outputs' device
    out_devices = [flat_out[i].device for i in tangent_outputs] if not is_loss else []
    if is_loss:
        out_devices = [example_inputs[0].device if example_inputs else torch.device("cpu")]
        if trace_params:
            out_devices = [trace_params[0].device]
    tangent_specs = [_Spec(compat.fake_value(t), dev) for t, dev in zip(tangent_nodes, out_devices)]

    # --- label backward outputs and split
    param_group = {p: g for g, ps in group_map.items() for p in ps}
    labels: list[str | None] = []
    for n in param_names:
        labels.append(param_group.get(n))
    labels += [None] * n_b
    labels += [INPUT if needs else None for needs in input_needs_grad]
    if is_loss:
        labels.append(None)
    bw_out_node = next(n for n in reversed(bw_gm.graph.nodes) if n.op == "output")
    bw_outs = list(bw_out_node.args[0])
    if len(bw_outs) != len(labels):
        raise TraceError(f"backward graph has {len(bw_outs)} outputs, expected {len(labels)}")
    for i, (o, lab) in enumerate(zip(bw_outs, labels)):
        if lab is not None and o is None:
            labels[i] = None  # parameter unused in this stage's outputs
    group_order = _forward_order(fw_gm, param_names, group_map)
    split = split_weight_grad(bw_gm, labels, group_order)
    region_params = {g: [param_names[i] for i in split.region_grads[g]] for g in group_order}
    input_grad_slots = [i - n_p - n_b for i in split.input_grads]

    region_flops = {g: graph_flops(split.regions[g].gm) for g in group_order}
    return StageProgram(
        module=module,
        groups={g: list(group_map[g]) for g in group_order},
        group_order=group_order,
        region_flops=region_flops,
        input_flops=graph_flops(split.input_variant(0).gm),
        forward_flops=graph_flops(fw_gm),
        is_loss_stage=is_loss,
        fw_graph=fw_gm,
        bw_graph=bw_gm,
        split=split,
        input_requires_grad=tuple(input_needs_grad),
        _params=params,
        _buffers=buffers,
        _param_names=param_names,
        _buffer_names=buffer_names,
        _mutated_buffers=mutated,
        _input_specs=[_Spec(x) for x in example_inputs],
        _n_user=n_user,
        _out_spec=out_spec if out_spec is not None else pytree.tree_flatten(0)[1],
        _saved_names=saved_names,
        _tangent_names=[t.name for t in tangent_nodes],
        _tangent_outputs=tangent_outputs,
        _tangent_specs=tangent_specs,
        _region_params=region_params,
        _input_grad_slots=input_grad_slots,
    )


class _LossShapeError(Exception):
    pass


def _is_complex(o: Any) -> bool:
    return isinstance(o, torch.Tensor) and o.is_complex()


def _forward_order(
    fw_gm: fx.GraphModule, param_names: list[str], group_map: dict[str, list[str]]
) -> list[str]:
    """Groups sorted by where their parameters are first used in the forward graph."""
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
