"""Issue 11 kind 9: messages. Where something stays unsupported, the error names the
innermost frame of the user's or library's code (file:line) and says what to do at the level
the user called."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from torch import nn

import tfcompile

HERE = os.path.basename(__file__)


def library_gate(x):  # stands for data-dependent code inside a library the user calls
    if x.sum() > 0:  # GATE_LINE
        return x * 2
    return x


def _line_of(marker: str) -> int:
    src, start = inspect.getsourcelines(library_gate)
    return start + next(i for i, s in enumerate(src) if marker in s)


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return library_gate(self.lin(x))


class ItemUser(nn.Module):
    """Own example: `.item()` used as a Python number (a data-dependent scale)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        scale = float(h.abs().max().item())  # ITEM_LINE
        return h / scale


def test_case_data_dependent_branch_names_the_innermost_frame():
    with pytest.raises(tfcompile.TFCompileError) as info:
        tfcompile.trace_stage(Gated(), (torch.randn(2, 4),))
    msg = str(info.value)
    assert f"{HERE}:{_line_of('GATE_LINE')}" in msg, msg
    assert "torch.where" in msg  # what to do


def test_item_names_the_user_line():
    src, start = inspect.getsourcelines(ItemUser.forward)
    line = start + next(i for i, s in enumerate(src) if "ITEM_LINE" in s)
    with pytest.raises(tfcompile.TFCompileError) as info:
        tfcompile.trace_stage(ItemUser(), (torch.randn(2, 4),))
    assert f"{HERE}:{line}" in str(info.value), str(info.value)


def test_data_dependent_branch_through_compile_names_the_frame():
    model = nn.Sequential(nn.Linear(4, 4), Gated(), nn.Linear(4, 3))
    with pytest.raises(tfcompile.TFCompileError) as info:
        tfcompile.compile(model, schedule="1F1B", microbatches=2, ranks=2,
                          example_inputs=(torch.randn(2, 4),),
                          loss_fn=nn.functional.cross_entropy,
                          example_target=torch.randint(0, 3, (2,)), split_points=["1"])
    assert f"{HERE}:{_line_of('GATE_LINE')}" in str(info.value), str(info.value)


def _pipe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    return tfcompile.compile(model, schedule="1F1B", microbatches=2, ranks=2,
                             example_inputs=(torch.randn(2, 4),),
                             loss_fn=nn.functional.cross_entropy,
                             example_target=torch.randint(0, 3, (2,)), split_points=["2"])


@pytest.mark.parametrize("call", ["step", "evaluate"])
def test_case_other_batch_shape_under_compile_says_what_to_do_at_compile_level(call):
    pipe = _pipe()
    with pytest.raises(tfcompile.TFCompileError) as info:
        getattr(pipe, call)(torch.randn(6, 4), torch.randint(0, 3, (6,)))
    msg = str(info.value)
    assert "compile(" in msg and "example_inputs" in msg, msg
    assert "per shape" not in msg and "trace a program" not in msg, msg
    assert "(3, 4)" in msg and "(2, 4)" in msg, msg  # what it got and what was compiled


def test_trace_stage_level_shape_message_already_names_both_shapes():
    """Control: at trace_stage level 'trace a program per shape' is the right advice."""
    prog = tfcompile.trace_stage(nn.Linear(4, 4), (torch.randn(2, 4),))
    with pytest.raises(tfcompile.TFCompileError, match=r"\(3, 4\).*\(2, 4\)"):
        prog.forward(0, torch.randn(3, 4))


# ---------------------------------------------------------------- own examples
class _LibScale(nn.Module):
    """Stands for a library's normalisation helper, two module levels below the user's."""

    def forward(self, x):
        peak = x.abs().max().item()  # LIB_ITEM_LINE
        return x / peak


class _LibNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = _LibScale()

    def forward(self, x):
        return self.scale(x - x.mean(-1, keepdim=True))


class UsesLibrary(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.norm = _LibNorm()

    def forward(self, x):
        return self.norm(self.lin(x))


def _lib_line() -> int:
    src, start = inspect.getsourcelines(_LibScale.forward)
    return start + next(i for i, s in enumerate(src) if "LIB_ITEM_LINE" in s)


def test_item_two_library_levels_deep_names_the_library_line():
    with pytest.raises(tfcompile.TraceError) as info:
        tfcompile.trace_stage(UsesLibrary(), (torch.randn(2, 4),))
    msg = str(info.value)
    assert f"{HERE}:{_lib_line()}" in msg, msg
    assert "x.abs().max().item()" in msg, msg  # the source line itself
    assert "torch.where" in msg, msg


def test_item_two_library_levels_deep_through_compile():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), UsesLibrary(), nn.Linear(4, 3))
    with pytest.raises(tfcompile.TraceError) as info:
        tfcompile.compile(model, schedule="GPipe", microbatches=2, ranks=2,
                          example_inputs=(torch.randn(2, 4),),
                          loss_fn=nn.functional.cross_entropy,
                          example_target=torch.randint(0, 3, (2,)), split_points=["2"])
    msg = str(info.value)
    assert f"{HERE}:{_lib_line()}" in msg, msg
    assert "per shape" not in msg, msg


def test_other_sequence_length_under_compile_names_the_batch_shape():
    """A shape differing in a non-batch dimension: the message gives the whole batch shape."""
    pipe = _pipe()
    with pytest.raises(tfcompile.RuntimeConfigError) as info:
        pipe.step(torch.randn(4, 5), torch.randint(0, 3, (4,)))
    msg = str(info.value)
    assert "(2, 5)" in msg and "(2, 4)" in msg and "batches of shape (4, 4)" in msg, msg
    assert "tfcompile.compile() again with example_inputs" in msg, msg


def test_wrong_input_dtype_under_compile():
    pipe = _pipe()
    with pytest.raises(tfcompile.RuntimeConfigError, match="dtype torch.float64.*torch.float32"):
        pipe.step(torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,)))


def test_bad_batch_is_refused_before_anything_runs():
    """The check happens before any action: no gradient appears, no step is counted."""
    pipe = _pipe()
    with pytest.raises(tfcompile.RuntimeConfigError, match="pass batches of 4 rows"):
        pipe.step(torch.randn(6, 4), torch.randint(0, 3, (6,)))
    assert all(p.grad is None for p in pipe.parameters())
    assert pipe.step_index == 0
    assert all(not prog.pending for prog in pipe.stage_programs.values())


@pytest.mark.parametrize("call", ["step", "evaluate"])
def test_targets_of_wrong_shape_dtype_or_structure_under_compile(call):
    pipe = _pipe()
    X = torch.randn(4, 4)
    run = getattr(pipe, call)
    bad_shape = r"target.*\(3,\).*\(2,\).*example_target"
    with pytest.raises(tfcompile.RuntimeConfigError, match=bad_shape):
        run(X, torch.randint(0, 3, (6,)))
    with pytest.raises(tfcompile.RuntimeConfigError, match="target has dtype torch.float32.*int64"):
        run(X, torch.rand(4))
    with pytest.raises(tfcompile.RuntimeConfigError, match="structured"):
        run(X, (torch.randint(0, 3, (4,)), torch.rand(4)))
    assert pipe.step(X, torch.randint(0, 3, (4,))) is not None  # the right ones still work


def test_tuple_target_leaf_of_wrong_shape_at_trace_stage_level():
    def loss(o, t):
        return (nn.functional.cross_entropy(o, t[0], reduction="none") * t[1]).mean()

    prog = tfcompile.trace_stage(nn.Linear(4, 3), (torch.randn(2, 4),), loss_fn=loss,
                                 example_target=(torch.randint(0, 3, (2,)), torch.rand(2)))
    with pytest.raises(tfcompile.TraceError, match=r"target leaf 1 has shape \(3,\).*\(2,\)"):
        prog.forward(0, torch.randn(2, 4), target=(torch.randint(0, 3, (2,)), torch.rand(3)))
    with pytest.raises(tfcompile.TraceError, match="structure"):
        prog.forward(0, torch.randn(2, 4), target=torch.randint(0, 3, (2,)))
    assert not prog.pending
