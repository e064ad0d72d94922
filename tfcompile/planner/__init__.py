"""The freeze planner: per-(stage, microbatch) freeze ratios that shorten a schedule's step.

``plan_freeze(schedule, costs, max_freeze_ratio=...)`` and ``FreezePlanner`` (re-plans one
schedule for changing costs; ``plan``) bind a ``FreezeProblem`` (``problem``: the schedule's
DAG from ``tfcompile.schedules`` with its costs, cap, budget and tolerance) and solve it with
HiGHS as one LP (``lp``) or by Dantzig-Wolfe decomposition over the per-stage caps
(``decompose``), whose pricing rounds are min-cost flows solved by a small native network
simplex (``netflow``, ``_netsimplex.c``). Measurement notes: docs/planner.md.
"""

from tfcompile.planner.plan import FreezePlan, FreezePlanner, plan_freeze
from tfcompile.planner.problem import FreezeProblem, Solution

__all__ = ["FreezePlan", "FreezePlanner", "FreezeProblem", "Solution", "plan_freeze"]
