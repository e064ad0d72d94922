"""The inductor backend: compiled stage regions equal the eager backend's, frozen regions neither
run nor compile, truncated variants compile only when used, and bad options are refused.

Reference: the same stage traced with the eager backend on a deep copy of the module, the same
inputs, output gradients and frozen sets (the eager backend itself is checked against eager
autograd in tests/test_program.py and tests/exactness). fp32, 1e-5 relative on gradients.
CPU inductor compiles are slow (seconds per graph): the smallest golden model runs in the fast
suite, the rest are marked slow; all share a session-scoped inductor disk cache (tests/conftest.py).
"""

import copy
import random

import pytest
import torch

import tfcompile
from tfcompile.compile_backend import InductorBackend, make_backend
from tfcompile.errors import RuntimeConfigError
from tfcompile.testing import STAGE_NAMES, build_stage

FAST = ("mlp",)


def _train(case, backend: str, frozen_sets):
    """Forward + backward of one microbatch per frozen set; outputs, input and param grads."""
    module = copy.deepcopy(case.module)
    prog = tfcompile.trace_stage(
        module, case.inputs, loss_fn=case.loss_fn, example_target=case.target, backend=backend
    )
    results, compiled_after_first = [], None
    for mb, frozen in enumerate(frozen_sets):
        xs, target = case.make_inputs(100 + mb)
        out = prog.forward(mb, *xs, target=target)
        g = torch.Generator().manual_seed(200 + mb)
        grad_out = () if case.loss_fn else (torch.randn(out.shape, generator=g),)
        grads = prog.backward(mb, *grad_out, frozen=frozen)
        results.append((out.detach(), [x for x in grads if x is not None]))
        if compiled_after_first is None:
            compiled_after_first = set(getattr(prog.backend, "compiled", ()))
    params = {n: p.grad for n, p in module.named_parameters()}
    return prog, results, params, compiled_after_first


def _close(actual, expected, what: str):
    scale = max(float(expected.abs().max()), 1e-12)
    torch.testing.assert_close(
        actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}"
    )


def _check_equal(name: str, seed: int):
    case = build_stage(name, torch.float32)
    groups = tfcompile.trace_stage(
        copy.deepcopy(case.module), case.inputs, loss_fn=case.loss_fn, example_target=case.target
    ).group_order
    rng = random.Random(seed)
    frozen = frozenset(rng.sample(groups, rng.randint(1, len(groups))))
    frozen_sets = [frozen, frozenset()]  # a random frozen set, then nothing frozen
    ref_prog, ref, ref_params, _ = _train(case, "eager", frozen_sets)
    prog, got, params, compiled_first = _train(case, "inductor", frozen_sets)
    for mb, ((o1, g1), (o2, g2)) in enumerate(zip(got, ref)):
        _close(o1, o2, f"{name} mb {mb} output")
        for i, (a, b) in enumerate(zip(g1, g2)):
            _close(a, b, f"{name} mb {mb} input grad {i}")
    for n, g in ref_params.items():
        if g is None:
            assert params[n] is None, n
        else:
            _close(params[n], g, f"{name} .grad of {n}")
    # the frozen groups' regions ran exactly as often as with the eager backend (not in the
    # first microbatch), and were not compiled before a microbatch ran them
    assert prog.region_calls == ref_prog.region_calls
    assert all(prog.region_calls[g] == 1 for g in frozen)
    assert not frozen & compiled_first and frozen <= set(prog.backend.compiled)
    assert "forward" in prog.backend.compiled and prog.compile_seconds > 0
    assert ref_prog.compile_seconds == 0.0


@pytest.mark.parametrize("name", FAST)
def test_inductor_equals_eager(name, inductor_cache):
    _check_equal(name, seed=STAGE_NAMES.index(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in STAGE_NAMES if n not in FAST])
def test_inductor_equals_eager_slow(name, inductor_cache):
    _check_equal(name, seed=STAGE_NAMES.index(name))


@pytest.mark.slow
def test_truncated_variant_compiled_only_when_used(inductor_cache):
    """A first stage (token ids: no input gradient) with all groups but the last frozen runs
    the truncated backward_input variant: only that variant and the last group's region are
    compiled, not the full variant nor the frozen regions."""
    case = build_stage("embed_tied_head", torch.float32)
    prog = tfcompile.trace_stage(
        case.module, case.inputs, loss_fn=case.loss_fn, example_target=case.target,
        backend="inductor",
    )  # fmt: skip
    *frozen, last = prog.group_order
    prog.forward(0, *case.inputs, target=case.target)
    prog.backward(0, frozen=frozen)
    k = len(frozen)
    assert set(prog.backend.compiled) == {"forward", f"input[{k}]", last}
    assert prog.region_calls == {last: 1}


def test_bad_backend_options_refused():
    case = build_stage("mlp", torch.float32)
    with pytest.raises(RuntimeConfigError, match="backend='tvm'"):
        tfcompile.trace_stage(case.module, case.inputs, backend="tvm")
    with pytest.raises(RuntimeConfigError, match="cuda_graphs=True"):
        tfcompile.trace_stage(case.module, case.inputs, backend=InductorBackend(cuda_graphs=True))
    with pytest.raises(RuntimeConfigError, match="partition='fastest'"):
        InductorBackend(partition="fastest")
    # each program gets its own copy of a backend given as an instance
    template = InductorBackend()
    assert make_backend(template, stage="s0") is not template
    assert make_backend(template, stage="s0").stage == "s0"


def test_inductor_traces_with_the_min_cut_partition():
    """Tracing for inductor partitions as torch.compile does (min-cut): the LLaMA block's forward
    saves fewer values than with the eager backend's default partition, which
    InductorBackend(partition="default") reproduces exactly. Tracing compiles nothing."""
    case = build_stage("llama_block", torch.float32)

    def saved(backend):
        prog = tfcompile.trace_stage(
            copy.deepcopy(case.module), case.inputs, loss_fn=case.loss_fn,
            example_target=case.target, backend=backend,
        )  # fmt: skip
        return prog.traced.saved_names, prog

    eager_saved, _ = saved("eager")
    min_cut_saved, prog = saved("inductor")
    default_saved, _ = saved(InductorBackend(partition="default"))
    assert len(min_cut_saved) < len(eager_saved)
    assert default_saved == eager_saved
    assert prog.backend.partition == "min_cut" and not prog.backend.compiled


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_inductor_keeps_the_default_partition_for_recompute_tags(policy):
    """Activation checkpointing tags what to recompute; min-cut refuses some tags (a tagged
    output of the CPU flash-attention op may be neither saved nor recomputed), so a tagged stage
    is partitioned by the default partitioner whatever the backend: inductor traces it, saving
    the same values as the eager backend. Tracing compiles nothing."""
    case = build_stage("llama_block", torch.float32)
    saved = {}
    for backend in ("eager", "inductor"):
        prog = tfcompile.trace_stage(
            copy.deepcopy(case.module), case.inputs, loss_fn=case.loss_fn,
            example_target=case.target, backend=backend, activation_checkpointing=policy,
        )  # fmt: skip
        saved[backend] = prog.traced.saved_names
    assert saved["inductor"] == saved["eager"]


def test_inductor_keeps_the_default_partition_for_checkpoint_regions():
    """A torch.utils.checkpoint region tags its ops even with activation_checkpointing="none":
    the inductor trace then partitions like the eager one (no min-cut)."""

    class Checkpointed(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=False)

    case = build_stage("llama_block", torch.float32)
    saved = {}
    for backend in ("eager", "inductor"):
        prog = tfcompile.trace_stage(
            Checkpointed(copy.deepcopy(case.module)), case.inputs, backend=backend
        )
        saved[backend] = prog.traced.saved_names
    assert saved["inductor"] == saved["eager"]


@pytest.mark.slow
def test_inductor_compiles_a_norm_split_across_tensor_groups(inductor_cache):
    """groups="tensor" puts a LayerNorm's weight and bias in two groups, so the fused norm
    backward they share runs in backward_input; inductor compiles every graph (it refuses a
    tuple crossing into a region) and equals the eager backend, frozen sets included."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.LayerNorm(8))
    x = torch.randn(4, 8, requires_grad=True)
    g_out = torch.randn(4, 8)
    grads = {}
    for backend in ("eager", "inductor"):
        m = copy.deepcopy(module)
        prog = tfcompile.trace_stage(m, (x,), groups="tensor", backend=backend)
        for mb, frozen in enumerate([["2.weight"], []]):
            prog.forward(mb, x)
            prog.backward(mb, g_out, frozen=frozen)
        grads[backend] = {n: p.grad for n, p in m.named_parameters()}
    for n, g in grads["eager"].items():
        _close(grads["inductor"][n], g, n)


def test_cuda_graph_capture_skips_graphs_with_cpu_inputs():
    """A CPU tensor input would be baked into a captured CUDA graph, and a graph with no tensor
    has nothing to capture: such graphs stay uncaptured. Meta tensors stand in for device
    tensors here."""
    from tfcompile.compile_backend import capture_blocker

    on_device = torch.empty(4, 8, device="meta")
    seed = torch.tensor(7)
    assert capture_blocker([on_device, on_device, 3]) is None
    reason = capture_blocker([on_device, seed, on_device])
    assert reason is not None and "input 1 is a CPU tensor" in reason
    assert capture_blocker([]) == "no tensor input on the device"
    # each program's copy of a backend starts with its own record
    template = InductorBackend(cuda_graphs=True)
    template.not_captured["input[0]"] = reason
    assert make_backend(template, stage="s1").not_captured == {}
