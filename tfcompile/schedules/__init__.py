"""Pipeline schedules: the action IR, generators, CSV, the schedule DAG, the simulator, export.

This package is the public ``tfcompile.schedules``:

- ``actions``: :class:`Action`, :class:`Schedule` (torch.distributed.pipelining's CSV format),
  the dependency rules between actions and the deadlock check;
- ``generators``: ``build(name, stages, microbatches, ranks=None)`` for ``GPipe``, ``1F1B``,
  ``Interleaved1F1B``, ``ZBH1``, ``ZBV`` and their aliases; ``stages_per_rank(name)`` and
  ``resolve(schedule, stages=, microbatches=, ranks=)`` (a name, a CSV path or a Schedule),
  which ``compile()`` and the CLI both call;
- ``profile``: :class:`CostProfile`, measured or estimated action times (ms);
- ``dag``: :class:`ScheduleDAG`, one node per action, costs bound as arrays;
- ``simulate``: ASAP start times, makespan, bubbles, critical path (:class:`Timeline`);
- ``export``: DAG as DOT, Gantt charts, Chrome/Perfetto traces.

The freeze planner that solves over these lives in ``tfcompile.planner``.
"""

from tfcompile.schedules.actions import Action, Schedule, is_csv_source, validate_schedule
from tfcompile.schedules.generators import (
    SCHEDULES,
    build,
    canonical_name,
    default_ranks,
    resolve,
    stages_per_rank,
)

__all__ = [
    "SCHEDULES",
    "Action",
    "Schedule",
    "build",
    "canonical_name",
    "default_ranks",
    "is_csv_source",
    "resolve",
    "stages_per_rank",
    "validate_schedule",
]
