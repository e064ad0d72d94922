"""The Gantt chart as the runtime executes a plan: B as I then W, fully frozen W marked."""

from __future__ import annotations

import pytest

from tfcompile.schedules import build
from tfcompile.schedules.export import dag_to_dot, executed_parts, gantt
from tfcompile.schedules.profile import CostProfile
from tfcompile.schedules.simulate import simulate

COSTS = CostProfile([{"F": 1.0, "I": 1.5, "W": 2.0}, {"F": 1.0, "I": 1.0, "W": 3.0}], 0.1)


def _planned():
    schedule = build("1F1B", 2, 4)
    ratios = {(0, 0): 1.0, (1, 1): 0.5}
    return schedule, simulate(schedule, COSTS, ratios)


def test_backward_is_split_into_input_then_weight_grads() -> None:
    _, timeline = _planned()
    parts = {}
    for v, kind, start, dur in executed_parts(timeline, COSTS):
        parts.setdefault(v, []).append((kind, start, dur))
    dag = timeline.dag
    assert len(parts) == sum(1 for a in dag.actions if a.kind == "B")
    for v, ((k1, s1, d1), (k2, s2, d2)) in parts.items():
        a = dag.actions[v]
        stage = COSTS.stages[a.stage]
        r = float(timeline.ratios_array[v])
        assert (k1, k2) == ("I", "W")
        assert s1 == pytest.approx(timeline.start_times[v])
        assert d1 == pytest.approx(stage["I"]) and s2 == pytest.approx(s1 + d1)
        assert d2 == pytest.approx((1 - r) * stage["W"])
        assert s2 + d2 == pytest.approx(timeline.end_times[v])  # the same action, split
    fully = [v for v, p in parts.items() if p[1][2] == 0.0]
    assert len(fully) == 1 and (dag.stage[fully[0]], dag.microbatch[fully[0]]) == (0, 0)


def test_gantt_draws_the_executed_step_with_a_marker_for_frozen_w(tmp_path) -> None:
    schedule, timeline = _planned()
    fig = gantt(timeline, title="planned 9.0 ms; measured 9.5 ms", costs=COSTS)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "input grad" in labels and "weight grad" in labels and "W fully frozen" in labels
    assert "full backward" not in labels
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "v"]
    assert len(markers) == 1  # the one fully frozen W
    assert ax.get_title() == "planned 9.0 ms; measured 9.5 ms"
    plain = gantt(timeline)  # without costs: the planner's view, B as one bar
    assert "full backward" in [t.get_text() for t in plain.axes[0].get_legend().get_texts()]
    gantt(timeline, tmp_path / "g.svg", costs=COSTS, baseline=simulate(schedule, COSTS))
    assert (tmp_path / "g.svg").stat().st_size > 0


def test_dag_slack_is_rounded_and_rank_titles_have_room() -> None:
    _, timeline = _planned()
    dot = dag_to_dot(timeline)
    slacks = [part.split("slack ")[1].split('"')[0].split("\\n")[0] for part in
              dot.split("label=")[1:] if "slack " in part]  # fmt: skip
    assert slacks and all("e-" not in s and len(s.split(".")[-1]) <= 2 for s in slacks)
    assert "labelloc=t" in dot and "margin=18" in dot
