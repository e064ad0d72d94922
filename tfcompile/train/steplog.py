"""`StepLog`: one row per training step (CSV, optional TensorBoard) and the two plots that
judge a freezing run: loss against wall-clock time (time-to-accuracy is the paper's claim)
and the actual freeze ratio per stage against the step (what the controller really did).

Each rank may keep its own log: the loss is known on the last stage's rank only (the cell is
left empty elsewhere) and the ratios of the stages a rank holds. Rows are flushed as written,
so a crashed run keeps its log. Plots use matplotlib's object API (no global backend change).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("tfcompile.freeze")

BASE_FIELDS = (
    "step",
    "wall_seconds",
    "step_seconds",
    "loss",
    "throughput",
    "phase",
    "mean_ratio",
)
RATIO_PREFIX = "ratio_stage"
FIGURE_SIZE = (6.4, 4.0)
FIGURE_DPI = 120


class StepLog:
    """Append-only per-step log; :meth:`plot` draws it.

    ``throughput`` is ``items / step_seconds`` where ``items`` is what one step consumes
    (samples or tokens, ``items_per_step``), or steps per second when it is not given.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        stages: Sequence[int] | None = None,
        items_per_step: float | None = None,
        tensorboard_dir: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.items_per_step = items_per_step
        self._clock = clock
        self._start = clock()
        self._stages = None if stages is None else sorted(int(s) for s in stages)
        self._file = self.path.open("w", newline="")
        self._writer: csv.DictWriter | None = None
        self._tb = _tensorboard_writer(tensorboard_dir)

    @property
    def fields(self) -> list[str]:
        """CSV columns (known once the stages are: at construction or the first record)."""
        stages = self._stages or []
        return [*BASE_FIELDS, *(f"{RATIO_PREFIX}{s}" for s in stages)]

    def record(
        self,
        step: int,
        *,
        step_seconds: float,
        loss: float | None,
        phase: str,
        ratios: Mapping[int, float],
        items: float | None = None,
    ) -> dict[str, Any]:
        """Write one row; returns it."""
        if self._stages is None:
            self._stages = sorted(int(s) for s in ratios)
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=self.fields)
            self._writer.writeheader()
        items = self.items_per_step if items is None else items
        per_step = 1.0 if items is None else float(items)
        throughput = per_step / step_seconds if step_seconds > 0 else math.nan
        values = [float(ratios.get(s, 0.0)) for s in self._stages]
        row: dict[str, Any] = {
            "step": int(step),
            "wall_seconds": self._clock() - self._start,
            "step_seconds": float(step_seconds),
            "loss": "" if loss is None else float(loss),
            "throughput": throughput,
            "phase": phase,
            "mean_ratio": sum(values) / len(values) if values else 0.0,
        }
        row.update({f"{RATIO_PREFIX}{s}": v for s, v in zip(self._stages, values)})
        self._writer.writerow(row)
        self._file.flush()
        if self._tb is not None:
            self._write_tensorboard(row)
        return row

    def record_freezer(self, freezer: Any, step: int, items: float | None = None) -> dict:
        """Write the row of the step a `Freezer` just finished (after ``after_step``)."""
        return self.record(
            step,
            step_seconds=freezer.last_step_time or 0.0,
            loss=freezer.last_loss,
            phase=freezer.phase,
            ratios=freezer.actual_ratios,
            items=items,
        )

    def _write_tensorboard(self, row: Mapping[str, Any]) -> None:
        assert self._tb is not None
        step = row["step"]
        if row["loss"] != "":
            self._tb.add_scalar("loss", row["loss"], step)
        self._tb.add_scalar("throughput", row["throughput"], step)
        self._tb.add_scalar("step_seconds", row["step_seconds"], step)
        for s in self._stages or []:
            self._tb.add_scalar(f"freeze_ratio/stage{s}", row[f"{RATIO_PREFIX}{s}"], step)

    def flush(self) -> None:
        """Write buffered rows to the CSV."""
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the CSV (and TensorBoard writer)."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> StepLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plot(self, out_dir: str | os.PathLike | None = None) -> list[Path]:
        """Loss vs wall-clock and ratio vs step PNGs next to the CSV (or in ``out_dir``)."""
        self._file.flush()
        return plot_logs([self.path], out_dir or self.path.parent, prefix=self.path.stem)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a StepLog CSV with numbers parsed (an empty loss is None)."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key == "phase":
                    row[key] = value
                elif key == "step":
                    row[key] = int(value)
                else:
                    row[key] = None if value == "" else float(value)
            rows.append(row)
    return rows


def merge_rows(per_rank: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One run's rows from its ranks' logs: per step, every stage's ratio column (each rank
    logs its own stages), the loss from the rank that has it (the last stage's), the step
    time and wall clock as the slowest rank saw them; phase from the first rank."""
    merged: dict[int, dict[str, Any]] = {}
    for rows in per_rank:
        for row in rows:
            step = int(row["step"])
            into = merged.setdefault(step, {"step": step, "phase": row.get("phase"), "loss": None})
            for key, value in row.items():
                if key.startswith(RATIO_PREFIX):
                    into[key] = value
                elif key == "loss" and value is not None:
                    into["loss"] = value
                elif key in ("wall_seconds", "step_seconds") and value is not None:
                    into[key] = max(value, into.get(key) or value)
                elif key == "throughput" and value is not None:
                    into[key] = min(value, into.get(key) or value)
    rows = [merged[k] for k in sorted(merged)]
    for row in rows:
        ratios = [v for k, v in row.items() if k.startswith(RATIO_PREFIX) and v is not None]
        row["mean_ratio"] = sum(ratios) / len(ratios) if ratios else 0.0
    return rows


def merge_rank_logs(
    gather: Callable[[Any], list[Any]], path: str | os.PathLike
) -> list[dict[str, Any]]:
    """Every rank's rows of its log at ``path`` merged (:func:`merge_rows`) on every rank.

    ``gather`` is a collective returning each rank's value (``Pipeline.all_gather_object``),
    so the ranks need not share a file system.
    """
    return merge_rows(gather(read_log(path)))


def plot_rows(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *, prefix: str = "freeze"
) -> list[Path]:
    """Plot one run given as rows (e.g. :func:`merge_rank_logs`): every stage's ratio, the
    loss wherever a row has one."""
    return _plot_runs([list(rows)], ["run"], out_dir, prefix)


def plot_logs(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    prefix: str = "freeze",
) -> list[Path]:
    """Plot one or more runs: ``<prefix>_loss_vs_time.png`` and ``<prefix>_ratio_vs_step.png``.

    Several runs on one loss plot compare time-to-loss (e.g. timely against no freezing).
    """
    names = list(labels) if labels is not None else [Path(p).stem for p in paths]
    return _plot_runs([read_log(p) for p in paths], names, out_dir, prefix)


def _plot_runs(
    runs: Sequence[Sequence[Mapping[str, Any]]],
    names: Sequence[str],
    out_dir: str | os.PathLike,
    prefix: str,
) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    loss_fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    FigureCanvasAgg(loss_fig)
    ax = loss_fig.add_subplot()
    for name, rows in zip(names, runs):
        points = [(r["wall_seconds"], r["loss"]) for r in rows if r["loss"] is not None]
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel("training loss")
    ax.set_title("loss against wall-clock time")
    if any(ax.get_lines()):
        ax.legend()
    loss_path = out / f"{prefix}_loss_vs_time.png"
    loss_fig.savefig(loss_path)

    ratio_fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    FigureCanvasAgg(ratio_fig)
    ax = ratio_fig.add_subplot()
    for name, rows in zip(names, runs):
        columns = sorted(
            {k for row in rows for k in row if k.startswith(RATIO_PREFIX)},
            key=lambda k: int(k[len(RATIO_PREFIX) :]),
        )
        for column in columns:
            stage = column[len(RATIO_PREFIX) :]
            label = f"stage {stage}" if len(runs) == 1 else f"{name} stage {stage}"
            points = [(r["step"], r[column]) for r in rows if r.get(column) is not None]
            ax.plot(*zip(*points), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("actual freeze ratio")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("freeze ratio per stage against step")
    if any(ax.get_lines()):
        ax.legend()
    ratio_path = out / f"{prefix}_ratio_vs_step.png"
    ratio_fig.savefig(ratio_path)
    return [loss_path, ratio_path]


def _tensorboard_writer(directory: str | os.PathLike | None) -> Any:
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("freeze: tensorboard is not installed; logging to CSV only")
        return None
    return SummaryWriter(log_dir=str(directory))
