"""`tfcompile plan` and the planner's dumps (DOT, Perfetto trace, Gantt)."""

from __future__ import annotations

import json
import os

import pytest

from tfcompile.cli import build_parser, main
from tfcompile.planner import plan_freeze
from tfcompile.schedules import build, export
from tfcompile.schedules.profile import CostProfile
from tfcompile.schedules.simulate import simulate

DATA = os.path.join(os.path.dirname(__file__), "data", "planner")
GPT8 = os.path.join(DATA, "gpt-1.5b-p8.json")


@pytest.fixture
def costs4(tmp_path):
    path = tmp_path / "costs.json"
    stages = [{"F": 2.0, "I": 2.0, "W": 1.0}] * 3 + [{"F": 3.0, "I": 2.5, "W": 1.5}]
    path.write_text(json.dumps({"stages": stages, "comm": 0.1, "unit": "ms"}))
    return str(path)


def test_plan_command_writes_outputs(tmp_path, costs4, capsys):
    out = tmp_path / "plan"
    rc = main(["plan", "--schedule", "1F1B", "--stages", "4", "--microbatches", "8",
               "--costs", costs4, "--max-freeze", "0.8", "--out", str(out)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "makespan" in text and "before" in text and "gain" in text and "avg ratio" in text
    assert "solve" in text
    for name in ("plan.json", "dag.dot", "timeline.json", "timeline.svg", "schedule.csv"):
        assert (out / name).stat().st_size > 0, name
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schedule"] == "1F1B" and plan["max_freeze_ratio"] == 0.8
    assert plan["makespan"] < plan["baseline_makespan"]
    assert len(plan["ratios"]) == 4 and len(plan["stage_average"]) == 4
    trace = json.loads((out / "timeline.json").read_text())
    assert any(e["ph"] == "X" for e in trace["traceEvents"])
    if (out / "dag.svg").exists():
        assert (out / "dag.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_plan_command_csv_schedule(tmp_path, capsys):
    csv_path = os.path.join(DATA, "torch_ZBVZeroBubble_p4_v2_m8.csv")
    rc = main(["plan", "--schedule", csv_path, "--max-freeze", "0.5", "--no-render",
               "--costs", GPT8, "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    assert "8 stages" in capsys.readouterr().out
    assert not (tmp_path / "timeline.svg").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--schedule", "Nope", "--stages", "4", "--microbatches", "8"], "unknown schedule"),
        (["--schedule", "ZBV", "--stages", "8", "--microbatches", "2"], "at least 7"),
        (["--schedule", "1F1B", "--stages", "4", "--microbatches", "8", "--max-freeze", "1.2"],
         "max_freeze_ratio must be"),
        (["--schedule", "1F1B", "--stages", "4"], "--microbatches are required"),
        (["--schedule", "1F1B", "--stages", "4", "--microbatches", "8", "--costs", GPT8],
         "8 stages but the schedule has 4"),
    ],
)  # fmt: skip
def test_plan_command_errors(argv, match, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert "tfcompile plan: error:" in err
    assert match in err


def test_parser_has_extensible_subcommands():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    args = parser.parse_args(["plan", "--schedule", "GPipe", "--stages", "2",
                              "--microbatches", "2"])  # fmt: skip
    assert args.command == "plan" and callable(args.func)


def _planned(name="1F1B", p=4, m=8):
    sched = build(name, p, m)
    prof = CostProfile.uniform(p, F=1.0, I=1.0, W=0.8, comm=0.05)
    plan = plan_freeze(sched, prof, max_freeze_ratio=0.7)
    return simulate(sched, prof, plan.ratios), simulate(sched, prof)


def test_trace_events():
    tl, _ = _planned("ZBH1")
    trace = export.timeline_to_trace(tl)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == tl.dag.num_nodes
    assert {e["pid"] for e in xs} == {0, 1, 2, 3}
    w = [e for e in xs if e["cat"] == "W"]
    assert all("ratio" in e["args"] for e in w)
    assert any(e["args"]["ratio"] > 0 for e in w)
    assert max(e["ts"] + e["dur"] for e in xs) == pytest.approx(tl.makespan * 1e3)
    assert any(e.get("args", {}).get("critical") for e in xs)
    json.dumps(trace)


def test_dot_small_and_summarised():
    tl, _ = _planned()
    dot = export.dag_to_dot(tl)
    assert dot.startswith("digraph") and "cluster_rank3" in dot
    assert "#d62728" in dot  # critical path highlighted
    assert "r=" in dot and "slack" in dot
    big_tl, _ = _planned("1F1B", 8, 64)
    big = export.dag_to_dot(big_tl, max_nodes=200)
    assert "too many to draw" in big and "cluster_rank" not in big
    assert big.count("->") < 200


def test_render_and_gantt(tmp_path):
    tl, base = _planned("ZBH1")
    fig = export.gantt(tl, tmp_path / "g.png", baseline=base)
    assert fig is not None and (tmp_path / "g.png").stat().st_size > 1000
    export.gantt(tl, tmp_path / "g.svg")
    assert (tmp_path / "g.svg").read_text().count("<svg") >= 1
    ok = export.render_dot(export.dag_to_dot(tl), tmp_path / "d.svg")
    assert ok == (tmp_path / "d.svg").exists()
