"""HiGHS prints its banner from the C++ constructor; a plan must not print it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = """
import tfcompile
from tfcompile.schedules import build
from tfcompile.schedules.profile import CostProfile
costs = CostProfile([{"F": 1.0, "I": 1.0, "W": 2.0}] * 4, 0.1)
print("lp", tfcompile.plan_freeze(build("1F1B", 4, 8), costs, method="lp").status)
print("dw", tfcompile.plan_freeze(build("1F1B", 4, 8), costs, method="decomposition").status)
"""


def test_planning_prints_no_banner() -> None:
    # stdout is a pipe here: a banner left in C's stdio buffer would surface at exit
    proc = subprocess.run(
        [sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "HiGHS" not in proc.stdout + proc.stderr
    assert [w.lower() for w in proc.stdout.split()] == ["lp", "optimal", "dw", "optimal"]
