"""Issue 11 kind 5 under torchrun (2 ranks, gloo): a boolean padding mask and integer position
ids travel between ranks with the hidden state (no gradient sent for them), tuple targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfcompile.testing import torchrun_verdicts

WORKER = Path(__file__).parent / "workers" / "k5_worker.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("exact_k5")
    timeout = 180
    return torchrun_verdicts(WORKER, out, "k5_mask_1F1B,k5_mask_GPipe", timeout)


@pytest.mark.parametrize("schedule", ["1F1B", "GPipe"])
def test_bool_mask_between_ranks_is_exact(mask_run, schedule):
    case = f"k5_mask_{schedule}"
    for rank in range(2):
        v = mask_run[rank].get(case)
        assert v is not None, f"rank {rank} wrote no verdict for {case}:\n{mask_run['log']}"
        assert v["error"] is None, (rank, v["error"], v.get("trace"))
        assert v["err"] <= 1e-5, (rank, v)
