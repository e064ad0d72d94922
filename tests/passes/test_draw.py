"""dump_stage: DOT with one cluster per weight-gradient region, SVG when graphviz is installed."""

import re
import shutil

import pytest

import tfcompile
from tfcompile.passes.flops import format_flops
from tfcompile.testing import build_stage


@pytest.fixture(scope="module")
def prog():
    case = build_stage("embed_tied_head")
    return tfcompile.trace_stage(
        case.module, case.inputs, loss_fn=case.loss_fn, example_target=case.target
    )


def test_dot_has_forward_backward_and_region_clusters(prog, tmp_path):
    out = tfcompile.dump_stage(prog, tmp_path / "stage", svg=False)
    text = out["dot"].read_text()
    assert out["dot"].suffix == ".dot" and out["svg"] is None
    assert "subgraph cluster_forward" in text and "subgraph cluster_bw_input" in text
    for i, g in enumerate(prog.group_order):
        m = re.search(rf"subgraph cluster_region_{i} \{{ label=\"([^\"]*)\"", text)
        assert m, f"no cluster for region {g}"
        assert g in m.group(1) and format_flops(prog.region_flops[g]) in m.group(1)
    assert text.count("{") == text.count("}")
    # every backward node is drawn: region clusters hold the nodes of their regions
    n_nodes = len(re.findall(r"^\s+bw_\d+ \[label=", text, flags=re.M))
    bw_nodes = [n for n in prog.split.graph.graph.nodes if n.op != "output"]
    assert n_nodes == len(bw_nodes)


def test_compact_hides_views(prog, tmp_path):
    full = tfcompile.dump_stage(prog, tmp_path / "full.dot", svg=False)["dot"].read_text()
    small = tfcompile.dump_stage(prog, tmp_path / "c.dot", svg=False, compact=True)["dot"]
    small = small.read_text()
    assert len(small) < len(full)
    assert "transpose" not in small


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz 'dot' not installed")
def test_svg_rendered(prog, tmp_path):
    out = tfcompile.dump_stage(prog, tmp_path / "stage", compact=True)
    svg = out["svg"].read_text()
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg[:500]
    assert "W region: tok_embeddings" in svg
