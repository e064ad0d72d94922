"""benchmarks/bench_runtime.py end to end in --quick mode (2 gloo ranks); never asserts timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_runtime.py"

pytestmark = pytest.mark.slow


def test_bench_runtime_quick_writes_results(tmp_path):
    out = tmp_path / "bench_runtime.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-compiled", "--out", str(out),
         "--timeout", "280"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tfcompile" in result.stdout and "torch.distributed.pipelining" in result.stdout
    data = json.loads(out.read_text())
    assert {
        "config",
        "check",
        "step_ms",
        "median_ms",
        "ratio_tfcompile_vs_torch",
        "ratio_wfrozen_vs_none",
        "profile_none",
        "profile_wfrozen",
        "prediction",
    } <= set(data)
    assert data["check"]["passed"], data["check"]
    assert data["check"]["loss_rel_err"] <= 1e-5
    systems = {"tfcompile", "torch", "tfcompile_wfrozen"}
    assert set(data["median_ms"]) == systems
    for name in systems:
        assert len(data["step_ms"][name]) == data["config"]["steps"]
        assert data["median_ms"][name] > 0
    assert set(data["prediction"]) == {
        "none",
        "none_b_as_iw",
        "wfrozen_from_unfrozen_profile",
        "wfrozen_b_as_iw",
        "wfrozen_from_frozen_profile",
    }
    for row in data["prediction"].values():
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0
        assert "error_pct" in row
    assert len(data["profile_none"]["stages"]) == 2
