"""`Freezer`: the phase controller that `Pipeline.step` drives on every rank.

Planned policies (timely and its hybrids) go through the paper's phases, at steps fixed by the
config so that every rank switches at the same step without talking to the others:

    warmup -> monitor_wmax -> monitor_wmin -> (plan) -> ramp -> steady (periodic re-plan)

- warmup: nothing frozen (the LR warm-up).
- monitor_wmax: nothing frozen; at its end ``pipe.measured_profile(monitor_steps)`` gives w_max.
- monitor_wmin: every group of every local stage frozen in every microbatch; its measurement
  gives w_min. Both are combined into the LP's profile (see `tfcompile.freeze.time_model`) and
  the LP runs on every rank with the same input, so every rank gets the same plan.
- ramp: the planned ratios scaled by k / K at the k-th decision step of K = ramp/check_every.
- steady: the planned ratios. Every ``replan_every`` steps the profile is re-measured; when it
  moves the predicted step time of the plan in force by more than ``replan_drift``, the LP is
  solved again and its plan adopted only if predicted ``replan_min_gain`` faster.
Baselines (apf, autofreeze, freezeout) have one phase, ``baseline``, and follow their own
rules from step 0; ``none`` has phase ``off``.

Decisions (which groups) change only at decision steps (every ``check_every`` steps) and are
pure functions of (seed, step, stage, microbatch) and the policy state, so ranks agree and a
resumed run reproduces an uninterrupted one (:meth:`Freezer.state_dict`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tfcompile.errors import FreezeConfigError
from tfcompile.freeze.config import FreezeConfig
from tfcompile.freeze.policies import (
    APF,
    AutoFreeze,
    FreezeOut,
    frozen_fraction,
    metric_order,
    normalised_costs,
    random_order,
    select_for_stage,
)
from tfcompile.freeze.time_model import planner_profile, refresh_profile

log = logging.getLogger("tfcompile.freeze")

WARMUP = "warmup"
MONITOR_WMAX = "monitor_wmax"
MONITOR_WMIN = "monitor_wmin"
RAMP = "ramp"
STEADY = "steady"
BASELINE = "baseline"
OFF = "off"

STATE_VERSION = 1

ActionKey = tuple[int, int]
GroupKey = tuple[int, str]
Frozen = dict[ActionKey, frozenset[str]]


class PipelineLike(Protocol):
    """What the controller needs from the runtime's pipeline (see docs/interfaces.md)."""

    schedule: Any
    local_stages: list[int]
    step_index: int

    def stage_groups(self, stage: int) -> Mapping[str, list[str]]: ...
    def group_costs(self, stage: int) -> Mapping[str, float]: ...
    def named_parameters(self) -> Any: ...
    def measured_profile(self, window: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PlanRecord:
    """A FreezePlan's fields as restored from a checkpoint (same attribute names)."""

    ratios: dict[ActionKey, float]
    makespan: float
    baseline_makespan: float
    status: str = "restored"
    solve_seconds: float = 0.0


def solve_plan(schedule: Any, profile: Mapping[str, Any], max_freeze_ratio: float) -> Any:
    """Run the planner's LP on a profile dict (indirection kept small for tests)."""
    from tfcompile.planner.lp import plan_freeze
    from tfcompile.schedules.profile import CostProfile

    costs = CostProfile.from_dict(dict(profile))
    return plan_freeze(schedule, costs, max_freeze_ratio=max_freeze_ratio)


def predict_makespan(
    schedule: Any, profile: Mapping[str, Any], ratios: Mapping[ActionKey, float]
) -> float:
    """Step time the planner's simulator predicts for ``ratios`` under ``profile``."""
    from tfcompile.schedules.profile import CostProfile
    from tfcompile.schedules.simulate import simulate

    costs = CostProfile.from_dict(dict(profile))
    return float(simulate(schedule, costs, ratios=dict(ratios)).makespan)


@dataclass
class _Counters:
    """Per-step bookkeeping that is not part of the decision state."""

    step_time: float | None = None
    loss: float | None = None
    warned: set[str] = field(default_factory=set)


class Freezer:
    """Decides, before each step, which parameter groups each local action freezes."""

    def __init__(self, config: FreezeConfig, pipe: PipelineLike) -> None:
        if not isinstance(config, FreezeConfig):
            raise FreezeConfigError(
                f"freeze= expects a tfcompile.FreezeConfig, got {type(config).__name__}"
            )
        self.config = config
        self.pipe = pipe
        # plan and predict on the schedule as the runtime executes it (B as I then W) when
        # the pipeline offers it, so that predictions match what runs
        self.schedule = getattr(pipe, "execution_schedule", None) or pipe.schedule
        self.num_microbatches = int(self.schedule.num_microbatches)
        self.num_stages = int(self.schedule.num_stages)
        self.local_stages = sorted(int(s) for s in pipe.local_stages)
        self.groups: dict[int, list[str]] = {}
        self.members: dict[int, dict[str, list[str]]] = {}
        self.costs: dict[int, dict[str, float]] = {}
        for stage in self.local_stages:
            members = {g: list(names) for g, names in pipe.stage_groups(stage).items()}
            raw = pipe.group_costs(stage)
            self.groups[stage] = list(members)
            self.members[stage] = members
            self.costs[stage] = normalised_costs({g: float(raw.get(g, 0.0)) for g in members})
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
        self.profiles: dict[str, dict[str, Any] | None] = {
            "wmax": None,
            "wmin": None,
            "planned": None,
        }
        self._plan: Any = None
        self._reference_makespan: float | None = None
        self.replans = 0
        self._frozen: Frozen = {}
        self._params: dict[str, torch.nn.Parameter] | None = None
        self._counters = _Counters()

    # ----------------------------------------------------------------- public state
    @property
    def phase(self) -> str:
        """Current phase name (see the module docstring)."""
        return self._phase if self._phase is not None else self._phase_at(self._next_step())

    @property
    def plan(self) -> Any:
        """The FreezePlan in force (a `PlanRecord` after a restore), or None before planning."""
        return self._plan

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

    def lr_factor(self, stage: int, group: str, step: int | None = None) -> float:
        """FreezeOut's learning-rate multiplier for a group (1.0 under other policies)."""
        if self.config.policy != "freezeout":
            return 1.0
        freezeout = self._freezeout_schedule()
        return freezeout.lr_factor((stage, group), self._next_step() if step is None else step)

    # ----------------------------------------------------------------- runtime hooks
    def before_step(self) -> Frozen:
        """Advance phases and policy state to ``pipe.step_index``; return the frozen groups."""
        step = int(self.pipe.step_index)
        self._step = step
        if self.config.uses_plan:
            self._advance_planned(step)
        self._update_metrics(step)
        phase = self._phase_at(step)
        if phase != self._phase:
            log.info("freeze: step %d: phase %s -> %s", step, self._phase or "start", phase)
            self._phase = phase
        self._frozen = self._decide(step)
        return dict(self._frozen)

    def after_step(
        self,
        step_time: float,
        loss: float | None = None,
        frozen: Mapping[ActionKey, frozenset[str]] | None = None,
    ) -> None:
        """Record the step; apply the grad semantics to the parameters' ``.grad``.

        Called after gradients are on the parameters and before the optimizer step.
        ``frozen`` is what the step really froze when the caller overrode
        :meth:`before_step`'s answer (default: that answer).
        """
        if frozen is not None:
            self._frozen = {k: frozenset(v) for k, v in frozen.items()}
        self._counters.step_time = float(step_time)
        self._counters.loss = None if loss is None else float(loss)
        contributing = self._contributing_microbatches()
        if self.config.grad == "rescale":
            self._rescale(contributing)
        if self._autofreeze is not None:
            self._autofreeze.observe(self._grad_norms(contributing))

    # ----------------------------------------------------------------- phases
    def _boundaries(self) -> tuple[int, int, int, int]:
        cfg = self.config
        wmax_start = cfg.warmup_steps
        wmin_start = wmax_start + cfg.monitor_steps
        ramp_start = wmin_start + cfg.monitor_steps
        return wmax_start, wmin_start, ramp_start, ramp_start + cfg.ramp_steps

    def _phase_at(self, step: int) -> str:
        if self.config.policy == "none":
            return OFF
        if not self.config.uses_plan:
            return BASELINE
        wmax_start, wmin_start, ramp_start, steady_start = self._boundaries()
        if step < wmax_start:
            return WARMUP
        if step < wmin_start:
            return MONITOR_WMAX
        if step < ramp_start:
            return MONITOR_WMIN
        if step < steady_start:
            return RAMP
        return STEADY

    def _next_step(self) -> int:
        return max(self._step, 0)

    def _advance_planned(self, step: int) -> None:
        cfg = self.config
        _, wmin_start, ramp_start, steady_start = self._boundaries()
        if step >= wmin_start and self.profiles["wmax"] is None:
            self.profiles["wmax"] = dict(self.pipe.measured_profile(cfg.monitor_steps))
        if step >= ramp_start and self.profiles["wmin"] is None:
            if 0 < cfg.wmin_microbatches < self.num_microbatches:  # only some were frozen
                wmin = self.pipe.measured_profile(cfg.monitor_steps, frozen="all")
            else:
                wmin = self.pipe.measured_profile(cfg.monitor_steps)
            self.profiles["wmin"] = dict(wmin)
            self._make_plan(step)
        since = step - steady_start
        if cfg.replan_every > 0 and since > 0 and since % cfg.replan_every == 0:
            self._replan(step)

    def _make_plan(self, step: int) -> None:
        assert self.profiles["wmax"] is not None and self.profiles["wmin"] is not None
        profile = planner_profile(self.profiles["wmax"], self.profiles["wmin"])
        self.profiles["planned"] = profile
        plan = solve_plan(self.schedule, profile, self.config.max_freeze_ratio)
        self._plan = plan
        self._reference_makespan = float(plan.makespan)
        before, after = float(plan.baseline_makespan), float(plan.makespan)
        log.info(
            "freeze: step %d: plan predicts step time %.6g -> %.6g (%+.1f%%); "
            "mean ratio per stage %s",
            step,
            before,
            after,
            _percent(after, before),
            _format_ratios(self._mean_plan_ratios()),
        )

    def _replan(self, step: int) -> None:
        window = min(self.config.replan_every, self.config.monitor_steps)
        measured = dict(self.pipe.measured_profile(window))
        assert self.profiles["planned"] is not None and self._plan is not None
        refreshed = refresh_profile(self.profiles["planned"], measured, self._mean_plan_ratios())
        ratios = dict(self._plan.ratios)
        current = predict_makespan(self.schedule, refreshed, ratios)
        reference = self._reference_makespan or current
        self.profiles["planned"] = refreshed
        self._reference_makespan = current
        drift = abs(current - reference) / reference if reference > 0 else 0.0
        if drift <= self.config.replan_drift:
            log.debug("freeze: step %d: profile drift %.1f%%, plan kept", step, 100 * drift)
            return
        plan = solve_plan(self.schedule, refreshed, self.config.max_freeze_ratio)
        adopted = float(plan.makespan) < current * (1.0 - self.config.replan_min_gain)
        log.info(
            "freeze: step %d: profile drifted %.1f%%; re-planned step time %.6g vs %.6g "
            "for the plan in force: %s",
            step,
            100 * drift,
            float(plan.makespan),
            current,
            "adopted" if adopted else "kept the plan in force",
        )
        if adopted:
            self._plan = plan
            self._reference_makespan = float(plan.makespan)
            self.replans += 1

    def _mean_plan_ratios(self) -> list[float]:
        ratios = self._plan.ratios if self._plan is not None else {}
        return [
            sum(float(ratios.get((s, m), 0.0)) for m in range(self.num_microbatches))
            / self.num_microbatches
            for s in range(self.num_stages)
        ]

    def _ramp_fraction(self, step: int) -> float:
        _, _, ramp_start, steady_start = self._boundaries()
        if step >= steady_start:
            return 1.0
        decisions = math.ceil(self.config.ramp_steps / self.config.check_every)
        done = (step - ramp_start) // self.config.check_every + 1
        return min(1.0, done / decisions)

    def _target(self, stage: int, microbatch: int, step: int) -> float:
        if self._plan is None or self._phase_at(step) not in (RAMP, STEADY):
            return 0.0
        ratio = float(self._plan.ratios.get((stage, microbatch), 0.0))
        return ratio * self._ramp_fraction(step)

    # ----------------------------------------------------------------- decisions
    def _decide(self, step: int) -> Frozen:
        phase = self._phase_at(step)
        if phase == MONITOR_WMIN:
            return {
                (s, m): frozenset(self.groups[s])
                for s in self.local_stages
                if self.groups[s]
                for m in self._wmin_microbatches(step)
            }
        if phase in (RAMP, STEADY):
            return self._decide_planned(step)
        if phase == BASELINE:
            return self._decide_baseline(step)
        return {}

    def _wmin_microbatches(self, step: int) -> list[int]:
        """Microbatches frozen whole during the w_min window: all (the paper), or k rotating."""
        k = self.config.wmin_microbatches
        M = self.num_microbatches
        if k <= 0 or k >= M:
            return list(range(M))
        return sorted({(step * k + j) % M for j in range(k)})

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
        truncates = getattr(self.pipe, "truncates_backward", None)
        return bool(truncates is not None and truncates(stage))

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

    # ----------------------------------------------------------------- metrics
    def _update_metrics(self, step: int) -> None:
        if self._apf is not None and step % self.config.check_every == 0:
            self._apf.check(step, self._group_tensors())
        autofreeze = self._autofreeze
        if autofreeze is not None and step > 0 and step % self.config.autofreeze_every == 0:
            if autofreeze.freezes:  # the baseline's front-to-back rule needs every stage
                autofreeze.end_interval(self._gather_dict(autofreeze.interval_norms()))
                autofreeze.advance_prefix(self._order_for_baseline())
            else:  # the hybrid only orders this rank's own candidates
                autofreeze.end_interval()

    def _group_tensors(self) -> dict[GroupKey, list[torch.Tensor]]:
        params = self._parameters()
        return {
            (stage, group): [params[n] for n in names if n in params]
            for stage in self.local_stages
            for group, names in self.members[stage].items()
        }

    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        if self._params is None:
            self._params = dict(self.pipe.named_parameters())
        return self._params

    def _contributing_microbatches(self) -> dict[GroupKey, int]:
        counts: dict[GroupKey, int] = {}
        for stage in self.local_stages:
            for group in self.groups[stage]:
                frozen_in = sum(
                    group in self._frozen.get((stage, m), frozenset())
                    for m in range(self.num_microbatches)
                )
                counts[(stage, group)] = self.num_microbatches - frozen_in
        return counts

    def _rescale(self, contributing: Mapping[GroupKey, int]) -> None:
        """Mean over contributing microbatches: scale by M / count where 0 < count < M."""
        params = self._parameters()
        for (stage, group), count in contributing.items():
            if count <= 0 or count >= self.num_microbatches:
                continue
            factor = self.num_microbatches / count
            for name in self.members[stage][group]:
                param = params.get(name)
                if param is not None and param.grad is not None:
                    param.grad.mul_(factor)

    def _grad_norms(self, contributing: Mapping[GroupKey, int]) -> dict[GroupKey, float]:
        """Per-group gradient norm, normalised to a full-batch mean under ``drop``."""
        params = self._parameters()
        keys: list[GroupKey] = []
        norms: list[torch.Tensor] = []
        for (stage, group), count in contributing.items():
            grads = [
                params[n].grad
                for n in self.members[stage][group]
                if n in params and params[n].grad is not None
            ]
            if count <= 0 or not grads:
                continue
            scale = self.num_microbatches / count if self.config.grad == "drop" else 1.0
            squared = sum(g.detach().float().pow(2).sum().cpu() for g in grads)
            keys.append((stage, group))
            norms.append(torch.as_tensor(squared).sqrt() * scale)
        values = torch.stack(norms).tolist() if norms else []
        return dict(zip(keys, values))

    # ----------------------------------------------------------------- global layer order
    def _all_local(self) -> bool:
        return len(self.local_stages) == self.num_stages

    def _order_for_baseline(self) -> list[GroupKey]:
        """Every group of the model in forward order (stage, then the stage's group order)."""
        if self._global_order is None:
            self._global_order = self._build_global_order()
        return self._global_order

    def _build_global_order(self) -> list[GroupKey]:
        if self._all_local():
            return [(s, g) for s in self.local_stages for g in self.groups[s]]
        try:
            return [(s, g) for s in range(self.num_stages) for g in self.pipe.stage_groups(s)]
        except Exception:  # stage_groups may only know local stages
            pass
        gather = getattr(self.pipe, "all_gather_object", None)
        if gather is not None:
            local = [(s, g) for s in self.local_stages for g in self.groups[s]]
            position: dict[GroupKey, int] = {}
            for part in gather(local):
                for i, (s, g) in enumerate(part):
                    position[(int(s), str(g))] = i
            return sorted(position, key=lambda k: (k[0], position[k]))
        self._warn_once(
            "order",
            "freeze: the pipeline offers neither stage_groups for remote stages nor "
            "all_gather_object; %s decides per rank over its own stages only",
        )
        return [(s, g) for s in self.local_stages for g in self.groups[s]]

    def _gather_dict(self, local: dict[GroupKey, float]) -> dict[GroupKey, float]:
        if self._all_local():
            return local
        gather = getattr(self.pipe, "all_gather_object", None)
        if gather is None:
            self._warn_once(
                "gather",
                "freeze: no pipe.all_gather_object; %s uses only this rank's gradient norms",
            )
            return local
        merged: dict[GroupKey, float] = {}
        for part in gather(list(local.items())):
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

        There is no RNG state to save: every random choice is seeded by
        (config.seed, decision index, stage, microbatch).
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
            "profiles": {k: _copy_profile(v) for k, v in self.profiles.items()},
            "plan": plan,
            "reference_makespan": self._reference_makespan,
            "replans": self.replans,
            "frozen": [[s, m, sorted(g)] for (s, m), g in self._frozen.items()],
            "global_order": None if self._global_order is None else list(self._global_order),
            "apf": None if self._apf is None else self._apf.state_dict(),
            "autofreeze": None if self._autofreeze is None else self._autofreeze.state_dict(),
            "rng": {"kind": "seeded-per-decision", "seed": self.config.seed},
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
        self._phase = state["phase"]
        self.profiles = {k: _copy_profile(v) for k, v in state["profiles"].items()}
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
        self.replans = int(state["replans"])
        self._frozen = {(int(s), int(m)): frozenset(g) for s, m, g in state["frozen"]}
        order = state["global_order"]
        self._global_order = None if order is None else [(int(s), str(g)) for s, g in order]
        self._freezeout = None
        if self._apf is not None and state["apf"] is not None:
            self._apf.load_state_dict(state["apf"])
        if self._autofreeze is not None and state["autofreeze"] is not None:
            self._autofreeze.load_state_dict(state["autofreeze"])


def _copy_profile(profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    copied = dict(profile)
    copied["stages"] = [dict(s) for s in profile["stages"]]
    return copied


def _percent(after: float, before: float) -> float:
    return 100.0 * (after - before) / before if before > 0 else 0.0


def _format_ratios(ratios: list[float]) -> str:
    return "[" + ", ".join(f"{r:.2f}" for r in ratios) + "]"
