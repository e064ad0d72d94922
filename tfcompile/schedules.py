"""Pipeline schedules (public module ``tfcompile.schedules``).

``tfcompile.schedules.build(name, stages, microbatches, ranks=None)`` builds one of
``GPipe``, ``1F1B``, ``Interleaved1F1B``, ``ZBH1``, ``ZBV``; ``Schedule.from_csv`` loads a
schedule written in torch.distributed.pipelining's CSV format.
"""

from tfcompile.schedule.actions import Action, Schedule, validate_schedule
from tfcompile.schedule.generators import SCHEDULES, build, canonical_name

__all__ = ["SCHEDULES", "Action", "Schedule", "build", "canonical_name", "validate_schedule"]
