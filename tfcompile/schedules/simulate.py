"""ASAP simulation of a schedule: start/end of every action, makespan, bubbles, critical path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfcompile.schedules.actions import Action, Schedule
from tfcompile.schedules.dag import ScheduleDAG


def longest_path(dag: ScheduleDAG, dur: np.ndarray, comm: float) -> tuple[np.ndarray, np.ndarray]:
    """ASAP start and end times for node durations ``dur`` (one pass in topological order)."""
    n = dag.num_nodes
    start = [0.0] * n
    end = [0.0] * n
    pp = dag.prog_pred.tolist()
    dp = dag.data_pred.tolist()
    d = dur.tolist()
    for v in dag.topo.tolist():
        t = 0.0
        u = pp[v]
        if u >= 0:
            t = end[u]
        u = dp[v]
        if u >= 0:
            x = end[u] + comm
            if x > t:
                t = x
        start[v] = t
        end[v] = t + d[v]
    return np.array(start), np.array(end)


@dataclass
class Timeline:
    """Result of :func:`simulate`. Times are in the cost profile's unit."""

    schedule: Schedule
    dag: ScheduleDAG
    start_times: np.ndarray
    end_times: np.ndarray
    durations: np.ndarray
    ratios_array: np.ndarray
    comm: float
    makespan: float
    busy: list[float]
    bubble_fraction: list[float]
    critical_nodes: list[int]
    unit: str = "ms"
    _start: dict | None = field(default=None, repr=False)
    _end: dict | None = field(default=None, repr=False)

    @property
    def start(self) -> dict[Action, float]:
        if self._start is None:
            self._start = dict(zip(self.dag.actions, self.start_times.tolist()))
        return self._start

    @property
    def end(self) -> dict[Action, float]:
        if self._end is None:
            self._end = dict(zip(self.dag.actions, self.end_times.tolist()))
        return self._end

    @property
    def critical_path(self) -> list[Action]:
        return [self.dag.actions[v] for v in self.critical_nodes]

    @property
    def bubble(self) -> float:
        """Mean bubble fraction over ranks."""
        return float(np.mean(self.bubble_fraction))

    @property
    def ratios(self) -> dict[tuple[int, int], float]:
        fz = np.flatnonzero(self.dag.freezable & (self.ratios_array > 0))
        return {
            (int(self.dag.stage[v]), int(self.dag.microbatch[v])): float(self.ratios_array[v])
            for v in fz
        }

    def slack(self) -> np.ndarray:
        """Total float of each node: how much it can grow without lengthening the makespan."""
        dag = self.dag
        latest_end = np.full(dag.num_nodes, self.makespan)
        ls = latest_end.tolist()
        st = self.start_times.tolist()
        del st
        d = self.durations.tolist()
        pp = dag.prog_pred.tolist()
        dp = dag.data_pred.tolist()
        for v in dag.topo[::-1].tolist():
            lstart = ls[v] - d[v]
            u = pp[v]
            if u >= 0 and lstart < ls[u]:
                ls[u] = lstart
            u = dp[v]
            if u >= 0 and lstart - self.comm < ls[u]:
                ls[u] = lstart - self.comm
        return np.maximum(np.array(ls) - self.end_times, 0.0)

    def summary(self) -> str:
        lines = [
            f"{self.schedule.name}: makespan {self.makespan:.4g} {self.unit}, "
            f"mean bubble {100 * self.bubble:.1f}%"
        ]
        for r, (b, f) in enumerate(zip(self.busy, self.bubble_fraction)):
            lines.append(f"  rank {r}: busy {b:.4g} {self.unit}, bubble {100 * f:.1f}%")
        return "\n".join(lines)


def simulate(
    schedule: Schedule | ScheduleDAG,
    costs: Any,
    ratios: Mapping[tuple[int, int], float] | None = None,
) -> Timeline:
    """Simulate ``schedule`` with ``costs`` (CostProfile, dict or JSON path) and freeze ratios.

    Every action starts as soon as its rank is free (program order) and its data dependencies
    are done (plus ``comm`` across ranks).
    """
    dag = schedule if isinstance(schedule, ScheduleDAG) else ScheduleDAG(schedule)
    from tfcompile.schedules.profile import as_profile

    prof = as_profile(costs)
    base, wpart, comm = dag.bind(prof)
    r = dag.ratio_vector(ratios)
    return timeline_from_arrays(dag, base - wpart * r, r, comm, prof.unit)


def timeline_from_arrays(
    dag: ScheduleDAG, dur: np.ndarray, r: np.ndarray, comm: float, unit: str = "ms"
) -> Timeline:
    start, end = longest_path(dag, dur, comm)
    makespan = float(end.max()) if len(end) else 0.0
    nr = dag.schedule.num_ranks
    busy = np.bincount(dag.rank, weights=dur, minlength=nr)
    bubble = [1.0 - b / makespan if makespan > 0 else 0.0 for b in busy.tolist()]
    # critical path: walk back through tight predecessors
    crit: list[int] = []
    if len(end):
        v = int(np.argmax(end))
        tol = 1e-9 * max(1.0, makespan)
        while v >= 0:
            crit.append(v)
            u_d, u_p = int(dag.data_pred[v]), int(dag.prog_pred[v])
            if u_d >= 0 and abs(end[u_d] + comm - start[v]) <= tol:
                v = u_d
            elif u_p >= 0 and abs(end[u_p] - start[v]) <= tol:
                v = u_p
            else:
                break
        crit.reverse()
    return Timeline(
        schedule=dag.schedule,
        dag=dag,
        start_times=start,
        end_times=end,
        durations=dur,
        ratios_array=r,
        comm=comm,
        makespan=makespan,
        busy=busy.tolist(),
        bubble_fraction=bubble,
        critical_nodes=crit,
        unit=unit,
    )
