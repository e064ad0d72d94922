"""StepLog: CSV rows, TensorBoard fallback, and the two plots."""

import csv
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tfcompile.train.steplog import StepLog, plot_logs, read_log


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_hold_loss_throughput_phase_and_ratios(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "run" / "steps.csv"
    with StepLog(path, items_per_step=64, clock=clock) as steplog:
        for step in range(3):
            clock.now += 0.5
            steplog.record(
                step,
                step_seconds=0.25,
                loss=None if step == 1 else 2.0 - step,
                phase="warmup" if step < 2 else "ramp",
                ratios={1: 0.1 * step, 0: 0.0},
            )
    with path.open() as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["ratio_stage0", "ratio_stage1"]
    rows = read_log(path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert [r["wall_seconds"] for r in rows] == pytest.approx([0.5, 1.0, 1.5])
    assert [r["loss"] for r in rows] == [2.0, None, 0.0]
    assert rows[0]["throughput"] == pytest.approx(64 / 0.25)
    assert rows[2]["phase"] == "ramp"
    assert rows[2]["ratio_stage1"] == pytest.approx(0.2)
    assert rows[2]["mean_ratio"] == pytest.approx(0.1)


def test_record_from_a_freezer(tmp_path: Path) -> None:
    freezer = SimpleNamespace(
        last_step_time=0.5, last_loss=1.5, phase="steady", actual_ratios={2: 0.4, 3: 0.2}
    )
    with StepLog(tmp_path / "s.csv") as steplog:
        row = steplog.record_freezer(freezer, step=7)
    assert row["throughput"] == pytest.approx(2.0)  # steps per second without items
    assert read_log(tmp_path / "s.csv")[0]["ratio_stage3"] == pytest.approx(0.2)


def test_missing_tensorboard_falls_back_to_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="tfcompile.freeze"):
        steplog = StepLog(tmp_path / "s.csv", tensorboard_dir=tmp_path / "tb")
    assert "tensorboard" in caplog.text
    steplog.record(0, step_seconds=1.0, loss=1.0, phase="off", ratios={0: 0.0})
    steplog.close()
    assert len(read_log(tmp_path / "s.csv")) == 1


def test_tensorboard_receives_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            self.log_dir = log_dir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def close(self) -> None:
            pass

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=Writer)
    )
    with StepLog(tmp_path / "s.csv", tensorboard_dir=tmp_path / "tb") as steplog:
        steplog.record(3, step_seconds=0.5, loss=1.25, phase="steady", ratios={0: 0.5})
    assert ("loss", 1.25, 3) in written
    assert ("freeze_ratio/stage0", 0.5, 3) in written


def test_plots_are_written(tmp_path: Path) -> None:
    clock = FakeClock()
    logs = []
    for name, ratio in (("timely", 0.4), ("none", 0.0)):
        path = tmp_path / f"{name}.csv"
        with StepLog(path, clock=clock) as steplog:
            for step in range(5):
                clock.now += 1.0
                steplog.record(
                    step, step_seconds=1.0, loss=1.0 / (1 + step), phase="x", ratios={0: ratio}
                )
            single = steplog.plot()
        logs.append(path)
    assert [p.name for p in single] == ["none_loss_vs_time.png", "none_ratio_vs_step.png"]
    both = plot_logs(logs, tmp_path / "plots", labels=["timely", "none"])
    for png in [*single, *both]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_gets_loss_throughput_and_every_stage_ratio(tmp_path: Path) -> None:
    """With tensorboard installed (a dev dependency), each rank's folder holds its scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for rank, stages, losses in ((0, {0: 0.25, 1: 0.5}, None), (1, {2: 0.75}, 1.5)):
        folder = tmp_path / "tb" / f"rank{rank}"
        with StepLog(tmp_path / f"steps_rank{rank}.csv", tensorboard_dir=folder) as steplog:
            for step in range(3):
                steplog.record(step, step_seconds=0.5, loss=losses, phase="steady", ratios=stages)
        events = EventAccumulator(str(folder))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {f"freeze_ratio/stage{s}" for s in stages} <= tags
        assert ("loss" in tags) == (losses is not None)  # only the loss rank logs the loss
        ratio = events.Scalars(f"freeze_ratio/stage{max(stages)}")
        assert [e.step for e in ratio] == [0, 1, 2]
        assert ratio[-1].value == pytest.approx(stages[max(stages)])
        assert events.Scalars("step_seconds")[0].value == pytest.approx(0.5)
