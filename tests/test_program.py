"""program.py: StageProgram over a TracedStage, and the backend seam every graph runs through."""

import torch

import tfcompile
from tfcompile.passes.roles import OUTPUT_GROUPS, output_roles, placeholder_roles
from tfcompile.program import EagerBackend, StageProgram
from tfcompile.testing import build_stage


class CountingBackend(EagerBackend):
    """An eager backend that records which graphs it was asked for and how often each ran."""

    def __init__(self):
        self.made: list[str] = []
        self.runs: dict[str, int] = {}

    def _counted(self, name, fn):
        self.made.append(name)

        def run(args):
            self.runs[name] = self.runs.get(name, 0) + 1
            return fn(args)

        return run

    def forward(self, gm):
        return self._counted("forward", super().forward(gm))

    def region(self, region):
        return self._counted(region.name, super().region(region))


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_backend_runs_every_graph_and_changes_nothing():
    case = build_stage("llama_block")
    prog = tfcompile.trace_stage(case.module, case.inputs)
    g_out = torch.randn_like(prog.forward(0, *case.inputs))
    ref_in = prog.backward(0, g_out, frozen={prog.group_order[0]})
    ref = _grads(case.module)
    case.module.zero_grad(set_to_none=True)

    backend = CountingBackend()
    other = StageProgram(prog.traced, backend=backend)
    assert other.group_order == prog.group_order and other.traced is prog.traced
    other.forward(0, *case.inputs)
    got_in = other.backward(0, g_out, frozen={prog.group_order[0]})
    torch.testing.assert_close(got_in[0], ref_in[0], rtol=0, atol=0)
    got = _grads(case.module)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0)
    unfrozen = prog.group_order[1:]  # the first group frozen: variant 1 of backward_input
    assert backend.runs == {"forward": 1, "input[1]": 1, **{g: 1 for g in unfrozen}}
    other.precompile()  # asks the backend for every variant and region, once each
    assert sorted(backend.made) == sorted(
        ["forward", *(f"input[{k}]" for k in range(len(prog.group_order) + 1)), *prog.group_order]
    )


def test_roles_are_in_node_meta():
    case = build_stage("mlp")
    prog = tfcompile.trace_stage(case.module, case.inputs)
    fw = list(placeholder_roles(prog.fw_graph).values())
    names = [n for n, _ in case.module.named_parameters()]
    assert fw == [*(f"param {n}" for n in names), "input 0"]
    bw = list(placeholder_roles(prog.bw_graph).values())
    n_saved = len(prog.traced.saved_names)
    assert bw == [*(f"saved {i}" for i in range(n_saved)), "tangent 0"]
    assert output_roles(prog.fw_graph) == ["output 0", *(f"saved {i}" for i in range(n_saved))]
    groups = prog.bw_graph.graph.output_node().meta[OUTPUT_GROUPS]
    owner = {p: g for g, ps in prog.groups.items() for p in ps}
    assert groups == [*(owner[n] for n in names), "input"]
    # the regions cut from the backward keep the roles of the placeholders they read
    for g in prog.group_order:
        roles = placeholder_roles(prog.split.regions[g].gm)
        assert all(r.startswith(("saved ", "tangent ")) for r in roles.values())
