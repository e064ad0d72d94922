"""What a stage uses besides its parameters, buffers and inputs (issue 11, kind 4).

AOTAutograd lifts only what is passed in: a stage's parameters, buffers and inputs become graph
inputs, and any other real tensor it touches (a causal mask kept as a plain attribute, a class
weight inside a loss, a closed-over table) is captured as a graph constant. That is right for
constants and silently wrong for anything that should be trained, so:

- an ``nn.Module`` loss_fn's parameters and buffers are lifted into graph inputs named
  ``loss_fn.<name>``; its trainable parameters form the group ``loss_fn`` and are trained;
- a plain tensor that requires grad (a module attribute, a closure cell, a default argument or
  a global captured as a constant) is refused with a TraceError that names it and says what to
  register it as.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tfcompile.errors import TraceError

__all__ = [
    "LOSS_GROUP",
    "LOSS_PREFIX",
    "check_graph_constants",
    "check_plain_tensor_attributes",
    "lift_loss_fn",
    "plain_tensors",
]

# parameters and buffers of an nn.Module loss_fn are graph inputs of the last stage, named with
# this prefix; its trainable parameters form the group LOSS_GROUP
LOSS_PREFIX = "loss_fn."
LOSS_GROUP = "loss_fn"


def lift_loss_fn(
    loss_fn: Callable | None,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    group_map: dict[str, list[str]],
) -> tuple[str, ...]:
    """Kind 4: an nn.Module loss_fn's parameters and buffers become graph inputs of the stage,
    named ``loss_fn.<name>`` (added to `params`/`buffers` after the module's own), so a class
    weight traces as an input instead of a real tensor under FakeTensorMode, and a learnable
    loss parameter (a temperature) gets its gradient like any parameter, in the group
    ``loss_fn``. Returns the added names."""
    if not isinstance(loss_fn, nn.Module):
        return ()
    names = []
    for n, t in loss_fn.named_parameters():
        params[LOSS_PREFIX + n] = t
        names.append(LOSS_PREFIX + n)
    for n, t in loss_fn.named_buffers():
        buffers[LOSS_PREFIX + n] = t
        names.append(LOSS_PREFIX + n)
    trainable = [n for n in names if n in params and params[n].requires_grad]
    if trainable:
        if LOSS_GROUP in group_map:
            raise TraceError(
                f"the stage already has a group named {LOSS_GROUP!r}; it is reserved for the "
                "loss_fn's parameters: rename that group"
            )
        group_map[LOSS_GROUP] = trainable
    return tuple(names)


def plain_tensors(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(where, tensor) of the tensors an object holds outside _parameters/_buffers: plain
    module attributes (also in lists/tuples/dicts one level deep) and, for a function, the
    tensors it closes over or takes as defaults."""
    if isinstance(obj, nn.Module):
        for mod_name, m in obj.named_modules():
            where = f"{prefix}{'.' + mod_name if mod_name else ''}"
            for attr, v in vars(m).items():
                if attr.startswith("_"):
                    continue
                vals = v.values() if isinstance(v, dict) else v
                vals = vals if isinstance(v, (dict, list, tuple)) else [v]
                for t in vals:
                    if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                        yield f"{type(m).__name__} {where}.{attr}", t
        return
    fn = getattr(obj, "__func__", obj)
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _cell_ok(c)]
    for v in [*cells, *(getattr(fn, "__defaults__", None) or ())]:
        if isinstance(v, torch.Tensor):
            yield f"a tensor {prefix} closes over", v


def _cell_ok(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - empty cells raise
    except ValueError:
        return False
    return True


def _refuse_grad_constant(where: str) -> TraceError:
    return TraceError(
        f"{where} is a tensor that requires grad but is neither a parameter nor a buffer: the "
        "traced graph would hold it as a constant and it would silently get no gradient. "
        "Register it as an nn.Parameter (to train it) or with register_buffer (a constant), "
        "or .detach() it"
    )


def check_plain_tensor_attributes(module: nn.Module, loss_fn: Callable | None) -> None:
    """Kind 4: tensors the stage holds outside its parameters and buffers trace as constants;
    one that requires grad would silently never be trained, so it is refused up front, naming
    the module and attribute."""
    for where, t in plain_tensors(module, "stage"):
        if t.requires_grad:
            raise _refuse_grad_constant(where)
    if loss_fn is not None:
        for where, t in plain_tensors(loss_fn, "loss_fn"):
            if t.requires_grad:
                raise _refuse_grad_constant(where)


def check_graph_constants(
    fw_gm: fx.GraphModule,
    bw_gm: fx.GraphModule | None,
    module: nn.Module,
    loss_fn: Callable | None,
) -> None:
    """Kind 4, generic: any real tensor the trace captured as a constant (a plain attribute, a
    closure, a global) that requires grad would get no gradient: refuse it."""
    for gm in (fw_gm, bw_gm):
        if gm is None:  # a forward-only stage has no backward graph
            continue
        for node in gm.graph.nodes:
            if node.op != "get_attr":
                continue
            t = getattr(gm, node.target, None)
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise _refuse_grad_constant(
                    f"a tensor of shape {tuple(t.shape)} that {type(module).__name__}"
                    f"{' or its loss_fn' if loss_fn is not None else ''} uses"
                )
