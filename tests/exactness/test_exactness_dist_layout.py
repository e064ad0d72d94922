"""Issue 11 kinds 2, 4, 8 under torchrun (2 ranks, gloo): an in-place first op on the received
activation, a learnable loss parameter on the last rank, a channels-last stage boundary whose
gradient crosses ranks. Two AdamW steps each, against eager on deep copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfcompile.testing import torchrun_verdicts

WORKER = Path(__file__).parent / "workers" / "layout_worker.py"
CASES = ("k2_inplace_first_op", "k4_loss_parameter", "k8_channels_last_boundary")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, timeout = tmp_path_factory.mktemp("exact_layout"), 240
    return torchrun_verdicts(WORKER, out, ",".join(CASES), timeout)


@pytest.mark.parametrize("case", CASES)
def test_under_torchrun(run, case):
    for rank in range(2):
        v = run[rank].get(case)
        assert v is not None, f"rank {rank} wrote no verdict for {case}:\n{run['log']}"
        assert v["error"] is None, (rank, v["error"], v.get("trace"))
        assert v["err"] <= 1e-5, (rank, v)
