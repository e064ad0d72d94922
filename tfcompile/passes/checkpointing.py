"""Activation checkpointing inside a traced stage: which forward values the backward recomputes.

At graph level recomputation is just more of ``backward_input``: the forward saves fewer values,
and the backward graph recomputes the others from them before computing input gradients and the
weight-gradient stash (``split_weight_grad`` then places each recomputed value where it is
needed: in the shared input part, or in the one group's region that alone reads it, so a frozen
group recomputes nothing of its own).

Two steps, both owned here:

1. While tracing, :func:`annotating` marks every traced op with the block it runs in (the
   stage's blocks, as ``groups="block"`` sees them) and with the ``torch.utils.checkpoint``
   region it runs in, if any (``node.meta["custom"]``). AOTAutograd traces straight through
   ``torch.utils.checkpoint`` (its saved-tensor hooks are not honoured in the joint graph), so
   without this the user's checkpoint regions would be silently dropped.
2. :func:`tag_recompute` turns the policy into torch's recompute tags on the joint graph's
   forward nodes (``node.meta["recompute"] = CheckpointPolicy.*`` and ``ac_graph_id``, the
   tags selective activation checkpointing uses), which torch's default partitioner honours:
   tagged values are not saved but recomputed in the backward; the values at the boundary of
   two tagged regions are saved (``cleanup_recompute_tags``).

Policies (``ACPolicy``):

- ``"none"``: save what the backend's partitioner saves (``Backend.partition``: the default
  partition for the eager backend, min-cut for inductor); only the user's checkpoint regions
  are recomputed. Whenever anything is tagged (a policy other than ``"none"``, a checkpoint
  region), torch's default partitioner carries the tags out, whatever the backend.
- ``"full"``: save each block's input (the previous block's output) only; every op inside a
  block is recomputed. Ops outside blocks (a stage's loss) are saved as usual.
- ``"selective"``: save the outputs of compute-heavy ops (matmuls, convolutions, attention;
  :data:`SAVE_OPS`) and recompute the cheap ones (elementwise, norms, views) from them.

Random ops (dropout) are never recomputed: their outputs are saved, so the recomputed graph
sees the same random numbers and gradients stay exact.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Literal

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import CheckpointPolicy

from tfcompile import _torch_compat as compat

ACPolicy = Literal["none", "full", "selective"]
AC_POLICIES: tuple[str, ...] = ("none", "full", "selective")

# node.meta["custom"] keys written while tracing
BLOCK_KEY = "tfcompile_block"  # index of the stage block the op runs in
CHECKPOINT_KEY = "tfcompile_checkpoint"  # index of the torch.utils.checkpoint region

#: Ops whose outputs "selective" saves: the compute-intensive ones (what torch's selective
#: activation checkpointing examples save), everything else is recomputed from them.
SAVE_OPS: frozenset[str] = frozenset(
    {
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "convolution",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    }
)

# user checkpoint regions get ac_graph_ids after the blocks'
_REGION_ID_BASE = 1_000_000


def check_policy(policy: str) -> ACPolicy:
    """`policy` if it is one of :data:`AC_POLICIES`; ValueError naming them otherwise."""
    if policy not in AC_POLICIES:
        raise ValueError(
            f"activation_checkpointing={policy!r}: choose one of {', '.join(AC_POLICIES)}"
        )
    return policy  # type: ignore[return-value]


def stage_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks "full" checkpointing saves the input of: the module's direct children, a
    ModuleList/Sequential child expanded into its elements (the blocks ``groups="block"``
    gives one group each). A module without children is one block."""
    out: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            out.extend(child.children())
        else:
            out.append(child)
    return out or [module]


class _Annotator(TorchFunctionMode):
    """Annotates each torch call made while tracing with its block and checkpoint region."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[int] = []  # stack of block indices (hooks push/pop)
        self.regions: dict[int, int] = {}  # checkpoint pack-hook id -> region index
        self.counter = itertools.count()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        note = {}
        if self.blocks:
            note[BLOCK_KEY] = self.blocks[-1]
        region = compat.active_checkpoint_region()
        if region is not None:
            if region not in self.regions:
                self.regions[region] = next(self.counter)
            note[CHECKPOINT_KEY] = self.regions[region]
        if not note:
            return func(*args, **kwargs)
        with compat.annotate_nodes(note):
            return func(*args, **kwargs)


@contextlib.contextmanager
def annotating(module: nn.Module) -> Iterator[None]:
    """Context for tracing `module`: ops get their block index (see :func:`stage_blocks`) and
    checkpoint region in ``node.meta["custom"]`` (tracing must preserve node meta, as
    ``_torch_compat.aot_trace`` does). Hooks and mode are removed on exit."""
    mode = _Annotator()
    handles = []
    for i, block in enumerate(stage_blocks(module)):
        if block is module:
            continue

        def enter(_m, _args, i=i):
            mode.blocks.append(i)

        def leave(_m, _args, _out):
            if mode.blocks:
                mode.blocks.pop()

        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(leave, always_call=True))
    try:
        with mode:
            yield
    finally:
        for h in handles:
            h.remove()


def forward_nodes(joint: fx.GraphModule) -> list[fx.Node]:
    """The joint graph's forward ops: call_function nodes that depend on no tangent (the
    backward's inputs), in graph order."""
    on_tangent: set[fx.Node] = set()
    out = []
    for node in joint.graph.nodes:
        if node.op == "placeholder":
            if node.name.startswith("tangents"):
                on_tangent.add(node)
            continue
        if any(a in on_tangent for a in node.all_input_nodes):
            on_tangent.add(node)
        elif node.op == "call_function":
            out.append(node)
    return out


def tag_recompute(joint: fx.GraphModule, policy: ACPolicy) -> int:
    """Write recompute tags for `policy` into the joint graph's forward nodes (pure in the
    sense of the partition: only ``node.meta`` changes). Returns the number of tagged nodes;
    0 means the default partition is unchanged."""
    tagged = 0
    for node in forward_nodes(joint):
        region = compat.node_annotation(node, CHECKPOINT_KEY)
        block = compat.node_annotation(node, BLOCK_KEY)
        if compat.is_random_op(node):
            continue  # saved: recomputing would draw other random numbers
        if region is not None:
            tag, graph_id = CheckpointPolicy.MUST_RECOMPUTE, _REGION_ID_BASE + region
        elif policy == "full" and block is not None:
            tag, graph_id = CheckpointPolicy.MUST_RECOMPUTE, block + 1
        elif policy == "selective":
            save = compat.op_base_name(node.target) in SAVE_OPS
            tag = CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.MUST_RECOMPUTE
            graph_id = 0
        else:
            continue
        node.meta["recompute"] = tag
        node.meta["ac_graph_id"] = graph_id
        tagged += tag is CheckpointPolicy.MUST_RECOMPUTE
    return tagged


def saved_bytes(tensors) -> int:
    """Bytes of the distinct storages among `tensors` (values kept for a backward): a tensor
    and its views count once."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())
