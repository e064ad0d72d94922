"""Per-rank step logs merged into one run: every stage's ratio, the loss of the last stage."""

from __future__ import annotations

import pytest

from tfcompile.train.steplog import StepLog, merge_rank_logs, merge_rows, plot_rows, read_log


def _rank_log(path, stages, with_loss):
    with StepLog(path, items_per_step=100) as log:
        for step in range(4):
            log.record(
                step,
                step_seconds=0.1 * (1 + step) * (2 if with_loss else 1),
                loss=(3.0 - step) if with_loss else None,
                phase="ramp",
                ratios={s: 0.1 * s + 0.01 * step for s in stages},
            )
    return read_log(path)


def test_merge_takes_every_stage_and_the_last_stages_loss(tmp_path) -> None:
    rank0 = _rank_log(tmp_path / "steps_rank0.csv", [0, 3], with_loss=False)  # ZBV-style V
    rank1 = _rank_log(tmp_path / "steps_rank1.csv", [1, 2], with_loss=True)
    rows = merge_rows([rank0, rank1])
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for step, row in enumerate(rows):
        for s in range(4):
            assert row[f"ratio_stage{s}"] == pytest.approx(0.1 * s + 0.01 * step)
        assert row["loss"] == pytest.approx(3.0 - step)
        assert row["step_seconds"] == pytest.approx(0.2 * (1 + step))  # the slowest rank
        assert row["mean_ratio"] == pytest.approx(0.15 + 0.01 * step)
    # the collective: each rank contributes its own log
    gathered = merge_rank_logs(lambda local: [rank0, local], tmp_path / "steps_rank1.csv")
    assert gathered == rows


def test_plot_rows_draws_all_stages(tmp_path) -> None:
    rank0 = _rank_log(tmp_path / "a.csv", [0], with_loss=False)
    rank1 = _rank_log(tmp_path / "b.csv", [1], with_loss=True)
    loss_png, ratio_png = plot_rows(merge_rows([rank0, rank1]), tmp_path / "plots", prefix="steps")
    assert loss_png.name == "steps_loss_vs_time.png" and loss_png.stat().st_size > 0
    assert ratio_png.name == "steps_ratio_vs_step.png" and ratio_png.stat().st_size > 0
