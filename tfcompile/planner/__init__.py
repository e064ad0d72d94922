"""The freeze planner: per-(stage, microbatch) freeze ratios that shorten a schedule's step.

``plan_freeze(schedule, costs, max_freeze_ratio=...)`` and ``FreezePlanner`` (re-plans one
schedule for changing costs; ``plan``) bind a ``FreezeProblem`` (``problem``: the schedule's
DAG from ``tfcompile.schedules`` with its costs, cap, budget and tolerance) and solve it with
HiGHS as one LP (``lp``) or by Dantzig-Wolfe decomposition over the per-stage caps
(``decompose``), whose pricing rounds are min-cost flows solved by a small native network
simplex (``netflow``, ``_netsimplex.c``). Measurement notes: docs/planner.md.

Names are imported lazily, so that the torch- and HiGHS-free ``tfcompile.freeze.config`` can
take the default cap from ``planner.problem`` without loading a solver.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "FreezePlan": "tfcompile.planner.plan",
    "FreezePlanner": "tfcompile.planner.plan",
    "plan_freeze": "tfcompile.planner.plan",
    "FreezeProblem": "tfcompile.planner.problem",
    "Solution": "tfcompile.planner.problem",
    "DEFAULT_MAX_FREEZE_RATIO": "tfcompile.planner.problem",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tfcompile.planner' has no attribute {name!r}")
    value = getattr(import_module(module_name), name)
    globals()[name] = value
    return value
