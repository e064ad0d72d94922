"""Split a traced backward graph into an input-gradient part and one weight-gradient region
per parameter group.

Given the backward GraphModule of a stage (placeholders: saved activations then tangents;
outputs: one gradient per primal input) and a label per output (a group name for parameter
gradients, ``"input"`` for input gradients the caller wants, ``None`` for ignored outputs), the
pass

1. clones every fused backward kernel that takes an ``output_mask`` (``native_layer_norm_backward``,
   ``convolution_backward``, ``native_group_norm_backward``, ...) into two nodes, one computing the
   input gradient (output 0) and one the weight/bias gradients, so the dW part can land in a
   weight-gradient region and be skipped;
2. dead-code-eliminates the graph (the default partitioner leaves e.g. an unused attention
   forward in it);
3. computes, per label, the ancestors of its outputs. ``D`` (the input part) = ancestors of the
   input gradients plus every value two or more groups need; each group's region = its own
   ancestors minus ``D``; the values of ``D`` a region reads are its inputs (the *stash*).
   Every value is computed exactly once. A multi-output node in ``D`` brings its ``getitem``
   items along, so the stash holds single tensors, never a tuple (compiled backends take flat
   tensors only).

**Frozen-prefix truncation.** ``backward_input`` comes in variants: variant ``k`` computes the
input gradients plus only the stash values that the regions of groups ``group_order[k:]`` need
(``k = len(group_order)``: input gradients only). On a stage whose inputs need no gradient
(token ids) and whose first ``k`` groups (in forward order) are frozen, variant ``k`` stops the
backward at the earliest unfrozen group: nothing below it is computed. Variants are built lazily
on first use and cached (at most ``len(group_order) + 1`` of them), which is equivalent to
precompiling all of them but costs nothing for variants a run never uses
(``StageProgram.precompile()`` builds them all up front). For an arbitrary
frozen set the runtime picks the variant of its earliest unfrozen group (a superset of what the
unfrozen regions need; groups frozen after it cost nothing in their regions).

The pass is pure: it never mutates the GraphModule it is given.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch.fx as fx

from tfcompile._torch_compat import make_boxed, output_mask_index

INPUT = "input"


@dataclass
class Region:
    """One extracted piece of the backward graph."""

    name: str
    gm: fx.GraphModule
    inputs: list[str]  # names of values (backward placeholders or stash) it reads, in order
    outputs: list[str]  # names of the values it returns, in order
    nodes: list[str]  # names of the backward-graph nodes it computes
    boxed: bool = False  # gm takes one list of inputs and clears it (frees inputs early)

    def run(self, args: list):
        """Call the region with its inputs in `args` (a list the call may clear)."""
        return self.gm(args) if self.boxed else self.gm(*args)


@dataclass
class SplitBackward:
    """Result of :func:`split_weight_grad`."""

    graph: fx.GraphModule  # the backward graph after output_mask splitting and DCE
    placeholders: list[str]  # backward placeholders, in order
    group_order: list[str]
    regions: dict[str, Region]  # group -> weight-gradient region
    region_grads: dict[str, list[int]]  # group -> backward-output positions it returns
    input_grads: list[int]  # backward-output positions of the input gradients
    input_nodes: set[str]  # nodes of the shared input part D (all variants are subsets)
    _variants: dict[int, Region] = field(default_factory=dict, repr=False)

    def input_variant(self, k: int = 0) -> Region:
        """backward_input computing input gradients plus the stash of groups group_order[k:]."""
        k = max(0, min(k, len(self.group_order)))
        if k not in self._variants:
            self._variants[k] = _build_input_variant(self, k)
        return self._variants[k]

    def stash_of(self, groups) -> list[str]:
        """Non-placeholder values of D that the given groups' regions read."""
        ph = set(self.placeholders)
        out: dict[str, None] = {}
        for g in groups:
            for name in self.regions[g].inputs:
                if name not in ph:
                    out[name] = None
        return list(out)

    def assignment(self) -> dict[str, str]:
        """node name -> INPUT or group name (placeholders map to 'placeholder')."""
        a = {n: "placeholder" for n in self.placeholders}
        for n in self.input_nodes:
            a[n] = INPUT
        for g, r in self.regions.items():
            for n in r.nodes:
                a[n] = g
        return a


def _split_output_masks(gm: fx.GraphModule) -> None:
    """Clone fused multi-output backward kernels: input-gradient part and weight part."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        idx = output_mask_index(node.target)
        if idx is None:
            continue
        mask = node.args[idx] if idx < len(node.args) else node.kwargs.get("output_mask")
        if mask is None or sum(bool(m) for m in mask) < 2:
            continue
        users = list(node.users)
        if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
            continue
        used = sorted({u.args[1] for u in users})
        # output 0 is the input gradient, the others are weight/bias gradients
        parts = [p for p in ([j for j in used if j == 0], [j for j in used if j != 0]) if p]
        if len(parts) < 2:
            continue
        with graph.inserting_before(node):
            for part in parts:
                new_mask = [i in part for i in range(len(mask))]
                args = list(node.args)
                kwargs = dict(node.kwargs)
                if idx < len(args):
                    args[idx] = new_mask
                else:
                    kwargs["output_mask"] = new_mask
                clone = graph.call_function(node.target, tuple(args), kwargs)
                clone.meta = dict(node.meta)
                val = node.meta.get("val")
                if isinstance(val, (tuple, list)):
                    clone.meta["val"] = tuple(v if i in part else None for i, v in enumerate(val))
                for j in part:
                    item = graph.call_function(operator.getitem, (clone, j))
                    if isinstance(val, (tuple, list)):
                        item.meta["val"] = val[j]
                    for u in users:
                        if u.args[1] == j:
                            u.replace_all_uses_with(item)
        for u in users:
            graph.erase_node(u)
        graph.erase_node(node)


def _items_of_multi_output(part: set[fx.Node], live: set[fx.Node]) -> set[fx.Node]:
    """The ``getitem`` users (among `live`) of the multi-output nodes in `part`.

    They join `part`, so a value that crosses from backward_input into a region is always one
    tensor, never a multi-output node's tuple: a compiled backend takes and returns flat
    tensors only (inductor refuses a tuple output). Such a node lands in `part` when groups
    share it, e.g. ``native_layer_norm_backward`` computing a weight and a bias gradient that
    belong to two groups (``groups="tensor"``)."""
    return {
        u
        for n in part
        for u in n.users
        if u in live and u.op == "call_function" and u.target is operator.getitem
    }


def _ancestors(roots: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [r for r in roots if isinstance(r, fx.Node)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _extract(
    src: fx.GraphModule,
    name: str,
    nodes: set[fx.Node],
    inputs: list[fx.Node],
    outputs: list[fx.Node],
) -> Region:
    """A GraphModule computing `outputs` from `inputs` with the nodes in `nodes`."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for inp in inputs:
        ph = g.placeholder(inp.name)
        ph.meta = dict(inp.meta)
        env[inp] = ph
    computed = []
    for n in src.graph.nodes:
        if n in nodes and n not in env:
            env[n] = g.node_copy(n, lambda a: env[a])
            computed.append(n.name)
    g.output(tuple(env[o] for o in outputs))
    gm = fx.GraphModule(src, g)
    boxed = make_boxed(gm)
    return Region(
        name=name,
        gm=gm,
        inputs=[i.name for i in inputs],
        outputs=[o.name for o in outputs],
        nodes=computed,
        boxed=boxed,
    )


def split_weight_grad(
    bw_gm: fx.GraphModule, output_labels: list[str | None], group_order: list[str]
) -> SplitBackward:
    """Split `bw_gm` by output labels (group name, ``"input"`` or None); see module docstring."""
    gm = copy.deepcopy(bw_gm)
    _split_output_masks(gm)
    graph = gm.graph
    out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    outs = list(out_node.args[0])
    if len(outs) != len(output_labels):
        raise ValueError(f"backward graph has {len(outs)} outputs, got {len(output_labels)} labels")
    # keep only wanted outputs, then DCE
    kept = [o if lab is not None else None for o, lab in zip(outs, output_labels)]
    out_node.args = (tuple(kept),)
    graph.eliminate_dead_code()
    gm.recompile()

    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    ph_set = set(placeholders)
    free = {n for n in graph.nodes if n.op == "get_attr"}  # constants: copied where needed

    def roots(label):
        return [o for o, lab in zip(kept, output_labels) if lab == label and isinstance(o, fx.Node)]

    groups = [g for g in group_order]
    anc = {g: _ancestors(roots(g)) - ph_set - free for g in groups}
    d_input = _ancestors(roots(INPUT)) - ph_set - free
    count: dict[fx.Node, int] = {}
    for g in groups:
        for n in anc[g]:
            count[n] = count.get(n, 0) + 1
    d_nodes = d_input | {n for n, c in count.items() if c >= 2}
    d_nodes |= _items_of_multi_output(d_nodes, d_input.union(*anc.values()))
    available = d_nodes | ph_set

    order = {n: i for i, n in enumerate(graph.nodes)}
    regions: dict[str, Region] = {}
    region_grads: dict[str, list[int]] = {}
    for g in groups:
        own = anc[g] - d_nodes
        # constants used by the region are copied into it
        own |= {a for n in own for a in n.all_input_nodes if a in free}
        region_outs = roots(g)
        needed: set[fx.Node] = set()
        for n in own:
            needed.update(a for a in n.all_input_nodes if a in available)
        needed.update(o for o in region_outs if o in available)
        inputs = sorted(needed, key=order.__getitem__)
        regions[g] = _extract(gm, g, own, inputs, region_outs)
        region_grads[g] = [
            i for i, (o, lab) in enumerate(zip(kept, output_labels)) if lab == g and o is not None
        ]
    input_grads = [
        i for i, (o, lab) in enumerate(zip(kept, output_labels)) if lab == INPUT and o is not None
    ]
    return SplitBackward(
        graph=gm,
        placeholders=[p.name for p in placeholders],
        group_order=groups,
        regions=regions,
        region_grads=region_grads,
        input_grads=input_grads,
        input_nodes={n.name for n in d_nodes},
    )


def _build_input_variant(split: SplitBackward, k: int) -> Region:
    gm = split.graph
    by_name = {n.name: n for n in gm.graph.nodes}
    out_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    outs = list(out_node.args[0])
    grad_nodes = [outs[i] for i in split.input_grads]
    stash = [by_name[s] for s in split.stash_of(split.group_order[k:])]
    ph = {by_name[p] for p in split.placeholders}
    free = {n for n in gm.graph.nodes if n.op == "get_attr"}
    nodes = _ancestors(grad_nodes + stash)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    inputs = sorted((nodes & ph), key=order.__getitem__)
    compute = (nodes - ph) | free
    return _extract(gm, f"{INPUT}[{k}]", compute, inputs, grad_nodes + stash)
