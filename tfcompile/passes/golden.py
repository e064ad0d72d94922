"""Stable, readable text form of fx graphs and of whole StagePrograms (golden tests).

One line per node::

    %7 = aten.mm(%5, %6) : f32[16, 64]

Node names are replaced by sequential ``%0, %1, ...`` in graph order, so torch's internal
naming (``primals_3``, ``mul_12``) never churns the text; targets are printed as aten op names,
with the overload only when it is not ``default`` (``aten.add.Tensor``); each line ends with the
value's dtype and shape. Placeholders can carry a role (``param layers.0.w1.weight``,
``input 0``, ``saved``, ``tangent 0``, ``stash``) supplied by the caller; ``program_text`` takes
them from the graphs' ``node.meta`` (written by ``trace_stage``, see ``passes/roles.py``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx

from tfcompile._torch_compat import fake_value, op_name
from tfcompile.passes.flops import format_flops, graph_flops
from tfcompile.passes.roles import ROLE, output_roles, placeholder_roles
from tfcompile.passes.split_weight_grad import Region

_DTYPE = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
    torch.complex64: "c64",
    torch.complex128: "c128",
}


def format_value(v: Any) -> str:
    """``f32[16, 64]`` for a (fake) tensor, a tuple of those in parentheses, a SymInt as is."""
    if isinstance(v, torch.Tensor):
        return f"{_DTYPE.get(v.dtype, str(v.dtype))}[{', '.join(str(s) for s in v.shape)}]"
    if isinstance(v, (tuple, list)):
        return "(" + ", ".join(format_value(x) for x in v) + ")"
    if v is None:
        return "None"
    return type(v).__name__ if not isinstance(v, (int, float, torch.SymInt)) else str(v)


def _fmt_arg(a: Any, ids: Mapping[fx.Node, int]) -> str:
    if isinstance(a, fx.Node):
        return f"%{ids[a]}"
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_fmt_arg(x, ids) for x in a)
        return f"[{inner}]"
    if isinstance(a, torch.dtype):
        return _DTYPE.get(a, str(a))
    if isinstance(a, float):
        return repr(a)
    if isinstance(a, (torch.device, torch.memory_format, torch.layout)):
        return str(a)
    return repr(a)


def graph_text(gm: fx.GraphModule | fx.Graph, roles: Mapping[str, str] | None = None) -> str:
    """The normalised text of one graph (see module docstring)."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    roles = roles or {}
    ids: dict[fx.Node, int] = {}
    lines = []
    n_ph = 0
    for node in graph.nodes:
        if node.op == "output":
            outs = node.args[0]
            lines.append(f"return {_fmt_arg(outs, ids)}")
            continue
        ids[node] = len(ids)
        val = format_value(fake_value(node))
        if node.op == "placeholder":
            role = roles.get(node.name, f"arg {n_ph}")
            n_ph += 1
            lines.append(f"%{ids[node]} = {role} : {val}")
        elif node.op == "get_attr":
            lines.append(f"%{ids[node]} = constant : {val}")
        else:
            args = [_fmt_arg(a, ids) for a in node.args]
            args += [f"{k}={_fmt_arg(v, ids)}" for k, v in node.kwargs.items()]
            target = op_name(node.target) if node.op == "call_function" else str(node.target)
            lines.append(f"%{ids[node]} = {target}({', '.join(args)}) : {val}")
    return "\n".join(lines)


def _count_roles(roles: list[str], kind: str) -> int:
    return sum(1 for r in roles if r.rsplit(" ", 1)[0] == kind)


def program_text(prog) -> str:
    """Every graph of a traced stage: forward, backward_input (nothing frozen), each region.

    `prog` is a StageProgram or TracedStage; only its graphs (``fw_graph``, ``bw_graph``,
    ``split``) and its FLOP counts are read, roles come from ``node.meta``.
    """
    stash_ids: dict[str, int] = {}

    def region_roles(region: Region) -> dict[str, str]:
        roles = {}
        phs = [n for n in region.gm.graph.nodes if n.op == "placeholder"]
        for name, ph in zip(region.inputs, phs):
            if ROLE in ph.meta:
                roles[name] = ph.meta[ROLE]
            else:
                roles[name] = f"stash {stash_ids.setdefault(name, len(stash_ids))}"
        return roles

    split = prog.split
    inp = split.input_variant(0)
    n_in = len(split.input_grads)
    for name in inp.outputs[n_in:]:
        stash_ids.setdefault(name, len(stash_ids))
    fw_outs = output_roles(prog.fw_graph)
    grads = output_roles(prog.bw_graph)  # "grad param <name>", ...
    inp_phs = [n for n in inp.gm.graph.nodes if n.op == "placeholder"]
    parts = [
        f"# groups: {', '.join(split.group_order)}",
        f"== forward  [{format_flops(prog.forward_flops)}]",
        f"# returns {_count_roles(fw_outs, 'updated buffer')} updated buffer(s), "
        f"{_count_roles(fw_outs, 'output')} output(s), "
        f"then {_count_roles(fw_outs, 'saved')} saved for backward",
        graph_text(prog.fw_graph, placeholder_roles(prog.fw_graph)),
        f"== backward_input  [{format_flops(graph_flops(inp.gm))}]",
        f"# returns {n_in} input gradient(s), then stash "
        + ", ".join(str(stash_ids[n]) for n in inp.outputs[n_in:]),
        graph_text(inp.gm, {n: ph.meta.get(ROLE, n) for n, ph in zip(inp.inputs, inp_phs)}),
    ]
    for g in split.group_order:
        r = split.regions[g]
        params = [grads[i].removeprefix("grad param ") for i in split.region_grads[g]]
        parts += [
            f"== region {g}  [{format_flops(prog.region_flops[g])}]",
            f"# params: {', '.join(params)}",
            graph_text(r.gm, region_roles(r)),
        ]
    return "\n".join(parts) + "\n"


def golden_diff(expected: str, actual: str, name: str = "golden") -> str:
    """Unified diff of two golden texts ('' when equal)."""
    if expected == actual:
        return ""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=name,
            tofile="current",
            n=2,
        )
    )
