"""Issue 11 kinds 2, 4, 8 under torchrun (2 ranks, gloo): an in-place first op on the received
activation, a learnable loss parameter on the last rank, a channels-last stage boundary whose
gradient crosses ranks. Two AdamW steps each, against eager on deep copies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "workers" / "layout_worker.py"
CASES = ("k2_inplace_first_op", "k4_loss_parameter", "k8_channels_last_boundary")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, timeout = tmp_path_factory.mktemp("exact_layout"), 240
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--monitor-interval=1", str(WORKER), "--out", str(out), "--cases", ",".join(CASES),
           "--timeout", str(timeout - 30)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    verdicts = {}
    for rank in range(2):
        path = out / f"rank{rank}.json"
        verdicts[rank] = json.loads(path.read_text()) if path.exists() else {}
    verdicts["log"] = result.stdout[-2000:] + result.stderr[-3000:]
    return verdicts


@pytest.mark.parametrize("case", CASES)
def test_under_torchrun(run, case):
    for rank in range(2):
        v = run[rank].get(case)
        assert v is not None, f"rank {rank} wrote no verdict for {case}:\n{run['log']}"
        assert v["error"] is None, (rank, v["error"], v.get("trace"))
        assert v["err"] <= 1e-5, (rank, v)
