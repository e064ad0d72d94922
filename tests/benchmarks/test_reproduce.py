"""benchmarks/reproduce.py --quick end to end: output files and keys (never timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROW_KEYS = {
    "schedule",
    "method",
    "grad",
    "median_step_ms",
    "tokens_per_s",
    "gain",
    "pipe_step_ms",
    "measured_pipe_gain",
    "predicted_gain",
    "mean_freeze_ratio",
    "stage_freeze_ratio",
    "val_loss",
    "val_loss_delta",
    "time_to_target_s",
    "seeds",
    "gain_spread",
    "val_loss_delta_spread",
    "plan_step_gain",
    "overhead_ms",
    "measured_over_plan",
    "pipe_over_plan",
}


@pytest.mark.slow
def test_reproduce_quick(tmp_path):
    out = tmp_path / "reproduce"
    cache = tmp_path / "pretrained"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--quick", "--out", str(out),
         "--pretrain-cache", str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and not results["failures"]
    # fine-tuning regime: pretrained once on code (cached), fine-tuned on the docs domain
    assert results["settings"]["data"] == "docs"
    assert Path(results["settings"]["init"]).parent == cache
    assert len(list(cache.glob("*.pt"))) == 1
    rows = {(r["schedule"], r["method"], r["grad"]): r for r in results["rows"]}
    assert set(rows) == {("1F1B", "none", "drop"), ("1F1B", "timely", "drop")}
    for row in rows.values():
        assert ROW_KEYS <= set(row)
        assert row["tokens_per_s"] > 0 and row["val_loss"] > 0
        assert 0.0 <= row["mean_freeze_ratio"] <= 0.9 + 1e-9  # the default cap
    assert rows[("1F1B", "none", "drop")]["mean_freeze_ratio"] == 0.0
    assert rows[("1F1B", "none", "drop")]["gain"] == pytest.approx(1.0)
    timely = rows[("1F1B", "timely", "drop")]
    assert timely["predicted_gain"] is not None and timely["predicted_gain"] >= 1.0 - 1e-9
    assert results["targets"]["1F1B"] == pytest.approx(
        rows[("1F1B", "none", "drop")]["val_loss"] + results["target_margin"]
    )
    table = (out / "table.md").read_text()
    assert "| 1F1B | timely | drop |" in table and "time to target" in table
    for name in ("val_loss_vs_time.png", "throughput.png", "ratio_vs_step.png"):
        assert (out / name).stat().st_size > 0
    assert timely["seeds"] == 1 and timely["plan_step_gain"] is not None
    run = json.loads((out / "runs" / "1F1B__timely__drop__s0.json").read_text())
    assert {"val_curve", "step_seconds", "ratios_per_step", "plan"} <= set(run)
    assert len(run["ratios_per_step"]) == run["steps"]
    assert (out / "runs" / "1F1B__timely__drop__s0" / "steps_rank1.csv").exists()
    # --reanalyse rebuilds the same rows from the run JSONs without training
    (out / "table.md").unlink()
    again = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reproduce.py"), "--reanalyse", "--out",
         str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    redone = json.loads((out / "results.json").read_text())
    assert [r["gain"] for r in redone["rows"]] == [r["gain"] for r in results["rows"]]
    assert "| 1F1B | timely | drop |" in (out / "table.md").read_text()
