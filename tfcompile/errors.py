"""Errors a user can cause. Each message says what was wrong and what to change."""


class TFCompileError(Exception):
    """Base class of every error tfcompile raises on purpose."""


class TraceError(TFCompileError):
    """A stage module could not be traced into forward/backward graphs."""


class GroupError(TFCompileError):
    """A parameter-group specification does not match the stage's parameters."""


class ScheduleError(TFCompileError):
    """A schedule is unknown, malformed, invalid or would deadlock."""


class CostError(TFCompileError):
    """A cost profile is malformed (missing stages, negative times, ...)."""


class PlanError(TFCompileError):
    """The freeze LP is infeasible or the solver failed; no plan is returned."""


class RuntimeConfigError(TFCompileError):
    """A pipeline configuration is inconsistent (stages vs ranks, ranks disagree, ...)."""


class PipelineFailure(TFCompileError):
    """A rank failed during a step; raised on every rank with the failing rank's error."""


class FreezeConfigError(TFCompileError):
    """A FreezeConfig value is out of range or inconsistent with the training length."""
