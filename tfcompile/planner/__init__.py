"""The freeze planner: per-(stage, microbatch) freeze ratios that shorten a schedule's step.

``plan_freeze(schedule, costs, max_freeze_ratio=...)`` and ``FreezePlanner`` (re-plans one
schedule for changing costs) solve one LP over the schedule's DAG (``tfcompile.schedules``),
with HiGHS directly (``lp``) or by Dantzig-Wolfe decomposition over the per-stage caps
(``decompose``), whose pricing rounds are min-cost flows solved by a small native network
simplex (``netflow``, ``_netsimplex.c``). Measurement notes: docs/planner.md.
"""

from tfcompile.planner.lp import FreezePlan, FreezePlanner, plan_freeze

__all__ = ["FreezePlan", "FreezePlanner", "plan_freeze"]
