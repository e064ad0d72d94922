"""Per-action timers, cheap enough to stay on.

On CPU a record is two perf_counter reads. On CUDA it is a pair of events recorded on the
current stream and resolved once per step (one synchronisation per step, not per action).
Times are kept as wall-clock seconds (perf_counter plus a per-process offset to time.time())
so that records from several processes on one machine share a time base.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import astuple, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TimedPart:
    """One timed piece of work: the F, I or W part of an action (a B action gives I and W)."""

    step: int
    stage: int
    part: str  # "F", "I" or "W"
    microbatch: int
    start: float  # seconds, shared wall-clock base
    end: float
    rank: int = 0
    frozen: str = "none"  # backward parts: "none", "some" or "all" of the stage's groups

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Arrival:
    """A cross-rank message the receiver had to wait for: when it became available."""

    step: int
    kind: str  # "act" (forward) or "grad" (backward)
    src_stage: int
    microbatch: int
    time: float


class ActionTimer:
    """Collects TimedPart records per step, keeping the last `window` steps."""

    def __init__(self, device: torch.device, rank: int = 0, window: int = 50) -> None:
        self.device = device
        self.rank = rank
        self.records: deque[list[TimedPart]] = deque(maxlen=window)
        self.arrivals: deque[list[Arrival]] = deque(maxlen=window)
        self._offset = time.time() - time.perf_counter()
        self._cuda = device.type == "cuda"
        self._pending: list[tuple] = []
        self._current: list[TimedPart] = []
        self._current_arrivals: list[Arrival] = []
        self._step = -1
        self._cuda_base: tuple | None = None

    def set_window(self, window: int | None) -> None:
        """Keep the last `window` steps from now on (None: every step, e.g. for a benchmark
        that replays each step); the records already kept stay, newest first to go last."""
        self.records = deque(self.records, maxlen=window)
        self.arrivals = deque(self.arrivals, maxlen=window)

    def now(self) -> float:
        return time.perf_counter() + self._offset

    def begin_step(self, step: int) -> None:
        self._step = step
        self._current = []
        self._current_arrivals = []
        self._pending = []
        if self._cuda:
            base = torch.cuda.Event(enable_timing=True)
            base.record()
            self._cuda_base = (base, self.now())

    def start(self):
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, token, stage: int, part: str, microbatch: int, frozen: str = "none") -> None:
        if self._cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((token, end, stage, part, microbatch, frozen))
            return
        now = time.perf_counter()
        self._current.append(
            TimedPart(
                self._step,
                stage,
                part,
                microbatch,
                token + self._offset,
                now + self._offset,
                self.rank,
                frozen,
            )
        )

    def arrival(self, kind: str, src_stage: int, microbatch: int) -> None:
        self._current_arrivals.append(Arrival(self._step, kind, src_stage, microbatch, self.now()))

    def end_step(self) -> None:
        if self._cuda and self._pending:
            torch.cuda.synchronize(self.device)
            base_event, base_time = self._cuda_base
            for start, end, stage, part, mb, frozen in self._pending:
                t0 = base_time + base_event.elapsed_time(start) / 1e3
                t1 = base_time + base_event.elapsed_time(end) / 1e3
                self._current.append(
                    TimedPart(self._step, stage, part, mb, t0, t1, self.rank, frozen)
                )
        self.records.append(self._current)
        self.arrivals.append(self._current_arrivals)

    def last_step(self) -> list[TimedPart]:
        return list(self.records[-1]) if self.records else []

    def window(self, steps: int | None = None) -> list[TimedPart]:
        chosen = list(self.records)[-steps:] if steps else list(self.records)
        return [r for step in chosen for r in step]

    def window_arrivals(self, steps: int | None = None) -> list[Arrival]:
        chosen = list(self.arrivals)[-steps:] if steps else list(self.arrivals)
        return [a for step in chosen for a in step]

    def export(self, steps: int) -> dict[str, Any]:
        """The records of the last ``steps`` steps as plain Python values (lists of the
        fields of TimedPart/Arrival, times in seconds), for a checkpoint: a resumed run
        :meth:`restore` them so that a measurement window that spans the resume point
        measures what the uninterrupted run measured."""
        parts = list(self.records)[-steps:] if steps > 0 else []
        arrivals = list(self.arrivals)[-steps:] if steps > 0 else []
        return {
            "parts": [[list(astuple(p)) for p in step] for step in parts],
            "arrivals": [[list(astuple(a)) for a in step] for step in arrivals],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the kept records by :meth:`export`'s (the window length stays)."""
        self.records = deque(
            ([TimedPart(*fields) for fields in step] for step in data["parts"]),
            maxlen=self.records.maxlen,
        )
        self.arrivals = deque(
            ([Arrival(*fields) for fields in step] for step in data["arrivals"]),
            maxlen=self.arrivals.maxlen,
        )


def median_profile(
    parts: list[TimedPart],
    arrivals: list[Arrival],
    num_stages: int,
    frozen: str | None = None,
) -> dict:
    """Planner cost profile (milliseconds) from timed parts of all ranks.

    Per stage: median F, I and W over every microbatch and step in the window (an action's
    time is the sum of its parts of that kind). With `frozen` ("none", "some" or "all"), the
    I and W medians use only the backward parts run with that much of the stage frozen (so
    w_min can be measured on a few all-frozen microbatches per step). comm: median of
    (arrival - producer end) over the messages a receiver waited for, the visible part of a
    transfer.
    """
    per_action: dict[tuple, float] = {}
    matching: set[tuple] = set()  # actions run with the requested frozen state
    ends: dict[tuple, float] = {}
    for p in parts:
        key = (p.step, p.stage, p.part, p.microbatch)
        ends[key] = max(ends.get(key, 0.0), p.end)
        per_action[key] = per_action.get(key, 0.0) + p.seconds
        if frozen is None or p.part == "F" or p.frozen == frozen:
            matching.add(key)
    stages = []
    for stage in range(num_stages):
        row = {}
        for kind in ("F", "I", "W"):
            keys = [k for k in per_action if k[1] == stage and k[2] == kind]
            chosen = [k for k in keys if k in matching] or keys  # a stage without groups
            values = [per_action[k] for k in chosen]
            row[kind] = 1e3 * statistics.median(values) if values else 0.0
        stages.append(row)
    delays = []
    for a in arrivals:
        producer_part = "F" if a.kind == "act" else "I"
        end = ends.get((a.step, a.src_stage, producer_part, a.microbatch))
        if end is not None and a.time >= end:
            delays.append(a.time - end)
    comm = 1e3 * statistics.median(delays) if delays else 0.0
    return {"stages": stages, "comm": comm, "unit": "ms"}
