"""Running one training step of a schedule's action programs over compiled stages.

The same `StepRunner` serves both executors: the distributed one runs its rank's program in
order and blocks on receives; the single-process one runs every rank's program, interleaved in
an order where each action's inputs already exist (`interleave`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tfcompile.errors import ScheduleError
from tfcompile.runtime.timers import ActionTimer
from tfcompile.runtime.transport import MessageKey

EMPTY: frozenset[str] = frozenset()


def needed_message(action, num_stages: int) -> MessageKey | None:
    """The message an action consumes from another stage, if any."""
    s, kind, m = action.stage, action.kind, action.microbatch
    if kind == "F" and s > 0:
        return ("act", s - 1, m)
    if kind in ("B", "I") and s < num_stages - 1:
        return ("grad", s + 1, m)
    return None


def produced_message(action, num_stages: int) -> MessageKey | None:
    s, kind, m = action.stage, action.kind, action.microbatch
    if kind == "F" and s < num_stages - 1:
        return ("act", s, m)
    if kind in ("B", "I") and s > 0:
        return ("grad", s, m)
    return None


def interleave(programs: Sequence[Sequence], num_stages: int) -> list:
    """One sequential order of all ranks' programs that respects every dependency.

    Each rank advances while its next action's message has been produced; if no rank can
    advance, the schedule would deadlock, and the error names the stuck actions.
    """
    positions = [0] * len(programs)
    produced: set[MessageKey] = set()
    order = []
    total = sum(len(p) for p in programs)
    while len(order) < total:
        progressed = False
        for rank, program in enumerate(programs):
            while positions[rank] < len(program):
                action = program[positions[rank]]
                need = needed_message(action, num_stages)
                if need is not None and need not in produced:
                    break
                out = produced_message(action, num_stages)
                if out is not None:
                    produced.add(out)
                order.append(action)
                positions[rank] += 1
                progressed = True
        if not progressed:
            stuck = [str(p[i]) for p, i in zip(programs, positions) if i < len(p)]
            raise ScheduleError(f"schedule deadlocks: every rank waits ({', '.join(stuck)})")
    return order


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


def _forward(stage: int, microbatch: int):
    from tfcompile.schedules.actions import Action

    return Action(stage, "F", microbatch)


def frozen_state(frozen_groups: frozenset[str], groups) -> str:
    """How much of a stage an action freezes: "none", "some" or "all" of its groups."""
    if not frozen_groups:
        return "none"
    return "all" if len(frozen_groups) >= len(groups) else "some"


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
    ):
        self.programs = dict(programs)
        self.grad_specs = dict(grad_specs)  # stage -> specs of its inputs' gradients
        self.num_stages = num_stages
        self.transport = transport
        self.timer = timer
        self.losses: dict[int, torch.Tensor] = {}

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
        self.transport.begin_step(step)
        if timed:
            self.timer.begin_step(step)
        needs = [needed_message(a, self.num_stages) for a in order]
        for index, action in enumerate(order):
            if lookahead:
                window = needs[index : index + lookahead]
                self.transport.prefetch([k for k in window if k is not None])
            self._run(action, inputs, targets, frozen, loss_seed, timed)
        self.transport.finish_step()
        if timed:
            self.timer.end_step()
        return self.losses

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
            seeds = (loss_seed,) if last else self.transport.take(("grad", s + 1, m))
            token = timer.start()
            grads = program.backward_input(m, *seeds, frozen=frozen_groups)
            timer.stop(token, s, "I", m, how_frozen)
            if s > 0:
                self.transport.put(("grad", s, m), self._grads_to_send(s, m, grads))
            if kind == "I":
                return
        token = timer.start()
        program.backward_weight(m, frozen=frozen_groups)
        timer.stop(token, s, "W", m, how_frozen)

    def _grads_to_send(self, stage: int, microbatch: int, grads) -> tuple:
        """Gradients of the stage's inputs; an input that got none sends zeros."""
        specs = self.grad_specs[stage]
        out = []
        for grad, spec in zip(grads, specs):
            if grad is None:
                grad = torch.zeros(spec.shape, dtype=spec.dtype, device=spec.device)
            out.append(grad)
        return tuple(out)
