"""The one place that touches private / semi-private torch APIs.

Checked on torch 2.13.0 (CPU, this repository's pinned version) and written against the
AOTAutograd entry points that also exist unchanged in torch 2.11 (``functorch.compile``:
``aot_function``, ``default_partition``, ``make_boxed_func`` semantics not used).
Everything else in tfcompile goes through the helpers below, so a torch upgrade that moves these
names needs a change here only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

# torch's pytree is the flattening torch.func and AOTAutograd use themselves, so a stage's
# outputs flatten here exactly as they did while tracing.
from torch.utils import _pytree

CHECKED_TORCH_VERSIONS = ("2.11", "2.13")

# Substrings of exception types/messages that mean "Python control flow depended on tensor data".
_DATA_DEPENDENT_MARKERS = (
    "DataDependent",
    "data-dependent",
    "data dependent",
    "GuardOnDataDependentSymNode",
    "Dynamic control flow",
    "item()",
    "aten._local_scalar_dense",
    "is not supported with FakeTensor",
)


def aot_trace(
    fn: Callable[..., Any],
    args: Sequence[Any],
    num_params_buffers: int,
    tag_joint: Callable[[fx.GraphModule, int], int | None] | None = None,
    partition: str = "default",
) -> tuple[fx.GraphModule, fx.GraphModule | None, int, Any]:
    """Trace ``fn(*args)`` with AOTAutograd into (forward, backward) fx GraphModules.

    Uses ``functorch.compile.aot_function`` with no-op compilers and a partition function that
    captures the partition (exact gradients, see TORCH-NOTES.md). `partition` picks the
    partitioner: ``"default"`` (``default_partition``: the forward saves what eager autograd
    would) or ``"min_cut"`` (``min_cut_rematerialization_partition``, what torch.compile uses
    for training: fewer saved values, cheap ops recomputed in the backward) when nothing is
    tagged; a joint graph with recompute tags is always partitioned by ``default_partition``,
    which carries out exactly what the tags say (min-cut refuses some of them, e.g. a tagged
    output of the CPU flash-attention op, which it may neither save nor recompute).
    Returns ``(fw_gm, bw_gm, num_fwd_outputs, eager_like_outputs)``; ``bw_gm`` is
    None when nothing required grad. The partition runs during the first call.
    ``tag_joint(joint, num_fwd_outputs)`` may write recompute tags (``node.meta["recompute"]``,
    ``CheckpointPolicy``) into the joint graph first and returns how many nodes it tagged; the
    default partitioner then saves only the untagged forward values and the backward
    recomputes the tagged ones. Annotations made
    with :func:`annotate_nodes` while tracing reach the joint graph's ``node.meta["custom"]``.
    """
    from functorch.compile import (
        aot_function,
        default_partition,
        min_cut_rematerialization_partition,
    )

    partitioners = {"default": default_partition, "min_cut": min_cut_rematerialization_partition}
    partition_fn = partitioners[partition]
    captured: dict[str, Any] = {}

    def partition_and_capture(joint, joint_inputs, **kwargs):
        tagged = tag_joint(joint, kwargs["num_fwd_outputs"]) if tag_joint is not None else 0
        fn = default_partition if tagged else partition_fn
        fw, bw = fn(joint, joint_inputs, **kwargs)
        captured["fw"], captured["bw"] = fw, bw
        captured["num_fwd_outputs"] = kwargs.get("num_fwd_outputs")
        return fw, bw

    def fw_only(gm, _example_inputs):
        captured.setdefault("fw_only", gm)
        return gm

    nop = lambda gm, _example_inputs: gm
    compiled = aot_function(
        fn,
        fw_compiler=fw_only,
        bw_compiler=nop,
        partition_fn=partition_and_capture,
        num_params_buffers=num_params_buffers,
    )
    # real tensors the function reaches without them being arguments (plain tensor attributes,
    # a loss_fn's closed-over class weights) must not meet FakeTensors as real inputs: trace
    # under a fake mode that accepts them, so they become constants (get_attr) of the graph
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_args = [
        mode.from_tensor(a, static_shapes=True) if isinstance(a, torch.Tensor) else a for a in args
    ]
    with preserving_node_meta():
        out = compiled(*fake_args)
    if "fw" not in captured:
        return captured["fw_only"], None, -1, out
    return captured["fw"], captured["bw"], captured["num_fwd_outputs"], out


def is_data_dependent_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _DATA_DEPENDENT_MARKERS)


def output_mask_index(target: Any) -> int | None:
    """Index of the ``output_mask`` argument of a fused backward kernel, or None."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return None
    for i, arg in enumerate(schema.arguments):
        if arg.name == "output_mask":
            return i
    return None


def op_name(target: Any) -> str:
    """Stable readable name of a call_function target: ``aten.mm``, ``aten.add.Tensor``."""
    if isinstance(target, torch._ops.OpOverload):
        packet = target.overloadpacket
        ns = getattr(target, "namespace", "aten")
        base = f"{ns}.{packet.__name__}"
        overload = target._overloadname
        return base if overload == "default" else f"{base}.{overload}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"aten.{target.__name__}"
    mod = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", repr(target))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{mod}.{name}" if mod else name


def op_base_name(target: Any) -> str:
    """``mm`` for aten.mm.default, ``convolution_backward`` etc.; '' for non-aten targets."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return ""


def fake_value(node: fx.Node) -> Any:
    """The FakeTensor (or tuple of them / SymInt) recorded for a node by AOTAutograd."""
    return node.meta.get("val", node.meta.get("tensor_meta"))


def mutated_input_indices(fw_gm: fx.GraphModule) -> list[int] | None:
    """Flat input indices whose mutation the forward graph returns first (batch-norm stats),
    read from the output descriptors AOTAutograd attaches; None when they are not available."""
    out = next(n for n in reversed(fw_gm.graph.nodes) if n.op == "output")
    descs = out.meta.get("desc")
    if not isinstance(descs, (list, tuple)):
        return None
    idx = []
    for d in descs:
        if type(d).__name__ == "InputMutationAOTOutput":
            inner = getattr(d, "mutated_input", None)
            if not hasattr(inner, "idx"):
                return None
            idx.append(inner.idx)
    return idx


def tangent_output_indices(tangent_nodes: Sequence[fx.Node]) -> list[int] | None:
    """The user-output index each backward tangent placeholder belongs to, read from the input
    descriptors AOTAutograd attaches (``TangentAOTInput(output=PlainAOTOutput(idx=i))``): an
    output that does not require grad (a skip connection of the first stage's input) has no
    tangent. None when the descriptors are not available."""
    idx = []
    for node in tangent_nodes:
        d = node.meta.get("desc")
        out = getattr(d, "output", None)
        if type(d).__name__ != "TangentAOTInput" or type(out).__name__ != "PlainAOTOutput":
            return None
        idx.append(out.idx)
    return idx


def make_boxed(gm: fx.GraphModule) -> bool:
    """Switch `gm` to the boxed calling convention (``gm([a, b, ...])``: the generated code takes
    one list and clears it), so inputs can be freed at their last use inside the graph instead of
    living until the call returns. Returns False (gm unchanged) where torch lacks it."""
    try:
        from torch.fx.graph import _BoxedCodeGen
    except ImportError:
        return False
    gm.graph.set_codegen(_BoxedCodeGen())
    gm.recompile()
    return True


def tree_flatten(tree: Any) -> tuple[list[Any], Any]:
    """Leaves of a (nested) output and its spec, as torch's pytree flattens them."""
    return _pytree.tree_flatten(tree)


def tree_unflatten(leaves: Sequence[Any], spec: Any) -> Any:
    """Inverse of :func:`tree_flatten`."""
    return _pytree.tree_unflatten(list(leaves), spec)


def leaf_spec() -> Any:
    """The spec of a single leaf (a lone tensor), for outputs that are never nested."""
    return _pytree.tree_flatten(0)[1]


def version_counter(t: torch.Tensor) -> int:
    """The tensor's in-place modification counter (what autograd checks saved tensors with)."""
    return t._version


# -- inductor (tfcompile/compile_backend.py compiles stage regions through these) -------------


def inductor_cache_dir(path: str | None = None) -> str:
    """Inductor's on-disk cache directory (FX graph cache, generated kernels), made absolute.

    With `path` it becomes the process's cache directory (``TORCHINDUCTOR_CACHE_DIR``, which
    inductor reads at every lookup and which child processes inherit: torchrun workers and a
    second run reuse what the first compiled). Without, the current one (the environment
    variable, else inductor's default under the temp dir)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    if path is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(path)
    return cache_dir()


def inductor_compile(fn: Callable[..., Any], example_args: Sequence[Any]) -> Callable[[list], Any]:
    """Compile ``fn(*args)`` (an aten-level, functional graph callable) with inductor.

    The graph is retraced with ``make_fx`` over fake copies of `example_args` (static shapes,
    their strides) under inductor's decomposition table (``select_decomp_table``), then compiled
    by ``compile_fx_inner`` (C++/OpenMP on CPU, Triton on CUDA; FX graph cache on disk). The
    result takes its inputs as one list which it clears (boxed calling convention: inputs are
    freed at their last use) and returns the outputs in order."""
    from torch._guards import TracingContext, tracing
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = [
        mode.from_tensor(a, static_shapes=True) if isinstance(a, torch.Tensor) else a
        for a in example_args
    ]
    with mode:
        gm = make_fx(fn, decomposition_table=select_decomp_table())(*fake)
    with tracing(TracingContext(mode)):
        return compile_fx_inner(gm, fake)
def active_checkpoint_region() -> int | None:
    """An id of the ``torch.utils.checkpoint`` (non-reentrant) region the current code runs
    in, or None. Non-reentrant checkpoint pushes saved-tensor hooks whose pack hook is a
    closure of its private ``_checkpoint_hook``; AOTAutograd traces through the region without
    honouring them (the joint graph saves what it would save without checkpoint), so tracing
    reads the stack to tag the region's ops instead. The id is the pack hook's, one per call."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(True)
    if not hooks:
        return None
    pack = hooks[0]
    if "_checkpoint_hook" not in getattr(pack, "__qualname__", ""):
        return None
    return id(pack)


def annotate_nodes(annotation: dict[str, Any]):
    """Context: fx nodes traced inside it get ``annotation`` in ``node.meta["custom"]``
    (``torch.fx.traceback.annotate``; needs :func:`preserving_node_meta` around the trace)."""
    import torch.fx.traceback as fx_traceback

    return fx_traceback.annotate(annotation)


def preserving_node_meta():
    """Context: tracing copies the current annotations into each node's meta."""
    import torch.fx.traceback as fx_traceback

    return fx_traceback.preserve_node_meta()


def node_annotation(node: fx.Node, key: str) -> Any:
    """The value ``annotate_nodes`` wrote under `key` for `node`, or None."""
    custom = node.meta.get("custom")
    return custom.get(key) if isinstance(custom, dict) else None


def is_random_op(node: fx.Node) -> bool:
    """Whether `node` draws random numbers (dropout's bernoulli): recomputing it would draw
    other numbers, so checkpointing saves it instead."""
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded in tags
