"""``tfcompile`` command line.

Subcommands register themselves through :data:`SUBCOMMANDS`: a function that receives the
argparse sub-parsers object, adds its parser and sets ``func`` (``args -> exit code``). To add
``dump`` or ``bench``, write ``_register_dump(sub)`` and append it to ``SUBCOMMANDS``.

``tfcompile plan --schedule 1F1B --stages 4 --microbatches 8 --costs costs.json
--max-freeze 0.8 --out plan/`` prints a summary and writes plan.json, schedule.csv, dag.dot
(+ dag.svg), timeline.json (Perfetto trace) and timeline.svg (Gantt chart).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tfcompile.errors import TFCompileError
from tfcompile.planner.problem import DEFAULT_MAX_FREEZE_RATIO


def _register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan per-(stage, microbatch) freeze ratios for a pipeline schedule",
        description="Build the schedule's DAG, solve the freeze LP with HiGHS, print a summary "
        "and write plan.json, schedule.csv, dag.dot/.svg, timeline.json and timeline.svg.",
    )
    p.add_argument(
        "--schedule",
        required=True,
        help="GPipe, 1F1B, Interleaved1F1B, ZBH1, ZBV, or a CSV file in "
        "torch.distributed.pipelining's format",
    )
    p.add_argument("--stages", type=int, help="number of pipeline stages (not for CSV input)")
    p.add_argument("--microbatches", type=int, help="microbatches per step (not for CSV input)")
    p.add_argument("--ranks", type=int, default=None, help="ranks (Interleaved1F1B)")
    p.add_argument(
        "--costs",
        help='cost profile JSON: {"stages": [{"F":..,"I":..,"W":..}, ...], "comm": ..}; '
        "default: every stage F=I=W=1, comm=0",
    )
    p.add_argument(
        "--max-freeze",
        type=float,
        default=DEFAULT_MAX_FREEZE_RATIO,
        help="cap on each stage's average ratio",
    )
    p.add_argument("--budget", type=float, default=None, help="cap on the frozen share of W")
    p.add_argument("--out", default=None, help="output folder (created); nothing written if unset")
    p.add_argument("--no-render", action="store_true", help="skip dag.svg and timeline.svg")
    p.set_defaults(func=_cmd_plan)


def _load_schedule(args: argparse.Namespace):
    """The schedule of ``--schedule`` through ``schedules.resolve``, the one owner of names,
    aliases and CSV paths; only the flag checks are the CLI's own."""
    from tfcompile.schedules import is_csv_source, resolve

    if is_csv_source(args.schedule):
        if args.stages is not None or args.microbatches is not None:
            print("note: --stages/--microbatches are ignored for a CSV schedule", file=sys.stderr)
    elif args.stages is None or args.microbatches is None:
        raise TFCompileError("--stages and --microbatches are required for a named schedule")
    return resolve(
        args.schedule, stages=args.stages, microbatches=args.microbatches, ranks=args.ranks
    )


def _check_out_dir(out: str) -> None:
    """``--out`` must be a folder that exists or can be created, and be writable."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise TFCompileError(f"--out {out!r} exists and is not a folder: name a folder")
    parent = out
    while not os.path.exists(parent):  # the nearest existing ancestor is created from
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(parent):
        raise TFCompileError(f"--out {out!r}: {parent!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TFCompileError(f"--out {out!r}: {parent!r} is not writable")


def _cmd_plan(args: argparse.Namespace) -> int:
    from tfcompile.planner import plan_freeze
    from tfcompile.schedules.profile import CostProfile
    from tfcompile.schedules.simulate import simulate

    if args.out is not None:
        _check_out_dir(args.out)  # before solving: a bad --out fails at once, not after it
    sched = _load_schedule(args)
    costs = CostProfile.load(args.costs) if args.costs else CostProfile.uniform(sched.num_stages)
    plan = plan_freeze(sched, costs, max_freeze_ratio=args.max_freeze, budget=args.budget)
    print(plan.summary())
    if args.out is None:
        return 0
    from tfcompile.schedules import export

    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    plan.save(out("plan.json"))
    sched.to_csv(out("schedule.csv"))
    timeline = simulate(sched, costs, plan.ratios)
    baseline = simulate(sched, costs)
    dot = export.dag_to_dot(timeline)
    with open(out("dag.dot"), "w") as f:
        f.write(dot)
    export.write_trace(timeline, out("timeline.json"))
    written = ["plan.json", "schedule.csv", "dag.dot", "timeline.json"]
    if not args.no_render:
        if export.render_dot(dot, out("dag.svg")):
            written.append("dag.svg")
        else:
            print("note: graphviz 'dot' not found; dag.svg not rendered", file=sys.stderr)
        export.gantt(timeline, out("timeline.svg"), baseline=baseline)
        written.append("timeline.svg")
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_register_plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfcompile", description="TimelyFreeze as a compiler: plan and run frozen pipelines."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TFCompileError as exc:
        print(f"tfcompile {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
