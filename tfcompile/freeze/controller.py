"""`Freezer`: the decisions of the freezing controller that `Pipeline.step` drives on every rank.

Planned policies (timely and its hybrids) go through the phases of `tfcompile.freeze.phases`,
at steps fixed by the config so that every rank switches at the same step without talking to
the others:

- warmup: nothing frozen (the LR warm-up).
- monitor_wmax: nothing frozen; at its end the runtime's measured profile gives w_max.
- monitor_wmin: every group of every local stage frozen in every microbatch; its measurement
  gives w_min. Both are combined into the LP's profile (see `tfcompile.freeze.time_model`) and
  the LP runs on every rank with the same input, so every rank gets the same plan.
- ramp: the planned ratios scaled by k / K at the k-th decision step of K = ramp/check_every.
- steady: the planned ratios. Every ``replan_every`` steps the profile is re-measured; when it
  moves the predicted step time of the plan in force by more than ``replan_drift``, the LP is
  solved again and its plan adopted only if predicted ``replan_min_gain`` faster.
Baselines (apf, autofreeze, freezeout) have one phase, ``baseline``, and follow their own
rules from step 0; ``none`` has phase ``off``.

The measurement is a collective, so the runtime makes it where a reader sees it::

    need = freezer.measurement_due(step)
    profile = pipe.measured_profile(*need) if need else None
    frozen = freezer.before_step(step, profile)

Decisions (which groups) change only at decision steps (every ``check_every`` steps) and are
pure functions of (seed, step, stage, microbatch) and the policy state, so ranks agree and a
resumed run reproduces an uninterrupted one (:meth:`Freezer.state_dict`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import torch

from tfcompile.errors import FreezeConfigError
from tfcompile.freeze import grads
from tfcompile.freeze.config import FreezeConfig
from tfcompile.freeze.layout import FreezeLayout
from tfcompile.freeze.phases import (
    BASELINE,
    MONITOR_WMAX,
    MONITOR_WMIN,
    RAMP,
    STEADY,
    Phases,
    wmin_microbatches,
)
from tfcompile.freeze.policies import (
    APF,
    AutoFreeze,
    FreezeOut,
    achievable_ratios,
    frozen_fraction,
    metric_order,
    normalised_costs,
    random_order,
    select_for_stage,
    snap_to_achievable,
)
from tfcompile.freeze.time_model import (
    adopt,
    backward_time,
    drift,
    planner_profile,
    refresh_profile,
)
from tfcompile.schedules.profile import CostProfile

log = logging.getLogger("tfcompile.freeze")

STATE_VERSION = 1

ActionKey = tuple[int, int]
GroupKey = tuple[int, str]
Frozen = dict[ActionKey, frozenset[str]]
#: a collective that returns ``value`` from every rank, in rank order
Gather = Callable[[Any], list[Any]]


class StageShape(NamedTuple):
    """What planning needs to know of a stage (every rank gathers every stage's)."""

    order: list[str]  #: groups in forward order
    costs: dict[str, float]  #: W cost per group
    prefix: bool  #: the policy freezes a prefix of ``order`` (a truncating stage)
    truncates: bool  #: no input gradient: everything frozen cuts the whole backward

    @property
    def w_only(self) -> bool:
        """Freezing saves only W regions (groups chosen in any order on a truncating stage;
        see `planner_profile`)."""
        return self.truncates and not self.prefix


class Measurement(NamedTuple):
    """The arguments of the runtime's ``measured_profile(window, frozen)`` due at a step."""

    window: int
    frozen: str | None = None


class PlanLike(Protocol):
    """What the controller reads of a plan (a `FreezePlan` or a restored `PlanRecord`)."""

    ratios: Mapping[ActionKey, float]
    makespan: float
    baseline_makespan: float


class Planner(Protocol):
    """The planner the controller is given (default: `tfcompile.planner.FreezePlanner`)."""

    def plan(self, costs: CostProfile) -> PlanLike: ...
    def makespan(self, costs: CostProfile, ratios: Mapping[ActionKey, float]) -> float: ...


@dataclass(frozen=True)
class PlanRecord:
    """A FreezePlan's fields as restored from a checkpoint (same attribute names)."""

    ratios: dict[ActionKey, float]
    makespan: float
    baseline_makespan: float
    status: str = "restored"
    solve_seconds: float = 0.0


@dataclass(frozen=True)
class Prediction:
    """What the plan in force predicts for one pipeline step, in the profile's unit (ms).

    The LP plans continuous ratios, but a stage freezes whole parameter groups: in steady
    state each action runs the ratio :func:`~tfcompile.freeze.policies.snap_to_achievable`
    gives (the same rule the decisions follow), so ``achievable`` (the simulated makespan
    with those ratios) is what the measured steady step is compared with.
    """

    baseline: float  #: simulated step with nothing frozen
    planned: float  #: the LP's makespan for its continuous ratios
    achievable: float  #: simulated step with the ratios the groups reach exactly
    #: those ratios per (stage, microbatch); a stage whose groups this rank cannot see (no
    #: gather) keeps the plan's ratios
    ratios: Mapping[ActionKey, float] = field(default_factory=dict, repr=False)

    @property
    def gain(self) -> float:
        """Predicted speedup of the steady state over nothing frozen (baseline / achievable)."""
        return self.baseline / self.achievable if self.achievable > 0 else 1.0


@dataclass
class _Counters:
    """Per-step bookkeeping that is not part of the decision state."""

    step_time: float | None = None
    loss: float | None = None
    warned: set[str] = field(default_factory=set)


class WindowTimer(Protocol):
    """What the controller needs of the runtime's timer (`tfcompile.runtime.timers.ActionTimer`)
    to carry a measurement window across a checkpoint."""

    def export(self, steps: int) -> dict[str, Any]: ...
    def restore(self, data: dict[str, Any]) -> None: ...


class Freezer:
    """Decides, before each step, which parameter groups each local action freezes.

    Built from a :class:`FreezeLayout` (``Freezer.for_pipeline(config, pipe)`` reads it off a
    compiled pipeline). ``parameters`` are this rank's parameters by model name (for the
    gradient semantics and the metric baselines), ``gather`` the collective that merges the
    baselines' per-rank metrics (None: each rank decides over its own stages, with a
    warning), ``planner`` the planner (default: a `FreezePlanner` of the layout's schedule,
    built on first use and kept for every re-plan), ``timer`` the runtime's timer whose last
    ``monitor_steps`` steps of samples a checkpoint carries (:meth:`state_dict`), so that a
    run resumed inside a measurement window measures what the uninterrupted run measured.
    ``announce``: this process prints the
    phase changes and the plan summary on stdout when logging is not configured (rank 0;
    they go to the ``tfcompile.freeze`` logger at INFO on every rank either way).
    """

    def __init__(
        self,
        config: FreezeConfig,
        layout: FreezeLayout,
        *,
        parameters: Mapping[str, torch.nn.Parameter] | None = None,
        gather: Gather | None = None,
        planner: Planner | None = None,
        timer: WindowTimer | None = None,
        announce: bool = False,
    ) -> None:
        if not isinstance(config, FreezeConfig):
            raise FreezeConfigError(
                f"freeze= expects a tfcompile.FreezeConfig, got {type(config).__name__}"
            )
        self.config = config
        self.layout = layout
        self.schedule = layout.schedule
        self.num_microbatches = layout.num_microbatches
        self.num_stages = layout.num_stages
        self.local_stages = list(layout.local_stages)
        self.groups: dict[int, list[str]] = {s: layout.groups(s) for s in self.local_stages}
        self.members: dict[int, dict[str, list[str]]] = {
            s: {g: list(names) for g, names in layout.members[s].items()} for s in self.local_stages
        }
        self.costs: dict[int, dict[str, float]] = {
            s: normalised_costs(dict(layout.w_flops[s])) for s in self.local_stages
        }
        self._params = dict(parameters or {})
        self._gather = gather
        self._planner = planner
        self._timer = timer
        self._phases = Phases.of(config)
        policy = config.policy
        self._apf = (
            APF(config.apf_ema, config.apf_threshold, config.check_every, freezes=policy == "apf")
            if policy in ("apf", "timely+apf")
            else None
        )
        self._autofreeze = (
            AutoFreeze(config.autofreeze_percentile, freezes=policy == "autofreeze")
            if policy in ("autofreeze", "timely+autofreeze")
            else None
        )
        self._freezeout: FreezeOut | None = None
        self._global_order: list[GroupKey] | None = None
        self._phase: str | None = None
        self._step = -1
        self.profiles: dict[str, CostProfile | None] = {
            "wmax": None,
            "wmin": None,
            # w_max from the unfrozen microbatches of a paired w_min window (wmin_microbatches)
            "wmax_paired": None,
            "planned": None,
        }
        self._plan: PlanLike | None = None
        self._prediction: Prediction | None = None
        #: every stage's (group order, costs, freezes a prefix, truncates), gathered at the
        #: first plan
        self._stage_shapes: dict[int, StageShape] | None = None
        self._reference_makespan: float | None = None
        self.replans = 0
        self._frozen: Frozen = {}
        self._decided_step = -1  # the step whose decision _frozen holds
        self._skipped_profiles = 0
        self._counters = _Counters()
        if config.uses_plan and config.total_steps is None:
            log.warning(
                "freeze: FreezeConfig.total_steps is not given, so nothing checks that the "
                "run is long enough: the plan is made at step %d and steady freezing starts "
                "at step %d; a shorter run never freezes (pass total_steps)",
                self._phases.ramp_start,
                self._phases.steady_start,
            )
        self._announce = announce
        if config.pinned and config.uses_plan:
            self._pin(config.plan)

    @classmethod
    def for_pipeline(
        cls, config: FreezeConfig, pipe: Any, *, planner: Planner | None = None
    ) -> Freezer:
        """The controller of a compiled `Pipeline`: its layout, parameters and gather."""
        return cls(
            config,
            FreezeLayout.from_pipeline(pipe),
            parameters=dict(pipe.named_parameters()),
            gather=pipe.all_gather_object,
            planner=planner,
            timer=pipe.timer,
            announce=getattr(pipe, "rank", 0) == 0 and getattr(pipe, "dp_rank", 0) == 0,
        )

    # ----------------------------------------------------------------- public state
    @property
    def phase(self) -> str:
        """Current phase name (see `tfcompile.freeze.phases`)."""
        return self._phase if self._phase is not None else self._phases.at(self._next_step())

    @property
    def plan(self) -> Any:
        """The FreezePlan in force (a `PlanRecord` after a restore), or None before planning."""
        return self._plan

    @property
    def planner(self) -> Planner:
        """The planner; the default is built on first use (baselines never import it)."""
        if self._planner is None:
            from tfcompile.planner import FreezePlanner

            # no warm start and the pruned LP: every plan equals plan_freeze's for its
            # profile, whatever was solved before, so a resumed run re-plans as the
            # uninterrupted one did
            self._planner = FreezePlanner(
                self.schedule,
                max_freeze_ratio=self.config.max_freeze_ratio,
                warm_start=False,
                prune=True,
            )
        return self._planner

    @property
    def prediction(self) -> Prediction | None:
        """The steady-state step time the plan in force predicts (see :class:`Prediction`);
        None before the first plan and for a pinned plan (no measured profile). Carried by
        :meth:`state_dict`."""
        return self._prediction

    @property
    def plan_stage_ratios(self) -> list[float]:
        """Mean planned ratio per stage (every stage; zeros before the first plan)."""
        return self._mean_plan_ratios()

    @property
    def frozen(self) -> Frozen:
        """The mapping returned by the last :meth:`before_step`."""
        return dict(self._frozen)

    @property
    def ratios(self) -> dict[ActionKey, float]:
        """Target ratio per local (stage, microbatch) in force now (ramp included)."""
        return {
            (s, m): self._target(s, m, self._step)
            for s in self.local_stages
            for m in range(self.num_microbatches)
        }

    @property
    def actual_ratios(self) -> dict[int, float]:
        """Frozen W cost over total W cost per local stage, averaged over microbatches."""
        result = {}
        for stage in self.local_stages:
            total = sum(
                frozen_fraction(self._frozen.get((stage, m), frozenset()), self.costs[stage])
                for m in range(self.num_microbatches)
            )
            result[stage] = total / self.num_microbatches
        return result

    @property
    def last_step_time(self) -> float | None:
        """Step time reported to the last :meth:`after_step`."""
        return self._counters.step_time

    @property
    def last_loss(self) -> float | None:
        """Loss reported to the last :meth:`after_step` (None off the loss rank)."""
        return self._counters.loss

    @property
    def skipped_measurements(self) -> dict[str, int]:
        """Measurements no decision was made on because they were not finite, per source:
        ``apf`` (checks of non-finite parameters), ``autofreeze`` (steps or intervals with a
        non-finite gradient norm), ``profile`` (measured profiles with a non-finite or no
        time; re-measured at the next step). Each skip is also logged as a warning."""
        return {
            "apf": self._apf.skipped_nonfinite if self._apf is not None else 0,
            "autofreeze": self._autofreeze.skipped_nonfinite if self._autofreeze else 0,
            "profile": self._skipped_profiles,
        }

    def lr_factor(self, stage: int, group: str, step: int | None = None) -> float:
        """FreezeOut's learning-rate multiplier for a group (1.0 under other policies)."""
        if self.config.policy != "freezeout":
            return 1.0
        freezeout = self._freezeout_schedule()
        return freezeout.lr_factor((stage, group), self._next_step() if step is None else step)

    # ----------------------------------------------------------------- runtime hooks
    def measurement_due(self, step: int) -> Measurement | None:
        """The measured profile :meth:`before_step` needs at ``step``, or None.

        The same on every rank (a function of the config and the restored state), so every
        rank makes the collective measurement at the same step: w_max at the end of its
        window, w_min at the end of its window, and a re-measurement every ``replan_every``
        steady steps.
        """
        cfg = self.config
        if not cfg.uses_plan or cfg.pinned:
            return None
        phases = self._phases
        # the first step of a monitoring window pays for the switch (lazily traced backward
        # variants, new buffers: measured 2x the next step on CPU); with two steps or more it
        # is left out of the window's medians
        window = cfg.monitor_steps - 1 if cfg.monitor_steps >= 2 else cfg.monitor_steps
        if step >= phases.wmin_start and self.profiles["wmax"] is None:
            return Measurement(window)
        if step >= phases.ramp_start and self.profiles["wmin"] is None:
            if 0 < cfg.wmin_microbatches < self.num_microbatches:
                # only some microbatches froze everything, the others nothing: w_min and w_max
                # from the same steps, so a machine that speeds up or slows down between the
                # two windows does not leak into W = w_max - w_min
                return Measurement(window, "paired")
            return Measurement(window)
        since = step - phases.steady_start
        if cfg.replan_every > 0 and since > 0 and since % cfg.replan_every == 0:
            return Measurement(min(cfg.replan_every, cfg.monitor_steps))
        return None

    def before_step(self, step: int, profile: CostProfile | None = None) -> Frozen:
        """Advance phases and policy state to ``step``; return the frozen groups.

        ``profile`` answers :meth:`measurement_due` for this step (it must be given when one
        is due; it is ignored otherwise). Called again for the step it last decided (the step
        raised and is being retried), it returns that decision without advancing anything.
        """
        if step == self._decided_step:
            return dict(self._frozen)
        self._step = step
        if self.config.uses_plan:
            self._advance_planned(step, profile)
        self._update_metrics(step)
        phase = self._phases.at(step)
        if phase != self._phase:
            self._say("freeze: step %d: phase %s -> %s", step, self._phase or "start", phase)
            self._phase = phase
        self._frozen = self._decide(step)
        self._decided_step = step
        return dict(self._frozen)

    def grad_scales(self, frozen: Mapping[ActionKey, frozenset[str]]) -> dict[GroupKey, float]:
        """Factor per (stage, group) that the step applies to each use's weight gradient
        before accumulating it, for the frozen mapping the step runs with: M / count under
        ``grad="rescale"`` where only some microbatches contributed, nothing under "drop"."""
        if self.config.grad != "rescale":
            return {}
        M = self.num_microbatches
        contributing = grads.contributing_microbatches(self.members, frozen, M)
        return grads.rescale_factors(contributing, M)

    def after_step(
        self,
        step_time: float,
        loss: float | None = None,
        frozen: Mapping[ActionKey, frozenset[str]] | None = None,
    ) -> None:
        """Record the step and feed the gradient norms to AutoFreeze.

        Called after gradients are on the parameters and before the optimizer step. The grad
        semantics are already in ``.grad``: "rescale" is applied per use during the step
        (:meth:`grad_scales`).
        ``frozen`` is what the step really froze when the caller overrode
        :meth:`before_step`'s answer (default: that answer).
        """
        if frozen is not None:
            self._frozen = {k: frozenset(v) for k, v in frozen.items()}
        self._counters.step_time = float(step_time)
        self._counters.loss = None if loss is None else float(loss)
        M = self.num_microbatches
        contributing = grads.contributing_microbatches(self.members, self._frozen, M)
        if self._autofreeze is not None:
            dropped = self.config.grad == "drop"
            self._autofreeze.observe(
                grads.grad_norms(self._params, self.members, contributing, M, dropped)
            )

    # ----------------------------------------------------------------- planning
    def _next_step(self) -> int:
        return max(self._step, 0)

    def _advance_planned(self, step: int, profile: CostProfile | None) -> None:
        due = self.measurement_due(step)
        if due is None:
            return
        if profile is None:
            raise FreezeConfigError(
                f"freeze: step {step} needs a measured profile {due} (see "
                "Freezer.measurement_due); pass it to before_step"
            )
        if not _usable(profile):  # the same on every rank: the profile is gathered
            self._skipped_profiles += 1
            log.warning(
                "freeze: step %d: measured profile %s has a non-finite time or none at all "
                "(an empty window); skipped, re-measured at the next step",
                step,
                profile.to_dict(),
            )
            return
        if self.profiles["wmax"] is None:
            self.profiles["wmax"] = profile
        elif self.profiles["wmin"] is None:
            unfrozen = profile.meta.get("unfrozen")
            if unfrozen is not None:  # a paired window: its unfrozen microbatches give w_max
                self.profiles["wmax_paired"] = CostProfile.from_dict(unfrozen)
                profile = replace(profile, meta={})
            self.profiles["wmin"] = profile
            self._make_plan(step)
        else:
            self._replan(step, profile)

    def _make_plan(self, step: int) -> None:
        assert self.profiles["wmax"] is not None and self.profiles["wmin"] is not None
        wmax = self.profiles.get("wmax_paired") or self.profiles["wmax"]
        # token stages that freeze groups in any order save W regions only (see planner_profile)
        w_only = [s for s, shape in self._all_stage_shapes().items() if shape.w_only]
        profile = planner_profile(wmax, self.profiles["wmin"], w_only)
        self.profiles["planned"] = profile
        plan = self.planner.plan(profile)
        self._plan = plan
        self._reference_makespan = float(plan.makespan)
        predicted = self._predict(plan, profile)
        before, after = predicted.baseline, predicted.achievable
        self._say(
            "freeze: step %d: plan predicts step time %.4g -> %.4g (%+.1f%%) with whole "
            "groups (LP %.4g); mean ratio per stage %s",
            step,
            before,
            after,
            _percent(after, before),
            float(plan.makespan),
            _format_ratios(self._mean_plan_ratios()),
        )

    def _replan(self, step: int, measured: CostProfile) -> None:
        planned, plan = self.profiles["planned"], self._plan
        assert planned is not None and plan is not None
        refreshed = refresh_profile(
            planned, measured, self._mean_plan_ratios(), self._predicted_backward(planned)
        )
        moved = drift(self.planner.makespan(refreshed, dict(plan.ratios)), self._reference_makespan)
        self.profiles["planned"] = refreshed
        self._reference_makespan = moved.current
        if not moved.replan(self.config.replan_drift):
            log.debug(
                "freeze: step %d: profile drift %.1f%%, plan kept", step, 100 * moved.relative
            )
            return
        new = self.planner.plan(refreshed)
        adopted = adopt(float(new.makespan), moved.current, self.config.replan_min_gain)
        self._say(
            "freeze: step %d: profile drifted %.1f%%; re-planned step time %.6g vs %.6g "
            "for the plan in force: %s",
            step,
            100 * moved.relative,
            float(new.makespan),
            moved.current,
            "adopted" if adopted else "kept the plan in force",
        )
        if adopted:
            self._plan = new
            self._reference_makespan = float(new.makespan)
            self.replans += 1
            self._predict(new, refreshed)

    def _pin(self, path: str) -> None:
        """Follow the plan in ``path`` from the ramp on (no measurement, no LP)."""
        from tfcompile.freeze.pinned import read_plan_file

        data = read_plan_file(path, self.schedule)
        self._plan = PlanRecord(
            ratios=data["ratios"],
            makespan=data["makespan"],
            baseline_makespan=data["baseline_makespan"],
            status="pinned",
        )
        self._reference_makespan = data["makespan"]
        self._say(
            "freeze: pinned plan %s: predicted step time %.4g -> %.4g; mean ratio per "
            "stage %s",
            path,
            data["baseline_makespan"],
            data["makespan"],
            _format_ratios(self._mean_plan_ratios()),
        )

    def _predict(self, plan: PlanLike, profile: CostProfile) -> Prediction:
        """Snap ``plan`` to the ratios every stage's groups reach (the decisions' rule in
        steady state) and simulate it; kept as :attr:`prediction`. Called on every rank at
        the same step (it gathers the stages' groups the first time)."""
        shapes = self._all_stage_shapes()
        ratios = {k: float(v) for k, v in dict(plan.ratios).items()}
        cap = self.config.max_freeze_ratio
        for stage, shape in shapes.items():
            targets = [ratios.get((stage, m), 0.0) for m in range(self.num_microbatches)]
            reachable = achievable_ratios(shape.order, shape.costs, shape.prefix)
            snapped = snap_to_achievable(targets, reachable, cap)
            for m, value in enumerate(snapped):
                ratios[(stage, m)] = value
        planned = {k: float(v) for k, v in dict(plan.ratios).items()}
        same = all(abs(v - planned.get(k, 0.0)) <= 1e-9 for k, v in ratios.items())
        truncated = self._fully_frozen_truncated(shapes, ratios)
        if same and not truncated:  # the LP's own ratios run: its makespan holds
            achievable = float(plan.makespan)
        elif not truncated:
            achievable = float(self.planner.makespan(profile, ratios))
        else:
            durations = self._durations(profile, ratios, truncated)
            achievable = float(self.planner.makespan(durations, {}))
        self._prediction = Prediction(
            baseline=float(plan.baseline_makespan),
            planned=float(plan.makespan),
            achievable=achievable,
            ratios=ratios,
        )
        return self._prediction

    def _predicted_backward(self, profile: CostProfile) -> list[float] | None:
        """Mean backward per stage the plan in force predicts under ``profile`` (the snapped
        ratios, whole-backward cuts included); None before a prediction."""
        if self._prediction is None:
            return None
        ratios = self._prediction.ratios
        cut = self._fully_frozen_truncated(self._all_stage_shapes(), ratios)
        table = self._durations(profile, ratios, cut).microbatches
        assert table is not None
        M = self.num_microbatches
        return [sum(backward_time(row[s]) for row in table) / M for s in range(self.num_stages)]

    def _fully_frozen_truncated(
        self, shapes: Mapping[int, StageShape], ratios: Mapping[ActionKey, float]
    ) -> set[ActionKey]:
        """Actions of a token stage planned W-only (see `planner_profile`'s ``w_only``) that
        freeze every group: their backward is cut entirely, not just their W regions."""
        w_only = {s for s, shape in shapes.items() if shape.w_only}
        return {k for k, v in ratios.items() if k[0] in w_only and v >= 1.0 - 1e-9}

    def _durations(
        self, profile: CostProfile, ratios: Mapping[ActionKey, float], cut: set[ActionKey]
    ) -> CostProfile:
        """``profile`` with every action's frozen duration spelled out per microbatch: I + (1-r)
        W, and the measured everything-frozen backward (w_min) for the ``cut`` actions."""
        wmin = self.profiles["wmin"]
        table = []
        for m in range(self.num_microbatches):
            row = []
            for s, stage in enumerate(profile.stages):
                if (s, m) in cut and wmin is not None:
                    row.append({"F": stage["F"], "I": backward_time(wmin.stages[s]), "W": 0.0})
                    continue
                r = float(ratios.get((s, m), 0.0))
                row.append({"F": stage["F"], "I": stage["I"], "W": (1.0 - r) * stage["W"]})
            table.append(row)
        return replace(profile, microbatches=table)

    def _all_stage_shapes(self) -> dict[int, StageShape]:
        """(group order, costs, freezes a prefix, truncates) of every stage with groups: this
        rank's, merged with the other ranks' through the gather (a collective; once per run)."""
        if self._stage_shapes is None:
            local = {
                s: StageShape(
                    list(self.groups[s]),
                    dict(self.costs[s]),
                    self._freezes_prefix(s),
                    s in self.layout.truncating_stages,
                )
                for s in self.local_stages
                if self.groups[s]
            }
            parts = self._gather(local) if self._gather is not None else [local]
            self._stage_shapes = {s: shape for part in parts for s, shape in part.items()}
        return self._stage_shapes

    def _say(self, message: str, *args: Any) -> None:
        """Log at INFO; on the announcing rank also print when logging is not configured
        (a new user sees the phases and the plan without setting up logging)."""
        log.info(message, *args)
        if self._announce and not log.hasHandlers():
            print(message % args, flush=True)

    def _mean_plan_ratios(self) -> list[float]:
        ratios = self._plan.ratios if self._plan is not None else {}
        return [
            sum(float(ratios.get((s, m), 0.0)) for m in range(self.num_microbatches))
            / self.num_microbatches
            for s in range(self.num_stages)
        ]

    def _target(self, stage: int, microbatch: int, step: int) -> float:
        if self._plan is None or self._phases.at(step) not in (RAMP, STEADY):
            return 0.0
        ratio = float(self._plan.ratios.get((stage, microbatch), 0.0))
        return ratio * self._phases.ramp_fraction(step)

    # ----------------------------------------------------------------- decisions
    def _decide(self, step: int) -> Frozen:
        phase = self._phases.at(step)
        if phase == MONITOR_WMIN:
            microbatches = wmin_microbatches(
                step, self.config.wmin_microbatches, self.num_microbatches
            )
            return {
                (s, m): frozenset(self.groups[s])
                for s in self.local_stages
                if self.groups[s]
                for m in microbatches
            }
        if phase in (RAMP, STEADY):
            return self._decide_planned(step)
        if phase == BASELINE:
            return self._decide_baseline(step)
        return {}

    def _decide_planned(self, step: int) -> Frozen:
        decision = step // self.config.check_every
        frozen: Frozen = {}
        for stage in self.local_stages:
            if not self.groups[stage]:
                continue
            microbatches = range(self.num_microbatches)
            targets = [self._target(stage, m, step) for m in microbatches]
            prefix = self._freezes_prefix(stage)
            if prefix:  # forward order: a frozen prefix also truncates the backward
                orders = [list(self.groups[stage]) for _ in microbatches]
            else:
                orders = [self._candidate_order(stage, m, decision) for m in microbatches]
            chosen = select_for_stage(
                orders, self.costs[stage], targets, self.config.max_freeze_ratio, prefix=prefix
            )
            for m, groups in zip(microbatches, chosen):
                if groups:
                    frozen[(stage, m)] = groups
        return frozen

    def _freezes_prefix(self, stage: int) -> bool:
        """Plain timely on a stage whose backward stops at the earliest unfrozen group (no
        input gradient to produce, e.g. token ids): freeze front to back, so that the time the
        linear model credits to freezing (w_max - w_min, w_min measured truncated) is saved."""
        if not self.config.prefix_on_truncating_stages:
            return False
        if self._apf is not None or self._autofreeze is not None:
            return False
        return stage in self.layout.truncating_stages

    def _candidate_order(self, stage: int, microbatch: int, decision: int) -> list[str]:
        groups = self.groups[stage]
        if self._apf is not None:
            stability = self._apf.stability()
            return metric_order(groups, {g: stability.get((stage, g)) for g in groups})
        if self._autofreeze is not None:
            change = self._autofreeze.change
            return metric_order(groups, {g: change.get((stage, g)) for g in groups})
        return random_order(groups, self.config.seed, decision, stage, microbatch)

    def _decide_baseline(self, step: int) -> Frozen:
        keys: set[GroupKey]
        if self._apf is not None:
            keys = self._apf.frozen(step)  # type: ignore[assignment]
        elif self._autofreeze is not None:
            keys = self._autofreeze.frozen(self._order_for_baseline())
        else:
            keys = self._freezeout_schedule().frozen(step)
        frozen: Frozen = {}
        for stage in self.local_stages:
            chosen = frozenset(g for s, g in keys if s == stage)
            if chosen:
                for m in range(self.num_microbatches):
                    frozen[(stage, m)] = chosen
        return frozen

    # ----------------------------------------------------------------- baselines' metrics
    def _update_metrics(self, step: int) -> None:
        if self._apf is not None and step % self.config.check_every == 0:
            self._apf.check(step, grads.group_tensors(self._params, self.members))
        autofreeze = self._autofreeze
        if autofreeze is not None and step > 0 and step % self.config.autofreeze_every == 0:
            if autofreeze.freezes:  # the baseline's front-to-back rule needs every stage
                autofreeze.end_interval(self._gather_dict(autofreeze.interval_norms()))
                autofreeze.advance_prefix(self._order_for_baseline())
            else:  # the hybrid only orders this rank's own candidates
                autofreeze.end_interval()

    def _all_local(self) -> bool:
        return len(self.local_stages) == self.num_stages

    def _order_for_baseline(self) -> list[GroupKey]:
        """Every group of the model in forward order (stage, then the stage's group order)."""
        if self._global_order is None:
            self._global_order = self._build_global_order()
        return self._global_order

    def _build_global_order(self) -> list[GroupKey]:
        local = self.layout.local_order()
        if self._all_local():
            return local
        if self._gather is None:
            self._warn_once(
                "order",
                "freeze: no gather for the other ranks' groups; %s decides per rank over its "
                "own stages only",
            )
            return local
        position: dict[GroupKey, int] = {}
        for part in self._gather(local):
            for i, (s, g) in enumerate(part):
                position[(int(s), str(g))] = i
        return sorted(position, key=lambda k: (k[0], position[k]))

    def _gather_dict(self, local: dict[GroupKey, float]) -> dict[GroupKey, float]:
        if self._all_local():
            return local
        if self._gather is None:
            self._warn_once("gather", "freeze: no gather; %s uses only this rank's gradient norms")
            return local
        merged: dict[GroupKey, float] = {}
        for part in self._gather(list(local.items())):
            for key, value in part:
                merged[tuple(key)] = float(value)  # type: ignore[index]
        return merged

    def _freezeout_schedule(self) -> FreezeOut:
        if self._freezeout is None:
            cfg = self.config
            assert cfg.total_steps is not None  # FreezeConfig enforces it for freezeout
            self._freezeout = FreezeOut(
                self._order_for_baseline(),
                cfg.freezeout_t0,
                cfg.freezeout_schedule,
                cfg.total_steps,
            )
        return self._freezeout

    def _warn_once(self, tag: str, message: str) -> None:
        if tag not in self._counters.warned:
            self._counters.warned.add(tag)
            log.warning(message, self.config.policy)

    # ----------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Controller state for a checkpoint: phase, step, profiles, plan, policy state.

        Profiles are stored in CostProfile's dict format. There is no RNG state to save:
        every random choice is seeded by (config.seed, decision index, stage, microbatch).
        """
        plan = None
        if self._plan is not None:
            plan = {
                "ratios": [[s, m, float(r)] for (s, m), r in dict(self._plan.ratios).items()],
                "makespan": float(self._plan.makespan),
                "baseline_makespan": float(self._plan.baseline_makespan),
                "status": str(getattr(self._plan, "status", "")),
                "solve_seconds": float(getattr(self._plan, "solve_seconds", 0.0) or 0.0),
            }
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "step": self._step,
            "phase": self._phase,
            "profiles": {k: None if v is None else v.to_dict() for k, v in self.profiles.items()},
            "plan": plan,
            "reference_makespan": self._reference_makespan,
            "prediction": None if self._prediction is None else {
                "baseline": self._prediction.baseline,
                "planned": self._prediction.planned,
                "achievable": self._prediction.achievable,
                "ratios": [[s, m, float(r)] for (s, m), r in self._prediction.ratios.items()],
            },
            "replans": self.replans,
            "frozen": [[s, m, sorted(g)] for (s, m), g in self._frozen.items()],
            "global_order": None if self._global_order is None else list(self._global_order),
            "apf": None if self._apf is None else self._apf.state_dict(),
            "autofreeze": None if self._autofreeze is None else self._autofreeze.state_dict(),
            "rng": {"kind": "seeded-per-decision", "seed": self.config.seed},
            "skipped_profiles": self._skipped_profiles,
            # the samples a measurement after the resume point reads (w_max, w_min and the
            # re-plan windows are at most monitor_steps long)
            "timer_window": (
                self._timer.export(self.config.monitor_steps)
                if self._timer is not None and self.config.uses_plan
                else None
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the config's policy and seed must match."""
        if state.get("version") != STATE_VERSION:
            raise FreezeConfigError(
                f"freezer checkpoint version {state.get('version')!r} is not {STATE_VERSION}"
            )
        saved = state["config"]
        for name in ("policy", "seed", "grad"):
            if saved.get(name) != getattr(self.config, name):
                raise FreezeConfigError(
                    f"checkpoint was written with FreezeConfig({name}={saved.get(name)!r}) "
                    f"but this run has {name}={getattr(self.config, name)!r}; resume with the "
                    "same freezing config"
                )
        self._step = int(state["step"])
        self._decided_step = self._step
        self._phase = state["phase"]
        self._skipped_profiles = int(state.get("skipped_profiles", 0))
        self.profiles = {
            k: None if v is None else CostProfile.from_dict(v) for k, v in state["profiles"].items()
        }
        plan = state["plan"]
        self._plan = None
        if plan is not None:
            self._plan = PlanRecord(
                ratios={(int(s), int(m)): float(r) for s, m, r in plan["ratios"]},
                makespan=float(plan["makespan"]),
                baseline_makespan=float(plan["baseline_makespan"]),
                status=plan.get("status") or "restored",
                solve_seconds=float(plan.get("solve_seconds", 0.0)),
            )
        self._reference_makespan = state["reference_makespan"]
        predicted = state.get("prediction")  # absent in checkpoints of older versions
        self._prediction = None
        if predicted is not None:
            self._prediction = Prediction(
                baseline=float(predicted["baseline"]),
                planned=float(predicted["planned"]),
                achievable=float(predicted["achievable"]),
                ratios={(int(s), int(m)): float(r) for s, m, r in predicted["ratios"]},
            )
        self.replans = int(state["replans"])
        self._frozen = {(int(s), int(m)): frozenset(g) for s, m, g in state["frozen"]}
        order = state["global_order"]
        self._global_order = None if order is None else [(int(s), str(g)) for s, g in order]
        self._freezeout = None
        if self._apf is not None and state["apf"] is not None:
            self._apf.load_state_dict(state["apf"])
        if self._autofreeze is not None and state["autofreeze"] is not None:
            self._autofreeze.load_state_dict(state["autofreeze"])
        self._restore_window(state.get("timer_window"))

    def _restore_window(self, samples: dict[str, Any] | None) -> None:
        """Put the saved samples back into the runtime's timer; without them (a checkpoint
        of an older version), say that a window spanning the resume point is re-measured."""
        if not self.config.uses_plan or self._timer is None:
            return
        if samples is not None:
            self._timer.restore(samples)
            return
        nxt = self._step + 1
        if self.measurement_due(nxt) is not None or self._phases.at(nxt) in (
            MONITOR_WMAX,
            MONITOR_WMIN,
        ):
            log.warning(
                "freeze: the checkpoint carries no timing samples; the measurement window "
                "open at step %d is measured from the resumed steps only",
                nxt,
            )


def _usable(profile: CostProfile) -> bool:
    """A measured profile the controller may decide on: finite, and not all zero."""
    times = [v for row in profile.to_dict()["stages"] for v in row.values()]
    times.append(profile.comm)
    return all(math.isfinite(float(t)) for t in times) and any(float(t) > 0 for t in times)


def _percent(after: float, before: float) -> float:
    return 100.0 * (after - before) / before if before > 0 else 0.0


def _format_ratios(ratios: list[float]) -> str:
    return "[" + ", ".join(f"{r:.2f}" for r in ratios) + "]"
