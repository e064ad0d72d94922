"""Schedule IR: actions, per-rank programs, validation and the torch CSV format.

An :class:`Action` is one unit of pipeline work: the forward (``F``), full backward (``B``),
input-gradient (``I``) or weight-gradient (``W``) pass of one stage on one microbatch. A
:class:`Schedule` holds one ordered program of actions per rank and the stage -> rank map.

String and CSV forms follow ``torch.distributed.pipelining``: ``2F0`` is stage 2, forward,
microbatch 0; a CSV file holds one row per rank with one action per cell (empty cells are idle
slots and are skipped; torch's ``(0F7;7B3)OVERLAP_F_B`` cells are expanded into their parts).
"""

from __future__ import annotations

import bisect
import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from tfcompile.errors import ScheduleError

KINDS = ("F", "B", "I", "W")
_ACTION_RE = re.compile(r"^\s*(\d+)\s*([FBIW])\s*(\d+)\s*$")
_OVERLAP_RE = re.compile(r"^\s*\((.*)\)\s*OVERLAP_F_B\s*$")


class Action(NamedTuple):
    """One pipeline action: ``Action(stage, kind, microbatch)``; ``str(a) == "2F0"``."""

    stage: int
    kind: str
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.microbatch}"

    def __repr__(self) -> str:
        return f"Action({self.stage}, {self.kind!r}, {self.microbatch})"

    @classmethod
    def parse(cls, text: str) -> Action:
        """Parse ``"2F0"`` (torch's ``_Action`` string form, compute actions only)."""
        match = _ACTION_RE.match(text)
        if match is None:
            raise ScheduleError(
                f"cannot parse action {text!r}: expected <stage><kind><microbatch> with kind in "
                "F, B, I, W (e.g. '2F0', '1I3', '0W1', '2B0')"
            )
        return cls(int(match.group(1)), match.group(2), int(match.group(3)))

    @property
    def freezable(self) -> bool:
        """True for actions that carry weight-gradient work (B and W)."""
        return self.kind in ("B", "W")


class Schedule:
    """Per-rank action programs of one pipeline training step.

    ``programs[rank]`` is the execution order of that rank; ``stage_to_rank[stage]`` the rank
    holding a stage. Construction validates the schedule (every action exactly once, each stage
    on one rank, dependencies satisfiable, no deadlock) and raises :class:`ScheduleError` naming
    the first offending action.
    """

    def __init__(
        self,
        programs: Sequence[Sequence[Action]],
        stage_to_rank: Sequence[int] | None = None,
        *,
        name: str = "custom",
        num_stages: int | None = None,
        num_microbatches: int | None = None,
        validate: bool = True,
    ) -> None:
        self.programs: list[list[Action]] = [
            [a if isinstance(a, Action) else Action(*a) for a in prog] for prog in programs
        ]
        self.name = name
        if not self.programs or not any(self.programs):
            raise ScheduleError("a schedule needs at least one rank with at least one action")
        all_actions = [a for prog in self.programs for a in prog]
        for a in all_actions:
            if a.kind not in KINDS or a.stage < 0 or a.microbatch < 0:
                raise ScheduleError(f"invalid action {a!r}: kind must be one of {KINDS}")
        inferred_stages = max(a.stage for a in all_actions) + 1
        inferred_mbs = max(a.microbatch for a in all_actions) + 1
        self.num_stages = int(num_stages if num_stages is not None else inferred_stages)
        self.num_microbatches = int(
            num_microbatches if num_microbatches is not None else inferred_mbs
        )
        if stage_to_rank is None:
            stage_to_rank = _infer_stage_to_rank(self.programs, self.num_stages)
        self.stage_to_rank: list[int] = [int(r) for r in stage_to_rank]
        if validate:
            validate_schedule(self)

    # -- queries ---------------------------------------------------------------------------
    @property
    def num_ranks(self) -> int:
        return len(self.programs)

    @property
    def split_backward(self) -> bool:
        """True when the backward is split into I (input grad) and W (weight grad)."""
        return any(a.kind in ("I", "W") for prog in self.programs for a in prog)

    def with_split_backward(self) -> Schedule:
        """The same schedule with every full backward B(s, m) written as I(s, m) then W(s, m).

        This is how tfcompile's runtime executes a B: it sends the input gradient upstream as
        soon as it exists and computes the weight gradient afterwards, so the previous stage
        waits for the I part only. Planning and predicting on this form matches the runtime;
        the freeze ratio of W(s, m) is the ratio of B(s, m) (same (stage, microbatch) key).
        """
        if not any(a.kind == "B" for a in self.actions()):
            return self
        programs = []
        for prog in self.programs:
            out: list[Action] = []
            for a in prog:
                if a.kind == "B":
                    out += [Action(a.stage, "I", a.microbatch), Action(a.stage, "W", a.microbatch)]
                else:
                    out.append(a)
            programs.append(out)
        return Schedule(
            programs,
            self.stage_to_rank,
            name=self.name,
            num_stages=self.num_stages,
            num_microbatches=self.num_microbatches,
            validate=False,
        )

    def stages_of(self, rank: int) -> list[int]:
        """Stages held by ``rank``, in increasing order."""
        return [s for s, r in enumerate(self.stage_to_rank) if r == rank]

    def actions(self) -> Iterable[Action]:
        """All actions, rank by rank, in program order."""
        for prog in self.programs:
            yield from prog

    def __len__(self) -> int:
        return sum(len(p) for p in self.programs)

    def __repr__(self) -> str:
        return (
            f"Schedule({self.name!r}, stages={self.num_stages}, "
            f"microbatches={self.num_microbatches}, ranks={self.num_ranks})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.programs == other.programs and self.stage_to_rank == other.stage_to_rank

    def format(self) -> str:
        """Readable one-line-per-rank listing."""
        return "\n".join(
            f"rank {r}: " + " ".join(str(a) for a in prog) for r, prog in enumerate(self.programs)
        )

    # -- CSV -------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Write torch.distributed.pipelining's CSV (one row per rank); return the text."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for prog in self.programs:
            writer.writerow([str(a) for a in prog])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    @classmethod
    def from_csv(
        cls,
        path_or_text: str | os.PathLike,
        *,
        name: str | None = None,
        stage_to_rank: Sequence[int] | None = None,
    ) -> Schedule:
        """Read a schedule from a CSV file or CSV text in torch's format.

        Empty cells (idle slots in torch's dumps) are skipped. The stage -> rank map is
        inferred from where each stage's actions appear unless given.
        """
        text, label = _read_text(path_or_text)
        programs: list[list[Action]] = []
        for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            prog: list[Action] = []
            for col, cell in enumerate(row, start=1):
                for part in _expand_cell(cell):
                    try:
                        prog.append(Action.parse(part))
                    except ScheduleError as exc:
                        raise ScheduleError(
                            f"{label}: row {lineno} (rank {lineno - 1}), column {col}: {exc}"
                        ) from None
            programs.append(prog)
        while programs and not programs[-1]:
            programs.pop()
        if not programs:
            raise ScheduleError(f"{label}: no actions found in the CSV")
        return cls(programs, stage_to_rank, name=name or label)


def is_csv_source(source: object) -> bool:
    """True when ``source`` names a CSV file rather than a schedule name.

    The one test every reader uses (``compile``, ``schedules.resolve``, the CLI and
    :meth:`Schedule.from_csv`): a path object, a string ending in ``.csv`` (any case) or a
    string naming an existing file. Schedule names never end in ``.csv``.
    """
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str):
        return False
    return source.lower().endswith(".csv") or os.path.exists(source)


def _read_text(path_or_text: str | os.PathLike) -> tuple[str, str]:
    """The CSV text and a label: read from a file, or ``path_or_text`` itself when it is CSV
    text (it has a newline or a comma, or names no file and does not end in ``.csv``)."""
    inline = isinstance(path_or_text, str) and ("\n" in path_or_text or "," in path_or_text)
    if not inline and is_csv_source(path_or_text):
        path = os.fspath(path_or_text)
        if not os.path.exists(path):
            raise ScheduleError(f"schedule CSV file not found: {path}")
        with open(path, newline="") as f:
            return f.read(), os.path.basename(path)
    return str(path_or_text), "csv"


def _expand_cell(cell: str) -> list[str]:
    cell = cell.strip()
    if not cell:
        return []
    m = _OVERLAP_RE.match(cell)
    if m:
        return [p for p in (s.strip() for s in m.group(1).split(";")) if p]
    return [cell]


def _infer_stage_to_rank(programs: list[list[Action]], num_stages: int) -> list[int]:
    mapping: dict[int, int] = {}
    for rank, prog in enumerate(programs):
        for a in prog:
            prev = mapping.setdefault(a.stage, rank)
            if prev != rank:
                raise ScheduleError(
                    f"action {a} appears on rank {rank} but stage {a.stage} already has "
                    f"actions on rank {prev}: each stage must live on exactly one rank"
                )
    missing = [s for s in range(num_stages) if s not in mapping]
    if missing:
        raise ScheduleError(f"stages {missing} have no actions on any rank")
    return [mapping[s] for s in range(num_stages)]


#: A message between stages: ("act", producing stage, microbatch) carries activations
#: forward, ("grad", producing stage, microbatch) carries input gradients backward.
MessageKey = tuple[str, int, int]


def consumed_message(a: Action, num_stages: int) -> MessageKey | None:
    """The message ``a`` receives from another stage, if any.

    This is the one cross-stage data rule: F(s, m) needs the activations of F(s-1, m);
    B|I(s, m) needs the input gradient of B|I(s+1, m). :func:`action_deps`, the executor and
    (vectorised, pinned by a test) :class:`ScheduleDAG` all follow it.
    """
    s, kind, m = a
    if kind == "F" and s > 0:
        return ("act", s - 1, m)
    if kind in ("B", "I") and s < num_stages - 1:
        return ("grad", s + 1, m)
    return None


def produced_message(a: Action, num_stages: int) -> MessageKey | None:
    """The message ``a`` sends to another stage, if any (the dual of :func:`consumed_message`)."""
    s, kind, m = a
    if kind == "F" and s < num_stages - 1:
        return ("act", s, m)
    if kind in ("B", "I") and s > 0:
        return ("grad", s, m)
    return None


def action_deps(a: Action, split: dict[tuple[int, int], bool], num_stages: int) -> list[Action]:
    """Data dependencies of ``a`` (not program order).

    ``split[(s, m)]`` says whether (s, m) uses I/W rather than B. Within a stage, B|I(s, m)
    needs F(s, m) and W(s, m) needs I(s, m); across stages, the producer of the message
    :func:`consumed_message` names.
    """
    s, k, m = a
    if k == "W":
        return [Action(s, "I", m)]
    deps = [Action(s, "F", m)] if k in ("B", "I") else []
    message = consumed_message(a, num_stages)
    if message is not None:
        kind, src, _ = message
        src_kind = "F" if kind == "act" else "I" if split[(src, m)] else "B"
        deps.append(Action(src, src_kind, m))
    return deps


def validate_schedule(sched: Schedule) -> list[Action]:
    """Check completeness and that in-order execution per rank cannot deadlock; return the
    sequential order that proves it.

    Executor model: each rank runs its program in order; an action starts once its data
    dependencies (possibly on other ranks) are done. Receives are posted early, so sends never
    block. Raises :class:`ScheduleError` naming the first offending action.

    The returned order runs the ranks round-robin: rank 0 as far as it can, then the next
    rank that can advance, and so on cyclically. The single-process executor runs exactly
    this order (``runtime.executor.interleave``), so there is one deadlock algorithm.
    """
    p_stages, n_mb = sched.num_stages, sched.num_microbatches
    if len(sched.stage_to_rank) != p_stages:
        raise ScheduleError(
            f"stage_to_rank has {len(sched.stage_to_rank)} entries for {p_stages} stages"
        )
    for s, r in enumerate(sched.stage_to_rank):
        if not 0 <= r < sched.num_ranks:
            raise ScheduleError(
                f"stage {s} is mapped to rank {r}, but there are {sched.num_ranks} ranks"
            )
    seen: set[Action] = set()
    for rank, prog in enumerate(sched.programs):
        for a in prog:
            if a.stage >= p_stages or a.microbatch >= n_mb:
                raise ScheduleError(
                    f"action {a} on rank {rank} is out of range "
                    f"({p_stages} stages, {n_mb} microbatches)"
                )
            if sched.stage_to_rank[a.stage] != rank:
                raise ScheduleError(
                    f"action {a} is on rank {rank} but stage {a.stage} belongs to rank "
                    f"{sched.stage_to_rank[a.stage]}"
                )
            if a in seen:
                raise ScheduleError(f"action {a} appears more than once (rank {rank})")
            seen.add(a)
    split: dict[tuple[int, int], bool] = {}
    for s in range(p_stages):
        for m in range(n_mb):
            has_b = Action(s, "B", m) in seen
            has_i = Action(s, "I", m) in seen
            has_w = Action(s, "W", m) in seen
            if Action(s, "F", m) not in seen:
                raise ScheduleError(f"action {Action(s, 'F', m)} is missing from the schedule")
            if has_b and (has_i or has_w):
                raise ScheduleError(
                    f"stage {s} microbatch {m} has both a full backward {Action(s, 'B', m)} "
                    "and split I/W actions; use one or the other"
                )
            if not has_b and not (has_i and has_w):
                kind = "W" if has_i else "I" if has_w else "B"
                raise ScheduleError(f"action {Action(s, kind, m)} is missing from the schedule")
            split[(s, m)] = has_i
    return _in_order_execution(sched, split, len(seen))


def _in_order_execution(
    sched: Schedule, split: dict[tuple[int, int], bool], total: int
) -> list[Action]:
    """Run every rank's program in order, round-robin over the ranks that can advance.

    Event-driven (a blocked rank waits on the action it misses and wakes when that action
    is done), so the cost is linear in the actions plus a bisect per wake-up.
    """
    p_stages = sched.num_stages
    done: set[Action] = set()
    order: list[Action] = []
    pos = [0] * sched.num_ranks
    waiting: dict[Action, list[int]] = {}
    runnable = list(range(sched.num_ranks))  # sorted
    cursor = 0
    while runnable:
        i = bisect.bisect_left(runnable, cursor)
        rank = runnable.pop(i if i < len(runnable) else 0)
        cursor = rank + 1
        prog = sched.programs[rank]
        while pos[rank] < len(prog):
            a = prog[pos[rank]]
            missing = [d for d in action_deps(a, split, p_stages) if d not in done]
            if missing:
                waiting.setdefault(missing[0], []).append(rank)
                break
            done.add(a)
            order.append(a)
            pos[rank] += 1
            for woken in waiting.pop(a, ()):
                if woken != rank:
                    bisect.insort(runnable, woken)
    if len(order) != total:
        stuck = [
            (r, sched.programs[r][pos[r]])
            for r in range(sched.num_ranks)
            if pos[r] < len(sched.programs[r])
        ]
        r0, a0 = stuck[0]
        need = [d for d in action_deps(a0, split, p_stages) if d not in done]
        detail = ", ".join(f"rank {r} waits at {a}" for r, a in stuck[:4])
        raise ScheduleError(
            f"schedule deadlocks: action {a0} on rank {r0} waits for {need[0]} which can never "
            f"run ({detail}{', ...' if len(stuck) > 4 else ''})"
        )
    return order
