"""Roles of graph inputs and outputs, kept in ``node.meta`` (as torch's passes talk).

``trace_stage`` writes them once; the passes (golden text, drawing) read them from the graphs
and never need the program object around the graphs.

- every placeholder: ``node.meta[ROLE]``, e.g. ``"param layers.0.w1.weight"``,
  ``"buffer bn.running_mean"``, ``"input 0"``, ``"target"`` (forward) and ``"saved 3"``,
  ``"tangent 0"`` (backward). Regions extracted from the backward copy their placeholders'
  meta, so their saved/tangent inputs keep the role; stash inputs have none.
- the output node: ``node.meta[OUTPUT_ROLES]``, one role per returned value. Forward:
  ``"updated buffer <name>"``, ``"output <i>"``, ``"saved <i>"``; backward: ``"grad <role of the
  primal input>"`` (``"grad param layers.0.w1.weight"``, ``"grad input 0"``, ...).
- the backward output node: ``node.meta[OUTPUT_GROUPS]``, the label ``split_weight_grad`` got
  for each output (a group name, ``"input"`` or None).
"""

from __future__ import annotations

import torch.fx as fx

__all__ = [
    "OUTPUT_GROUPS",
    "OUTPUT_ROLES",
    "ROLE",
    "output_node",
    "output_roles",
    "placeholder_roles",
    "role_index",
]

ROLE = "tfcompile_role"
OUTPUT_ROLES = "tfcompile_output_roles"
OUTPUT_GROUPS = "tfcompile_output_groups"


def output_node(gm: fx.GraphModule | fx.Graph) -> fx.Node:
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    return next(n for n in reversed(graph.nodes) if n.op == "output")


def placeholder_roles(gm: fx.GraphModule | fx.Graph) -> dict[str, str]:
    """Placeholder name -> role, for the placeholders that have one."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    return {n.name: n.meta[ROLE] for n in graph.nodes if n.op == "placeholder" and ROLE in n.meta}


def output_roles(gm: fx.GraphModule | fx.Graph) -> list[str]:
    """The role of each value the graph returns ([] when none were written)."""
    return list(output_node(gm).meta.get(OUTPUT_ROLES, ()))


def role_index(role: str, kind: str) -> int | None:
    """``3`` for ``role_index("saved 3", "saved")``; None when `role` is of another kind."""
    head, _, tail = role.rpartition(" ")
    return int(tail) if head == kind and tail.isdigit() else None
