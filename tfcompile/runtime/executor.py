"""Running one training step of a schedule's action programs over compiled stages.

The same `StepRunner` serves both executors: the distributed one runs its rank's program in
order and blocks on receives; the single-process one runs every rank's program, interleaved in
an order where each action's inputs already exist (`interleave`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import torch

from tfcompile.runtime.timers import ActionTimer
from tfcompile.schedules.actions import Action, Schedule, consumed_message, validate_schedule

EMPTY: frozenset[str] = frozenset()


def interleave(schedule: Schedule) -> list[Action]:
    """One sequential order of all ranks' programs that respects every dependency: the order
    `validate_schedule` finds (round-robin over the ranks that can advance). A schedule that
    would deadlock raises its ScheduleError naming the stuck actions."""
    return validate_schedule(schedule)


class _NullTimer:
    def start(self):
        return None

    def stop(self, token, stage: int, part: str, microbatch: int, frozen: str = "none") -> None:
        pass


NULL_TIMER = _NullTimer()


def forward_only_order(programs: Sequence[Sequence], local_stages: Sequence[int]) -> list:
    """Forward actions of `local_stages`, stage by stage (GPipe order): for evaluation."""
    num_microbatches = 1 + max(a.microbatch for p in programs for a in p)
    return [_forward(s, m) for s in sorted(local_stages) for m in range(num_microbatches)]


def _forward(stage: int, microbatch: int) -> Action:
    return Action(stage, "F", microbatch)


def frozen_state(frozen_groups: frozenset[str], groups) -> str:
    """How much of a stage an action freezes: "none", "some" or "all" of its groups."""
    if not frozen_groups:
        return "none"
    return "all" if len(frozen_groups) >= len(groups) else "some"


def _gets_grad(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


class StepRunner:
    """Executes actions of the stages held locally, one step at a time."""

    def __init__(
        self,
        programs: Mapping[int, object],
        num_stages: int,
        transport,
        timer: ActionTimer,
        grad_specs: Mapping[int, tuple],
        forward_only: Collection[int] = (),
    ):
        """`forward_only` are the stages (of all ranks) that take no part in the backward
        (nothing in them or before them trains): their B/I/W actions are skipped and no
        gradient message is sent to them; every rank is given the same set."""
        self.programs = dict(programs)
        self.forward_only = frozenset(forward_only)
        self.grad_specs = dict(grad_specs)  # stage -> specs of its inputs' gradients
        self.num_stages = num_stages
        self.transport = transport
        self.timer = timer
        self.losses: dict[int, torch.Tensor] = {}
        #: called with each action after it ran (data parallelism starts reducing a stage's
        #: gradients after its last W); None: nothing to call
        self.on_action_done: Callable[[object], None] | None = None

    def run_step(
        self,
        step: int,
        order: Sequence,
        inputs: Sequence[tuple],
        targets: Sequence | None,
        frozen: Mapping[tuple[int, int], frozenset[str]],
        loss_seed: torch.Tensor | None,
        lookahead: int,
        timed: bool = True,
    ) -> dict[int, torch.Tensor]:
        """Run `order` (this rank's actions); returns the loss of each microbatch on the last
        stage. Untimed runs (evaluation) leave the timer's measurements alone."""
        self.losses = {}
        if self.forward_only:  # forward-only stages run their F actions only
            order = [a for a in order if a.kind == "F" or a.stage not in self.forward_only]
        self.transport.begin_step(step)
        self.transport.plan(order, lookahead, self.num_stages)  # receive buffers per boundary
        if timed:
            self.timer.begin_step(step)
        needs = [consumed_message(a, self.num_stages) for a in order]
        try:
            for index, action in enumerate(order):
                if lookahead:
                    window = needs[index : index + lookahead]
                    self.transport.prefetch([k for k in window if k is not None])
                self._run(action, inputs, targets, frozen, loss_seed, timed)
                if self.on_action_done is not None:
                    self.on_action_done(action)
        except BaseException:
            # a failed step releases what it kept (pending forwards, messages in flight
            # locally), so that the next step starts clean; the timer drops the step
            self.release()
            raise
        self.transport.finish_step()
        if timed:
            self.timer.end_step()
        return self.losses

    def release(self) -> None:
        """Drop every microbatch's kept state and this step's local messages and losses."""
        for program in self.programs.values():
            program.release()
        self.transport.begin_step(-1)
        self.losses = {}

    def _run(self, action, inputs, targets, frozen, loss_seed, timed: bool) -> None:
        s, kind, m = action.stage, action.kind, action.microbatch
        program = self.programs[s]
        last = s == self.num_stages - 1
        timer = self.timer if timed else NULL_TIMER
        if kind == "F":
            args = inputs[m] if s == 0 else self.transport.take(("act", s - 1, m))
            token = timer.start()
            if last:
                loss = program.forward(m, *args, target=targets[m])
                self.losses[m] = loss.detach()
            else:
                out = as_tuple(program.forward(m, *args))
            timer.stop(token, s, "F", m)
            if not last:
                self.transport.put(("act", s, m), out)
            return
        frozen_groups = frozen.get((s, m), EMPTY)
        how_frozen = frozen_state(frozen_groups, program.groups)
        if kind in ("B", "I"):
            seeds = (loss_seed,) if last else self._received_grads(s, m)
            token = timer.start()
            grads = program.backward_input(m, *seeds, frozen=frozen_groups)
            timer.stop(token, s, "I", m, how_frozen)
            if s > 0 and s - 1 not in self.forward_only:
                self.transport.put(("grad", s, m), self._grads_to_send(s, m, grads))
            if kind == "I":
                return
        token = timer.start()
        program.backward_weight(m, frozen=frozen_groups)
        timer.stop(token, s, "W", m, how_frozen)

    def _received_grads(self, stage: int, microbatch: int) -> tuple:
        """The gradients of the stage's outputs from the next stage's message, which holds one
        per floating-point output (non-float outputs, e.g. a boolean mask, get None)."""
        grads = self.transport.take(("grad", stage + 1, microbatch))
        traced = self.programs[stage].traced
        if len(grads) == traced.num_outputs:
            return tuple(grads)
        full: list = [None] * traced.num_outputs
        for index, grad in zip(traced.tangent_outputs, grads):
            full[index] = grad
        return tuple(full)

    def _grads_to_send(self, stage: int, microbatch: int, grads) -> tuple:
        """Gradients of the stage's floating-point inputs (the ones a gradient message holds;
        masks and ids get none); an input that got none sends zeros."""
        specs = self.grad_specs[stage]
        float_inputs = [
            i for i, x in enumerate(self.programs[stage].traced.input_specs) if _gets_grad(x.dtype)
        ]
        grads = [grads[i] for i in float_inputs]
        out = []
        for grad, spec in zip(grads, specs):
            if grad is None:
                grad = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
            out.append(grad)
        return tuple(out)
