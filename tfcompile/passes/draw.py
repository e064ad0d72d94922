"""Graphviz dump of a StageProgram: forward and backward graphs, one cluster per region.

``dump_stage(program, path)`` writes ``path`` with suffix ``.dot`` and, when the graphviz ``dot``
binary is installed, renders ``.svg`` beside it. The backward graph is drawn as split by
``split_weight_grad``: the ``backward_input`` cluster, then one cluster per weight-gradient
region labelled with its group name and FLOPs. Dashed edges carry saved activations from the
forward into the backward. ``compact=True`` hides view-only nodes (view, transpose, t, ...)
so large stages stay legible.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch.fx as fx

from tfcompile._torch_compat import fake_value, op_base_name
from tfcompile.passes.flops import VIEW_OPS, format_flops, graph_flops, node_flops
from tfcompile.passes.golden import format_value
from tfcompile.passes.roles import output_node, output_roles, placeholder_roles, role_index
from tfcompile.passes.split_weight_grad import INPUT

_PALETTE = ["#fde0dd", "#e0ecf4", "#e5f5e0", "#fff7bc", "#efedf5", "#fee6ce", "#deebf7", "#f0f0f0"]


def _q(s: str) -> str:
    # labels use DOT's own "\\n" line breaks, so only quotes need escaping
    return '"' + s.replace('"', '\\"') + '"'


def _is_view(n: fx.Node) -> bool:
    return n.op == "call_function" and (
        op_base_name(n.target) in VIEW_OPS or getattr(n.target, "__name__", "") == "getitem"
    )


def _label(n: fx.Node, role: str | None) -> str:
    val = format_value(fake_value(n))
    if n.op == "placeholder":
        return f"{role or n.name}\\n{val}"
    name = op_base_name(n.target) or getattr(n.target, "__name__", str(n.target))
    flops = node_flops(n)
    extra = f"\\n{format_flops(flops)}" if isinstance(flops, int) and flops >= 1000 else ""
    return f"{name}\\n{val}{extra}"


class _Drawer:
    def __init__(self, compact: bool):
        self.compact = compact
        self.lines: list[str] = []
        self.ids: dict[tuple[str, str], str] = {}
        self.alias: dict[tuple[str, str], tuple[str, str]] = {}

    def node_id(self, graph_key: str, name: str) -> str:
        key = (graph_key, name)
        while key in self.alias:
            key = self.alias[key]
        return self.ids.get(key, "")

    def add_nodes(self, graph_key: str, nodes, roles, indent: str) -> None:
        for n in nodes:
            if n.op == "output":
                continue
            if self.compact and _is_view(n) and n.all_input_nodes:
                self.alias[(graph_key, n.name)] = (graph_key, n.all_input_nodes[0].name)
                continue
            nid = f"{graph_key}_{len(self.ids)}"
            self.ids[(graph_key, n.name)] = nid
            shape = "ellipse" if n.op == "placeholder" else "box"
            self.lines.append(
                f"{indent}{nid} [label={_q(_label(n, roles.get(n.name)))}, shape={shape}];"
            )

    def add_edges(self, graph_key: str, graph: fx.Graph) -> None:
        for n in graph.nodes:
            if n.op == "output":
                continue
            dst = self.node_id(graph_key, n.name)
            if not dst or (graph_key, n.name) in self.alias:
                continue
            for a in n.all_input_nodes:
                src = self.node_id(graph_key, a.name)
                if src and src != dst:
                    self.lines.append(f"  {src} -> {dst};")


def stage_dot(program, *, compact: bool = False) -> str:
    """DOT text of a StageProgram or TracedStage (see module docstring); roles of graph inputs
    and outputs come from ``node.meta``."""
    fw_roles = placeholder_roles(program.fw_graph)
    bw_roles = placeholder_roles(program.bw_graph)
    split = program.split
    d = _Drawer(compact)
    L = d.lines
    title = f"{type(program.module).__name__}: groups " + ", ".join(program.group_order)
    L += [
        "digraph stage {",
        "  rankdir=TB; newrank=true; compound=true;",
        '  node [fontname="monospace", fontsize=9, style=filled, fillcolor=white];',
        '  edge [color="#555555", arrowsize=0.6];',
        f"  label={_q(title)};",
        "  labelloc=t;",
        "  subgraph cluster_forward {",
        f"    label={_q(f'forward  {format_flops(program.forward_flops)}')}; style=filled; "
        'fillcolor="#f7fbff";',
    ]
    d.add_nodes("fw", program.fw_graph.graph.nodes, fw_roles, "    ")
    L.append("  }")

    bw = split.graph.graph
    assign = split.assignment()
    by_region: dict[str, list[fx.Node]] = {}
    for n in bw.nodes:
        if n.op == "output":
            continue
        by_region.setdefault(assign.get(n.name, INPUT), []).append(n)
    L += ["  subgraph cluster_backward {", '    label="backward"; style=dashed;']
    L.append('    subgraph cluster_bw_saved { label="saved + output grads"; style=dotted;')
    d.add_nodes("bw", by_region.get("placeholder", []), bw_roles, "      ")
    L.append("    }")
    inp_flops = graph_flops(split.input_variant(0).gm)
    L.append(
        "    subgraph cluster_bw_input { "
        f"label={_q(f'backward_input  {format_flops(inp_flops)}')}; style=filled; "
        'fillcolor="#eeeeee";'
    )
    d.add_nodes("bw", by_region.get(INPUT, []), {}, "      ")
    L.append("    }")
    for i, g in enumerate(program.group_order):
        color = _PALETTE[i % len(_PALETTE)]
        label = f"W region: {g}\\n{format_flops(program.region_flops[g])}"
        L.append(
            f"    subgraph cluster_region_{i} {{ label={_q(label)}; style=filled; "
            f'fillcolor="{color}";'
        )
        d.add_nodes("bw", by_region.get(g, []), {}, "      ")
        L.append("    }")
    L.append("  }")
    d.add_edges("fw", program.fw_graph.graph)
    d.add_edges("bw", bw)
    # saved activations: forward value -> backward placeholder
    fw_outs = zip(output_node(program.fw_graph).args[0], output_roles(program.fw_graph))
    saved_src = {role_index(role, "saved"): src for src, role in fw_outs}
    for name, role in bw_roles.items():
        i = role_index(role, "saved")
        src = saved_src.get(i) if i is not None else None
        a = d.node_id("fw", src.name) if isinstance(src, fx.Node) else ""
        b = d.node_id("bw", name)
        if a and b:
            L.append(f'  {a} -> {b} [style=dashed, color="#9ecae1", constraint=false];')
    L.append("}")
    return "\n".join(L) + "\n"


def dump_stage(program, path, *, compact: bool = False, svg: bool | None = None) -> dict:
    """Write DOT (and SVG when ``dot`` is installed) of `program`'s graphs.

    Returns ``{"dot": Path, "svg": Path | None}``. ``svg=True`` requires ``dot`` (raises
    FileNotFoundError otherwise), ``svg=None`` renders when available, ``svg=False`` never.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dot_path = path.with_suffix(".dot")
    dot_path.write_text(stage_dot(program, compact=compact))
    out = {"dot": dot_path, "svg": None}
    exe = shutil.which("dot")
    if svg is True and exe is None:
        raise FileNotFoundError("graphviz 'dot' is not installed: install graphviz to render SVG")
    if svg is not False and exe is not None:
        svg_path = path.with_suffix(".svg")
        subprocess.run([exe, "-Tsvg", str(dot_path), "-o", str(svg_path)], check=True, timeout=300)
        out["svg"] = svg_path
    return out
