"""Human-readable dumps of schedules, DAGs, timelines and plans.

- :func:`dag_to_dot` - Graphviz DOT of the schedule DAG: one cluster per rank, nodes coloured
  by kind, the critical path in bold red, freeze ratio and slack in the labels. DAGs larger
  than ``max_nodes`` are summarised (critical path plus per-rank counts) instead of drawn.
- :func:`render_dot` - DOT -> SVG/PNG with the ``dot`` executable (skipped when missing).
- :func:`timeline_to_trace` - Chrome / Perfetto trace JSON (``ph: "X"`` events, pid = rank).
- :func:`gantt` - matplotlib Gantt chart (SVG or PNG by file extension), one row per rank,
  coloured by kind, frozen work hatched with its ratio, critical path outlined.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfcompile.schedules.simulate import Timeline

KIND_NAMES = ["F", "B", "I", "W"]
KIND_COLORS = {"F": "#4C78A8", "B": "#E45756", "I": "#F58518", "W": "#54A24B"}
KIND_LONG = {"F": "forward", "B": "full backward", "I": "input grad", "W": "weight grad"}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _fmt_slack(x: float, span: float) -> str:
    """Slack rounded to 0.01 of the unit, with float noise (< 1e-6 of the step) shown as 0."""
    if abs(x) <= 1e-6 * max(span, 1e-12):
        return "0"
    return f"{round(x, 2):g}"


def dag_to_dot(timeline: Timeline, max_nodes: int = 400, title: str | None = None) -> str:
    """DOT text of ``timeline.dag`` annotated with the timeline (ratios, slack, critical path).

    Pass the timeline of a plan (``simulate(schedule, costs, plan.ratios)``) to see the plan.
    """
    dag = timeline.dag
    sched = dag.schedule
    crit = set(timeline.critical_nodes)
    slack = timeline.slack()
    r = timeline.ratios_array
    title = title or (
        f"{sched.name}: {sched.num_stages} stages, {sched.num_microbatches} microbatches, "
        f"makespan {_fmt(timeline.makespan)} {timeline.unit}"
    )
    lines = [
        "digraph schedule {",
        "  rankdir=LR;",
        f'  label="{title}"; labelloc=t; fontname="Helvetica";',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [color="#999999", arrowsize=0.6];',
    ]
    if dag.num_nodes > max_nodes:
        return _dag_summary_dot(timeline, lines, crit)

    def label(v: int) -> str:
        a = dag.actions[v]
        parts = [str(a), f"{_fmt(timeline.durations[v])} {timeline.unit}"]
        if dag.freezable[v]:
            parts.append(f"r={r[v]:.2f}")
        parts.append(f"slack {_fmt_slack(slack[v], timeline.makespan)}")
        return "\\n".join(parts)

    for rank, prog in enumerate(sched.programs):
        lines.append(f"  subgraph cluster_rank{rank} {{")
        # title above the nodes, with room: node labels must not run into it
        lines.append(
            f'    label=<<B>rank {rank}</B>>; labelloc=t; labeljust=l; margin=18; '
            'fontsize=14; color="#cccccc"; style=rounded;'
        )
        base = sum(len(p) for p in sched.programs[:rank])
        for i in range(len(prog)):
            v = base + i
            kind = KIND_NAMES[dag.kind[v]]
            attrs = [f'label="{label(v)}"', f'fillcolor="{KIND_COLORS[kind]}66"']
            if v in crit:
                attrs += ['color="#d62728"', "penwidth=3"]
            if dag.freezable[v] and r[v] > 0:
                attrs.append('style="rounded,filled,dashed"')
            lines.append(f"    n{v} [{', '.join(attrs)}];")
        lines.append("  }")
    crit_edges = set(zip(timeline.critical_nodes[:-1], timeline.critical_nodes[1:]))
    for u, v, kind in dag.edges():
        attrs = []
        if kind == "program":
            attrs.append("style=dotted")
        else:
            attrs.append(f'label="{_fmt(timeline.comm)}"' if timeline.comm else 'label=""')
        if (u, v) in crit_edges:
            attrs += ['color="#d62728"', "penwidth=2.5", "style=solid"]
        lines.append(f"  n{u} -> n{v} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dag_summary_dot(timeline: Timeline, lines: list[str], crit: set[int]) -> str:
    dag = timeline.dag
    sched = dag.schedule
    lines[1] = "  rankdir=TB;"
    lines.append(
        f'  note [shape=note, style=filled, fillcolor="#ffffee", label="{dag.num_nodes} actions: '
        f"too many to draw; showing the critical path ({len(crit)} actions) and per-rank "
        'counts"];'
    )
    # per-rank summary: one HTML table node
    cells = [
        "<TR><TD><B>rank</B></TD><TD><B>stages</B></TD><TD><B>actions</B></TD>"
        "<TD><B>busy</B></TD><TD><B>bubble</B></TD><TD><B>frozen</B></TD></TR>"
    ]
    for rank in range(sched.num_ranks):
        sel = dag.rank == rank
        counts = ", ".join(
            f"{int(np.sum(dag.kind[sel] == k))} {name}"
            for k, name in enumerate(KIND_NAMES)
            if np.any(dag.kind[sel] == k)
        )
        frozen = int(np.sum(sel & dag.freezable & (timeline.ratios_array > 0)))
        stages = ",".join(str(x) for x in sched.stages_of(rank))
        cells.append(
            f"<TR><TD>{rank}</TD><TD>{stages}</TD><TD>{counts}</TD>"
            f"<TD>{_fmt(timeline.busy[rank])}</TD>"
            f"<TD>{100 * timeline.bubble_fraction[rank]:.1f}%</TD><TD>{frozen}</TD></TR>"
        )
    lines.append(
        '  ranks [shape=plaintext, style="", label=<<TABLE BORDER="0" CELLBORDER="1" '
        f'CELLSPACING="0" CELLPADDING="3">{"".join(cells)}</TABLE>>];'
    )
    lines.append("  note -> ranks [style=invis];")
    # the critical path, compressed into runs of consecutive actions on one rank
    path = timeline.critical_nodes
    runs: list[list[int]] = []
    for v in path:
        if runs and dag.rank[runs[-1][-1]] == dag.rank[v]:
            runs[-1].append(v)
        else:
            runs.append([v])
    shown = list(enumerate(runs))
    if len(runs) > 48:  # keep the picture readable: both ends of the path, an ellipsis between
        shown = shown[:24] + [(-1, [])] + shown[-24:]
    prev = None
    for i, run in shown:
        if i < 0:
            lines.append(
                f'  gap [shape=plaintext, label="... {len(runs) - 48} more segments of the '
                'critical path ..."];'
            )
            lines.append(f'  {prev} -> gap [color="#d62728", style=dashed];')
            prev = "gap"
            continue
        first, last = dag.actions[run[0]], dag.actions[run[-1]]
        kinds = {KIND_NAMES[dag.kind[v]] for v in run}
        kind = "F" if kinds == {"F"} else sorted(kinds - {"F"})[0] if kinds - {"F"} else "F"
        dur = float(np.sum(timeline.durations[run]))
        frozen = [
            f"{dag.actions[v]}:{timeline.ratios_array[v]:.2f}"
            for v in run
            if timeline.ratios_array[v] > 0
        ][:4]
        lbl = f"rank {int(dag.rank[run[0]])}: {first}" + (f" .. {last}" if len(run) > 1 else "")
        lbl += f"\\n{len(run)} actions, {_fmt(dur)} {timeline.unit}"
        if frozen:
            lbl += "\\nfrozen " + " ".join(frozen)
        lines.append(
            f'  c{i} [label="{lbl}", fillcolor="{KIND_COLORS[kind]}66", color="#d62728", '
            "penwidth=2];"
        )
        if prev is not None:
            lines.append(f'  {prev} -> c{i} [color="#d62728", penwidth=2];')
        prev = f"c{i}"
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(dot_text: str, path: str | os.PathLike, fmt: str | None = None) -> bool:
    """Render DOT text to ``path`` (format from the extension). False when ``dot`` is missing."""
    exe = shutil.which("dot")
    if exe is None:
        return False
    fmt = fmt or os.path.splitext(os.fspath(path))[1].lstrip(".") or "svg"
    try:
        subprocess.run(
            [exe, f"-T{fmt}", "-o", os.fspath(path)],
            input=dot_text.encode(),
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def timeline_to_trace(timeline: Timeline) -> dict[str, Any]:
    """Chrome / Perfetto trace (load in ui.perfetto.dev or chrome://tracing).

    One ``ph: "X"`` event per action; ``pid`` = rank, ``tid`` = stage; times in microseconds
    (the profile's unit is assumed to be milliseconds unless it says ``s`` or ``us``).
    """
    dag = timeline.dag
    scale = {"s": 1e6, "ms": 1e3, "us": 1.0}.get(timeline.unit, 1e3)
    events: list[dict[str, Any]] = []
    for rank in range(dag.schedule.num_ranks):
        events.append(
            {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}
        )
        events.append(
            {"name": "process_sort_index", "ph": "M", "pid": rank, "args": {"sort_index": rank}}
        )
        for s in dag.schedule.stages_of(rank):
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": rank,
                    "tid": s,
                    "args": {"name": f"stage {s}"},
                }
            )
    crit = set(timeline.critical_nodes)
    st = timeline.start_times.tolist()
    du = timeline.durations.tolist()
    rr = timeline.ratios_array.tolist()
    for v, a in enumerate(dag.actions):
        args: dict[str, Any] = {
            "stage": a.stage,
            "microbatch": a.microbatch,
            "kind": KIND_LONG[a.kind],
        }
        if dag.freezable[v]:
            args["ratio"] = rr[v]
        if v in crit:
            args["critical"] = True
        events.append({
            "name": str(a), "cat": a.kind, "ph": "X", "ts": st[v] * scale, "dur": du[v] * scale,
            "pid": int(dag.rank[v]), "tid": a.stage, "args": args,
        })  # fmt: skip
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "schedule": dag.schedule.name,
            "makespan": timeline.makespan,
            "unit": timeline.unit,
            "bubble_fraction": timeline.bubble_fraction,
        },
    }


def write_trace(timeline: Timeline, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(timeline_to_trace(timeline), f)


def measured_trace(
    parts: Sequence[Any],
    *,
    num_ranks: int,
    frozen_counts: Mapping[tuple[int, int], int] | None = None,
    predicted: Timeline | None = None,
    other_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Chrome / Perfetto trace of one measured step, optionally beside a predicted one.

    ``parts`` are the runtime's timed parts (anything with ``rank``, ``stage``, ``part``,
    ``microbatch``, ``start`` and ``seconds``, in seconds on a shared clock); they become
    processes "measured rank r" with times from the earliest start. ``predicted`` (a
    simulated :class:`Timeline` in ms) adds processes "predicted rank r" after them, so that
    the viewer shows measurement and prediction side by side. ``frozen_counts[(stage, mb)]``
    is the number of frozen groups shown on each measured part.
    """
    frozen_counts = frozen_counts or {}
    origin = min(p.start for p in parts)
    events: list[dict[str, Any]] = [
        _process_name(rank, f"measured rank {rank}") for rank in range(num_ranks)
    ]
    for p in parts:
        events.append({
            "name": f"{p.stage}{p.part}{p.microbatch}", "ph": "X", "pid": p.rank, "tid": p.stage,
            "ts": 1e6 * (p.start - origin), "dur": 1e6 * p.seconds, "cat": p.part,
            "args": {
                "stage": p.stage,
                "microbatch": p.microbatch,
                "frozen_groups": frozen_counts.get((p.stage, p.microbatch), 0),
            },
        })  # fmt: skip
    if predicted is not None:
        stage_to_rank = predicted.dag.schedule.stage_to_rank
        events += [_process_name(num_ranks + r, f"predicted rank {r}") for r in range(num_ranks)]
        end = predicted.end
        for action, start in predicted.start.items():
            events.append({
                "name": str(action), "ph": "X", "pid": num_ranks + stage_to_rank[action.stage],
                "tid": action.stage, "ts": 1e3 * start, "dur": 1e3 * (end[action] - start),
                "cat": action.kind,
            })  # fmt: skip
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": dict(other_data or {})}


def _process_name(pid: int, name: str) -> dict[str, Any]:
    return {"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}}


def gantt(
    timeline: Timeline,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    baseline: Timeline | None = None,
    label_limit: int = 600,
    costs: Any = None,
):
    """Gantt chart of a timeline; saved to ``path`` (SVG/PNG by extension) if given.

    Frozen work is drawn hatched with its ratio; the critical path is outlined in black; with
    ``baseline`` (the unfrozen timeline) a thin grey row under each rank shows the original.
    With ``costs`` (the profile the timeline was simulated with) the step is drawn as the
    runtime executes it: a full backward B as its input-gradient part I followed by its
    weight-gradient part W (hatched when partly frozen), and a freezable action whose W is
    fully frozen (zero length) keeps a visible marker. Returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dag = timeline.dag
    nr = dag.schedule.num_ranks
    fig_w = min(28.0, max(10.0, 0.03 * len(dag.actions) / max(1, nr) + 8))
    fig, ax = plt.subplots(figsize=(fig_w, 1.0 + 0.55 * nr * (1.35 if baseline else 1)))
    row_h = 0.8
    st, du, rr = timeline.start_times, timeline.durations, timeline.ratios_array
    crit = np.zeros(dag.num_nodes, dtype=bool)
    crit[timeline.critical_nodes] = True
    frozen = dag.freezable & (rr > 0)
    y_of = (nr - 1 - dag.rank) * (1.35 if baseline else 1.0)
    raster = dag.num_nodes > 3000  # keep SVGs of large schedules small: bars as one image
    executed = costs is not None
    if executed:
        _draw_executed(ax, timeline, costs, y_of, row_h, raster)
    for k, name in enumerate(KIND_NAMES):
        if executed and name in ("B", "W"):  # drawn by _draw_executed (baseline row below)
            for rank in range(nr):
                sel = (dag.kind == k) & (dag.rank == rank)
                if baseline is not None and sel.any():
                    y = float(y_of[np.flatnonzero(sel)[0]])
                    ax.broken_barh(
                        list(zip(baseline.start_times[sel], baseline.durations[sel])),
                        (y - row_h / 2 - 0.42, 0.25), facecolors=KIND_COLORS[name], alpha=0.45,
                        rasterized=raster,
                    )  # fmt: skip
            continue
        for rank in range(nr):
            sel = (dag.kind == k) & (dag.rank == rank)
            if not sel.any():
                continue
            y = float(y_of[np.flatnonzero(sel)[0]])
            plain = sel & ~frozen
            ax.broken_barh(
                list(zip(st[plain], du[plain])), (y - row_h / 2, row_h),
                facecolors=KIND_COLORS[name], edgecolors="white", linewidth=0.3,
                rasterized=raster,
            )  # fmt: skip
            fz = sel & frozen
            if fz.any():
                ax.broken_barh(
                    list(zip(st[fz], du[fz])), (y - row_h / 2, row_h),
                    facecolors=KIND_COLORS[name], edgecolors="black", linewidth=0.4,
                    hatch="////", alpha=0.75, rasterized=raster,
                )  # fmt: skip
            if baseline is not None:
                ax.broken_barh(
                    list(zip(baseline.start_times[sel], baseline.durations[sel])),
                    (y - row_h / 2 - 0.42, 0.25), facecolors=KIND_COLORS[name], alpha=0.45,
                    rasterized=raster,
                )  # fmt: skip
    # critical path outline
    for v in np.flatnonzero(crit).tolist():
        ax.add_patch(
            matplotlib.patches.Rectangle(
                (st[v], y_of[v] - row_h / 2),
                du[v],
                row_h,
                fill=False,
                edgecolor="black",
                linewidth=1.4,
            )  # fmt: skip
        )
    if dag.num_nodes <= label_limit:
        span = timeline.makespan or 1.0
        for v, a in enumerate(dag.actions):
            if du[v] / span > 0.012:
                txt = str(a) if not frozen[v] else f"{a}\nr={rr[v]:.2f}"
                if executed and a.kind == "B":
                    txt = f"B{a.stage},{a.microbatch}" + (f"\nr={rr[v]:.2f}" if frozen[v] else "")
                ax.text(
                    st[v] + du[v] / 2,
                    y_of[v],
                    txt,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if not frozen[v] else "black",
                )
    ax.set_yticks([float((nr - 1 - r) * (1.35 if baseline else 1.0)) for r in range(nr)])
    ax.set_yticklabels([f"rank {r}" for r in range(nr)])
    ax.set_xlabel(f"time ({timeline.unit})")
    ax.set_xlim(0, max(timeline.makespan, baseline.makespan if baseline else 0) * 1.01 or 1)
    shown = {n for n in KIND_NAMES if np.any(dag.kind == KIND_NAMES.index(n))}
    if executed and "B" in shown:
        shown = (shown - {"B"}) | {"I", "W"}
    handles = [
        Patch(facecolor=KIND_COLORS[n], label=KIND_LONG[n]) for n in KIND_NAMES if n in shown
    ]
    if executed and np.any(dag.freezable & (rr >= 1.0 - 1e-9)):
        from matplotlib.lines import Line2D

        handles.append(
            Line2D([], [], color="black", marker="v", linestyle="", label="W fully frozen")
        )
    if frozen.any():
        handles.append(
            Patch(
                facecolor="#bbbbbb", hatch="////", edgecolor="black", label="partly frozen (ratio)"
            )
        )
    handles.append(Patch(fill=False, edgecolor="black", linewidth=1.4, label="critical path"))
    if baseline is not None:
        handles.append(Patch(facecolor="#999999", alpha=0.45, label="unfrozen (baseline)"))
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.3),  # below the x-axis label
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    sched = dag.schedule
    ax.set_title(title or (
        f"{sched.name}: {sched.num_stages} stages x {sched.num_microbatches} microbatches, "
        f"makespan {_fmt(timeline.makespan)} {timeline.unit}, "
        f"mean bubble {100 * timeline.bubble:.1f}%"
    ))  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return fig


def executed_parts(timeline: Timeline, costs: Any) -> list[tuple[int, str, float, float]]:
    """The timeline's freezable work as executed: ``(node, kind, start, duration)`` with a
    full backward B split into I (input grads, w_min) then W ((1 - r) of the weight grads);
    a W of zero length (fully frozen) is kept, with duration 0, so it can be marked."""
    dag = timeline.dag
    base, wpart, _ = dag.bind(costs)
    st, rr = timeline.start_times, timeline.ratios_array
    parts: list[tuple[int, str, float, float]] = []
    for v in np.flatnonzero((dag.kind == 1) | (dag.kind == 3)).tolist():
        w = float(wpart[v]) * (1.0 - float(rr[v])) if dag.freezable[v] else float(base[v])
        if dag.kind[v] == 1:  # B = I then W
            i = float(base[v] - wpart[v])
            parts.append((v, "I", float(st[v]), i))
            parts.append((v, "W", float(st[v]) + i, w))
        else:
            parts.append((v, "W", float(st[v]), w))
    return parts


def _draw_executed(ax, timeline: Timeline, costs: Any, y_of, row_h: float, raster: bool) -> None:
    """B as I then W, W hatched when partly frozen, a marker where W is fully frozen."""
    dag = timeline.dag
    rr = timeline.ratios_array
    for v, kind, start, dur in executed_parts(timeline, costs):
        y = float(y_of[v])
        partly = kind == "W" and dag.freezable[v] and rr[v] > 0
        if dur > 0:
            ax.broken_barh(
                [(start, dur)], (y - row_h / 2, row_h), facecolors=KIND_COLORS[kind],
                edgecolors="black" if partly else "white", linewidth=0.4 if partly else 0.3,
                hatch="////" if partly else None, alpha=0.75 if partly else 1.0,
                rasterized=raster,
            )  # fmt: skip
        elif kind == "W":  # fully frozen: no work, but the reader must see it was skipped
            ax.plot([start], [y + row_h / 2], marker="v", color="black", markersize=4)

