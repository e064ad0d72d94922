"""FLOP counts of fx graphs and graph regions.

Counted from the shapes AOTAutograd records on every node (``node.meta["val"]``):

* matmuls (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``linear``, ``matmul``) = 2 * M * K * N;
* convolutions (``convolution``) = 2 * out_numel * (C_in / groups) * prod(kernel), and
  ``convolution_backward`` = the same per computed output (grad_input, grad_weight), plus
  out_numel for grad_bias;
* attention (``scaled_dot_product_*``): forward 4 * B * H * L_q * L_k * D, backward twice that;
* every other non-view op: one FLOP per output element (norms, activations, reductions).

With symbolic sizes the counts are sympy expressions (usable directly as planner costs);
with static shapes they are ints.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx as fx

from tfcompile._torch_compat import fake_value, op_base_name

VIEW_OPS = {
    "view",
    "_unsafe_view",
    "reshape",
    "t",
    "transpose",
    "permute",
    "expand",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "detach",
    "alias",
    "as_strided",
    "unbind",
    "split",
    "split_with_sizes",
    "lift_fresh_copy",
    "_reshape_alias",
    "diagonal",
    "unfold",
}
_MATMULS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def _size(x: Any):
    """int, or a sympy expression for a SymInt."""
    if isinstance(x, torch.SymInt):
        return x.node.expr
    return int(x)


def _prod(xs):
    out = 1
    for x in xs:
        out = out * _size(x)
    return out


def _numel(t: Any):
    if isinstance(t, torch.Tensor):
        return _prod(t.shape)
    if isinstance(t, (tuple, list)):
        return sum((_numel(x) for x in t), 0)
    return 0


def _val(a: Any):
    return fake_value(a) if isinstance(a, fx.Node) else a


def node_flops(node: fx.Node):
    """FLOPs of one node (0 for placeholders, views and non-aten calls)."""
    if node.op != "call_function" or node.target is operator.getitem:
        return 0
    name = op_base_name(node.target)
    if not name or name in VIEW_OPS:
        return 0
    out = fake_value(node)
    args = [_val(a) for a in node.args]
    if name in _MATMULS:
        # 2 * (output elements) * (contracted dimension)
        a = args[1] if name in ("addmm", "baddbmm") else args[0]
        return 2 * _numel(out) * _size(a.shape[-1])
    if name == "convolution":
        x, w, groups = args[0], args[1], args[8]
        return 2 * _numel(out) * (_size(x.shape[1]) // groups) * _prod(w.shape[2:])
    if name == "convolution_backward":
        grad_out, x, w = args[0], args[1], args[2]
        groups, mask = args[9], args[10]
        fwd = 2 * _numel(grad_out) * (_size(x.shape[1]) // groups) * _prod(w.shape[2:])
        total = 0
        if mask[0]:
            total += fwd
        if mask[1]:
            total += fwd
        if mask[2]:
            total += _numel(grad_out)
        return total
    if "scaled_dot_product" in name:
        backward = name.endswith("_backward")
        q, k = (args[1], args[2]) if backward else (args[0], args[1])
        b_h = _prod(q.shape[:-2])
        base = 4 * b_h * _size(q.shape[-2]) * _size(k.shape[-2]) * _size(q.shape[-1])
        return 2 * base if backward else base
    return _numel(out)


def graph_flops(gm: fx.GraphModule | fx.Graph):
    """Sum of :func:`node_flops` over a graph."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    total = 0
    for n in graph.nodes:
        total = total + node_flops(n)
    return total


def format_flops(f) -> str:
    """Human-readable FLOPs: '1.23 GFLOP'; symbolic counts are printed as expressions."""
    if not isinstance(f, (int, float)):
        return str(f)
    if f == 0:
        return "0 FLOP"
    units = ["", "K", "M", "G", "T", "P"]
    i = min(int(math.log10(abs(f)) // 3), len(units) - 1)
    return f"{f / 10 ** (3 * i):.3g} {units[i]}FLOP"
