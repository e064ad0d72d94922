"""A pinned plan makes a run repeatable: one process and torchrun give the same losses.

The same seed fixes the model, the data order and every freezing decision (a pure function
of seed, step, stage and microbatch); the pinned plan fixes the ratios without measuring
anything, so timing noise cannot change what is frozen.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tfcompile.freeze.pinned import write_plan_file
from tfcompile.schedules import build
from tfcompile.train.launch import torchrun_command
from tfcompile.train.steplog import read_log

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train_llama.py"
ARGS = [
    "--dim", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--seq", "16",
    "--batch", "8", "--microbatches", "4", "--steps", "12", "--schedule", "1F1B",
    "--freeze", "timely", "--warmup", "2", "--threads", "1", "--seed", "5",
    "--val-batches", "1", "--no-dumps", "--no-plots", "--log-every", "100",
]  # fmt: skip


def _losses(out: Path) -> list[float]:
    rows = [r for f in sorted(out.glob("steps_rank*.csv")) for r in read_log(f)]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if r["loss"] is not None]


@pytest.mark.slow
def test_pinned_plan_single_process_equals_torchrun(tmp_path) -> None:
    ratios = {(0, 0): 1.0, (0, 1): 0.6, (1, 2): 0.4, (1, 3): 1.0}
    plan = write_plan_file(tmp_path / "plan.json", build("1F1B", 2, 4), ratios, 8.0, 10.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*ARGS, "--plan", str(plan)]
    single = subprocess.run(
        [sys.executable, str(SCRIPT), *common, "--ranks", "2", "--out", str(one)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    said = single.stdout + single.stderr
    assert "pinned plan" in said and "Running HiGHS" not in said
    dist = subprocess.run(
        torchrun_command(SCRIPT, [*common, "--out", str(two)], 2),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stdout[-3000:] + dist.stderr[-3000:]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    ratios_one = [r["mean_ratio"] for r in read_log(one / "steps_rank0.csv")]
    assert ratios_one[-1] > 0  # the pinned plan was followed in the steady state
