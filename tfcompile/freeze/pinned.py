"""Plan files: a plan pinned for a run (``FreezeConfig(plan=...)``) and the plan a run writes.

The format is `tfcompile.planner.FreezePlan.to_dict`'s (``tfcompile plan --out`` writes it as
plan.json): ``schedule``, ``stages``, ``microbatches``, ``makespan``, ``baseline_makespan`` and
``ratios`` as a [stage][microbatch] matrix. A run writes the plan it followed in the same
format (:func:`write_plan_file`), so an experiment can be repeated without re-measuring.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tfcompile.errors import FreezeConfigError

#: File name of the plan in a folder (``tfcompile plan --out`` and a run's output folder).
PLAN_FILE = "plan.json"


def plan_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or its plan.json when it is a folder."""
    p = Path(path)
    return p / PLAN_FILE if p.is_dir() else p


def read_plan_file(path: str | os.PathLike, schedule: Any) -> dict[str, Any]:
    """The plan in ``path`` checked against ``schedule`` (a `Schedule`).

    Returns ``{"ratios": {(stage, microbatch): r}, "makespan", "baseline_makespan"}``
    (the makespans in the file's unit, NaN when absent). Raises `FreezeConfigError` when the
    file is missing or unreadable, or was made for another schedule shape.
    """
    p = plan_path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise FreezeConfigError(
            f"FreezeConfig(plan={str(path)!r}): cannot read a plan file ({exc}); pass the "
            "plan.json written by `tfcompile plan --out DIR` or by an earlier run (its out/)"
        ) from exc
    matrix = data.get("ratios")
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        raise FreezeConfigError(
            f"{p}: no 'ratios' matrix [stage][microbatch]; is it a tfcompile plan.json?"
        )
    stages, microbatches = schedule.num_stages, schedule.num_microbatches
    shape = (len(matrix), len(matrix[0]) if matrix else 0)
    if shape != (stages, microbatches):
        raise FreezeConfigError(
            f"{p}: the plan has {shape[0]} stages x {shape[1]} microbatches "
            f"(schedule {data.get('schedule')!r}) but this pipeline has {stages} x "
            f"{microbatches} ({schedule.name}); plan this schedule or pin a matching plan"
        )
    if data.get("schedule") not in (None, schedule.name):
        raise FreezeConfigError(
            f"{p}: the plan was made for schedule {data['schedule']!r}, this pipeline runs "
            f"{schedule.name!r}; its ratios would sit on other actions' critical paths"
        )
    ratios = {}
    for s, row in enumerate(matrix):
        for m, r in enumerate(row):
            r = float(r)
            if not 0.0 <= r <= 1.0:
                raise FreezeConfigError(f"{p}: ratio {r} at stage {s} microbatch {m} not in [0,1]")
            if r > 0.0:
                ratios[(s, m)] = r
    return {
        "ratios": ratios,
        "makespan": float(data.get("makespan", math.nan)),
        "baseline_makespan": float(data.get("baseline_makespan", math.nan)),
    }


def write_plan_file(
    path: str | os.PathLike,
    schedule: Any,
    ratios: Mapping[tuple[int, int], float],
    makespan: float,
    baseline_makespan: float,
    **extra: Any,
) -> Path:
    """Write a plan in the format :func:`read_plan_file` reads (``extra`` keys added)."""
    stages, microbatches = schedule.num_stages, schedule.num_microbatches
    matrix = [[float(ratios.get((s, m), 0.0)) for m in range(microbatches)] for s in range(stages)]
    data = {
        "schedule": schedule.name,
        "stages": stages,
        "microbatches": microbatches,
        "ranks": schedule.num_ranks,
        "makespan": float(makespan),
        "baseline_makespan": float(baseline_makespan),
        "stage_average": [sum(row) / microbatches for row in matrix],
        "ratios": matrix,
        **extra,
    }
    p = Path(path)
    p.write_text(json.dumps(data, indent=1))
    return p
