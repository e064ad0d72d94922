"""Golden graph texts: forward, backward_input and every weight-gradient region per model.

Regenerate with `pytest tests/passes/test_golden.py --update-golden` after an intended change and
review the diff in git. Goldens record the torch version they were made with; on another
torch minor version a mismatch is reported as a skip (decompositions may legitimately change).
"""

from pathlib import Path

import pytest
import torch

import tfcompile
from tfcompile.passes.golden import golden_diff, graph_text, program_text
from tfcompile.testing import STAGE_NAMES, build_stage

GOLDEN = Path(__file__).parent / "golden"
TORCH_MINOR = ".".join(torch.__version__.split(".")[:2])


def _text(name: str) -> str:
    case = build_stage(name, torch.float32)
    prog = tfcompile.trace_stage(
        case.module, case.inputs, loss_fn=case.loss_fn, example_target=case.target
    )
    return f"# golden graph text of stage {name!r}; torch {TORCH_MINOR}\n" + program_text(prog)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_golden(name, update_golden):
    path = GOLDEN / f"{name}.txt"
    text = _text(name)
    if update_golden or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not update_golden:
            pytest.fail(f"{path} did not exist; wrote it. Review and commit it.")
        return
    expected = path.read_text()
    if text == expected:
        return
    diff = golden_diff(expected, text, f"golden/{name}.txt")
    made_with = expected.splitlines()[0].rsplit("torch ", 1)[-1]
    if made_with != TORCH_MINOR:
        pytest.skip(f"golden made with torch {made_with}, running {TORCH_MINOR}:\n{diff[:4000]}")
    pytest.fail(
        f"graph text of {name!r} differs from {path} (rerun with --update-golden if intended):\n"
        + diff
    )


def test_text_is_normalised():
    case = build_stage("mlp")
    prog = tfcompile.trace_stage(case.module, case.inputs)
    text = graph_text(prog.fw_graph)
    assert "primals" not in text and "%0 = arg 0" in text
    assert "aten.addmm(" in text and ".default" not in text
    # two traces of the same model give the same text
    prog2 = tfcompile.trace_stage(case.module, case.inputs)
    assert program_text(prog) == program_text(prog2)


def test_mismatch_shows_diff():
    expected = (GOLDEN / "mlp.txt").read_text()
    changed = expected.replace("aten.gelu_backward", "aten.relu_backward")
    diff = golden_diff(expected, changed, "golden/mlp.txt")
    assert "-%6 = aten.gelu_backward" in diff and "+%6 = aten.relu_backward" in diff
    assert golden_diff(expected, expected) == ""
