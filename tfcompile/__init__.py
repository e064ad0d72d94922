"""tfcompile: TimelyFreeze as a compiler pass over traced pipeline stages.

Public names are imported lazily so that `import tfcompile` stays cheap and a planner-only
user never pays for tracing machinery (and vice versa).
"""

from importlib import import_module
from typing import Any

from tfcompile.errors import (
    CostError,
    FreezeConfigError,
    GroupError,
    PipelineFailure,
    PlanError,
    RuntimeConfigError,
    ScheduleError,
    TFCompileError,
    TraceError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "trace_stage": "tfcompile.trace",
    "StageProgram": "tfcompile.program",
    "TracedStage": "tfcompile.trace",
    "dump_stage": "tfcompile.passes.draw",
    "schedules": "tfcompile.schedules",
    "Action": "tfcompile.schedules.actions",
    "Schedule": "tfcompile.schedules.actions",
    "ScheduleDAG": "tfcompile.schedules.dag",
    "CostProfile": "tfcompile.schedules.profile",
    "simulate": "tfcompile.schedules.simulate",
    "Timeline": "tfcompile.schedules.simulate",
    "plan_freeze": "tfcompile.planner.plan",
    "FreezePlan": "tfcompile.planner.plan",
    "FreezePlanner": "tfcompile.planner.plan",
    "DEFAULT_MAX_FREEZE_RATIO": "tfcompile.planner.problem",
    "compile": "tfcompile.api",
    "Pipeline": "tfcompile.runtime.pipeline",
    "FreezeConfig": "tfcompile.freeze.config",
    "save_checkpoint": "tfcompile.train.checkpoint",
    "load_checkpoint": "tfcompile.train.checkpoint",
    "latest_checkpoint": "tfcompile.train.checkpoint",
}

__all__ = [
    "CostError",
    "FreezeConfigError",
    "GroupError",
    "PipelineFailure",
    "PlanError",
    "RuntimeConfigError",
    "ScheduleError",
    "TFCompileError",
    "TraceError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tfcompile' has no attribute {name!r}")
    module = import_module(module_name)
    value = module if name == "schedules" else getattr(module, name)
    globals()[name] = value
    return value
