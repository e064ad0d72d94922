"""`FreezeConfig`: every knob of the freezing controller, with the paper's defaults.

Lengths are in training steps. The TimelyFreeze paper works in phase units of 100 steps and
takes freezing decisions every 10 steps with a per-stage cap of 0.9 on the average freeze
ratio; the baselines' defaults come from their own papers (APF: EMA 0.99, threshold 0.05;
AutoFreeze: 50th percentile; FreezeOut: t_0 = 0.8 before cubing). Values are validated on
construction so that a bad config fails before any process group exists.

Phase lengths left at None scale with the run when ``total_steps`` is known: the paper's
2000-step runs spend 100 steps per phase (a twentieth of the run) and decide every 10 steps,
so one phase unit is ``total_steps // 20`` capped at the paper's 100 (at least 1 step) and the
decision interval a tenth of it (:func:`scaled_unit`); a 100-step run gets 5-step phases and
reaches steady state at step 20. Without ``total_steps`` the paper's lengths are used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tfcompile.errors import FreezeConfigError
from tfcompile.planner.problem import DEFAULT_MAX_FREEZE_RATIO  # noqa: F401 - re-exported here

#: Steps per phase in the TimelyFreeze paper (warm-up, each monitoring window, ramp).
PHASE_UNIT = 100
#: Steps between freezing decisions in the TimelyFreeze paper.
DECISION_INTERVAL = 10
#: Phase units in the paper's runs (2000 steps of 100-step phases): a unit is this fraction
#: of the run when the phases scale with ``total_steps``.
UNITS_PER_RUN = 20
#: Steady-state steps between re-measurements (a tfcompile extension; five phase units).
DEFAULT_REPLAN_EVERY = 5 * PHASE_UNIT
#: A re-measured profile counts as drifted when it moves the predicted step time this much.
DEFAULT_REPLAN_DRIFT = 0.1
#: A new plan replaces the one in force only when predicted at least this much faster.
DEFAULT_REPLAN_MIN_GAIN = 0.01
#: APF (Chen et al. 2021): EMA coefficient and effective-perturbation threshold.
APF_EMA = 0.99
APF_THRESHOLD = 0.05
#: AutoFreeze (Liu et al. 2021): percentile of gradient-norm changes below which a layer is
#: converged, and steps between evaluations.
AUTOFREEZE_PERCENTILE = 50.0
AUTOFREEZE_EVERY = PHASE_UNIT
#: FreezeOut (Brock et al. 2017): first layer's freeze time (fraction of training, before the
#: schedule function is applied) and the schedule function.
FREEZEOUT_T0 = 0.8
FREEZEOUT_SCHEDULE = "cubic"

#: Policies that follow the LP plan (TimelyFreeze and its hybrids).
PLANNED_POLICIES = ("timely", "timely+apf", "timely+autofreeze")
#: Policies that run alone with their own published semantics.
BASELINE_POLICIES = ("apf", "autofreeze", "freezeout")
POLICIES = (*PLANNED_POLICIES, *BASELINE_POLICIES, "none")
GRAD_MODES = ("drop", "rescale")
FREEZEOUT_SCHEDULES = ("linear", "squared", "cubic")


@dataclass(frozen=True)
class FreezeConfig:
    """What to freeze, when, and how dropped microbatch gradients are treated.

    ``policy``: ``timely`` (LP ratios, random groups rotated every decision step),
    ``timely+apf`` / ``timely+autofreeze`` (LP ratios, the metric picks the groups),
    ``apf`` / ``autofreeze`` / ``freezeout`` (baselines, no LP, no phases) or ``none``.
    ``grad``: ``drop`` (the paper: a frozen microbatch contributes nothing, mean over all M)
    or ``rescale`` (mean over the microbatches that contributed).
    ``total_steps``: the training length, when known; phases longer than it are rejected and
    FreezeOut needs it for its schedule.
    ``prefix_on_truncating_stages`` (opt-in): plain ``timely`` freezes front to back (a
    prefix of the groups) on stages with no input gradient, where a frozen prefix truncates
    the backward: more time saved per frozen FLOP, staleness concentrated on early layers.
    ``warmup_steps``, ``monitor_steps``, ``ramp_steps``, ``check_every``, ``replan_every``,
    ``autofreeze_every``: None (default) takes them from :func:`scaled_unit` (``total_steps``
    known) or the paper's 100-step unit; the resolved values are what the fields hold after
    construction. ``plan``: a plan file (``plan.json`` of ``tfcompile plan --out`` or of an
    earlier run's output folder) pinned for the whole run: no monitoring windows, no LP, no
    re-planning; warm-up, then the ramp to the pinned ratios.
    ``wmin_microbatches``: 0 (the paper) freezes every microbatch throughout the w_min
    monitoring window; k > 0 freezes everything in only k microbatches per step (rotating) and
    measures w_min on those, so the model keeps learning during the window.
    """

    policy: str = "timely"
    max_freeze_ratio: float = DEFAULT_MAX_FREEZE_RATIO
    warmup_steps: int | None = None
    monitor_steps: int | None = None
    ramp_steps: int | None = None
    check_every: int | None = None
    replan_every: int | None = None
    replan_drift: float = DEFAULT_REPLAN_DRIFT
    replan_min_gain: float = DEFAULT_REPLAN_MIN_GAIN
    grad: str = "drop"
    seed: int = 0
    total_steps: int | None = None
    apf_ema: float = APF_EMA
    apf_threshold: float = APF_THRESHOLD
    autofreeze_percentile: float = AUTOFREEZE_PERCENTILE
    autofreeze_every: int | None = None
    freezeout_t0: float = FREEZEOUT_T0
    freezeout_schedule: str = FREEZEOUT_SCHEDULE
    wmin_microbatches: int = 0
    prefix_on_truncating_stages: bool = False
    plan: str | None = None

    def __post_init__(self) -> None:
        self._resolve_phase_lengths()
        _check_choice("policy", self.policy, POLICIES)
        _check_choice("grad", self.grad, GRAD_MODES)
        _check_choice("freezeout_schedule", self.freezeout_schedule, FREEZEOUT_SCHEDULES)
        _check_fraction("max_freeze_ratio", self.max_freeze_ratio)
        _check_fraction("replan_drift", self.replan_drift)
        _check_fraction("replan_min_gain", self.replan_min_gain)
        _check_fraction("apf_ema", self.apf_ema)
        _check_fraction("freezeout_t0", self.freezeout_t0)
        if not 0.0 < self.apf_threshold <= 1.0:
            raise FreezeConfigError(
                f"apf_threshold={self.apf_threshold!r} must lie in (0, 1]: it bounds the "
                "effective perturbation |EMA(update)| / EMA(|update|), which is in [0, 1]"
            )
        if not 0.0 <= self.autofreeze_percentile <= 100.0:
            raise FreezeConfigError(
                f"autofreeze_percentile={self.autofreeze_percentile!r} must lie in [0, 100]"
            )
        for name in ("warmup_steps", "ramp_steps", "replan_every", "seed", "wmin_microbatches"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("check_every", "autofreeze_every"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.plan is not None:
            if self.policy not in PLANNED_POLICIES:
                raise FreezeConfigError(
                    f"plan={self.plan!r} pins an LP plan, which only the planned policies "
                    f"({', '.join(PLANNED_POLICIES)}) follow; policy={self.policy!r} has none"
                )
            object.__setattr__(self, "plan", str(self.plan))
        minimum_monitor = 1 if self.policy in PLANNED_POLICIES and self.plan is None else 0
        _check_int("monitor_steps", self.monitor_steps, minimum=minimum_monitor)
        if self.total_steps is not None:
            _check_int("total_steps", self.total_steps, minimum=1)
            self.check_training_length(self.total_steps)
        elif self.policy == "freezeout":
            raise FreezeConfigError(
                "policy='freezeout' needs total_steps: its per-layer freeze times are "
                "fractions of the training length; pass FreezeConfig(total_steps=...)"
            )

    def _resolve_phase_lengths(self) -> None:
        """Fill the phase lengths left at None (see :func:`scaled_unit`)."""
        total = self.total_steps if isinstance(self.total_steps, int) else None
        unit = scaled_unit(total)
        check = max(1, unit * DECISION_INTERVAL // PHASE_UNIT)
        defaults = {
            "warmup_steps": unit,
            "monitor_steps": unit,
            "ramp_steps": unit,
            "check_every": check,
            "replan_every": 5 * unit,
            "autofreeze_every": unit,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    @property
    def pinned(self) -> bool:
        """True when the plan comes from a file (no measurement, no LP)."""
        return self.plan is not None

    @property
    def uses_plan(self) -> bool:
        """True for policies that go through the phases and the LP."""
        return self.policy in PLANNED_POLICIES

    @property
    def planning_steps(self) -> int:
        """Steps before the ramp starts: warm-up plus both monitoring windows (none with a
        pinned plan)."""
        return self.warmup_steps + (0 if self.pinned else 2 * self.monitor_steps)

    def check_training_length(self, total_steps: int) -> None:
        """Raise when the phases before steady state do not fit in ``total_steps``."""
        if not self.uses_plan:
            return
        needed = self.planning_steps + self.ramp_steps
        if needed > total_steps:
            monitor = "" if self.pinned else f"+ 2 x monitor_steps={self.monitor_steps} "
            raise FreezeConfigError(
                f"the freezing phases need {needed} steps (warmup_steps={self.warmup_steps} "
                f"{monitor}+ ramp_steps={self.ramp_steps}) but training has only "
                f"{total_steps}; shorten the phases, train longer, or leave the phase "
                "lengths at None so that they scale with total_steps"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and logs)."""
        return asdict(self)


def scaled_unit(total_steps: int | None) -> int:
    """Steps per phase: the paper's share of the run (``total_steps // 20``, the paper's
    100-step phases in 2000-step runs) capped at its 100 and at least 1; 100 when the
    length is unknown."""
    if total_steps is None:
        return PHASE_UNIT
    return max(1, min(PHASE_UNIT, total_steps // UNITS_PER_RUN))


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FreezeConfigError(
            f"unknown {name} {value!r}; choose one of {', '.join(repr(c) for c in choices)}"
        )


def _check_fraction(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise FreezeConfigError(f"{name}={value!r} must be a number in [0, 1]")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FreezeConfigError(f"{name}={value!r} must be an integer >= {minimum}")
