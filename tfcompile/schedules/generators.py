"""Generators of the standard pipeline schedules.

``build(name, stages, microbatches, ranks=None)`` returns a validated :class:`Schedule`:

- ``GPipe``: all forwards, then all backwards; one stage per rank.
- ``1F1B``: warm-up forwards, steady one-forward-one-backward, cool-down backwards.
- ``Interleaved1F1B``: Megatron's interleaved order; ``stages / ranks`` stages per rank, stage
  ``s`` on rank ``s % ranks``; microbatches must be a multiple of ``ranks`` (Megatron's rule).
  ``ranks`` defaults to ``stages // 2``.
- ``ZBH1``: zero-bubble H1 (Qi et al. 2024): 1F1B with the backward split into I and W and
  rank ``r`` deferring ``r`` weight-gradient passes into the cool-down, so that with uniform
  costs the bubble is ``(p-1)(F+I-W)``; same activation memory as 1F1B plus the deferred W.
- ``ZBV``: zero-bubble V schedule, 2 stages per rank, rank ``r`` holds stages ``r`` and
  ``2p-1-r``; needs at least ``2p - 1`` microbatches.
"""

from __future__ import annotations

import os

from tfcompile.errors import ScheduleError
from tfcompile.schedules.actions import Action, Schedule, is_csv_source

SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "ZBH1", "ZBV")
_ALIASES = {
    "gpipe": "GPipe",
    "1f1b": "1F1B",
    "interleaved1f1b": "Interleaved1F1B",
    "interleaved": "Interleaved1F1B",
    "zbh1": "ZBH1",
    "zb-h1": "ZBH1",
    "zbv": "ZBV",
    "zbvzerobubble": "ZBV",
}
#: Stages each rank holds in a named schedule when the caller gives only the rank count;
#: keyed by canonical name so that every alias in ``_ALIASES`` agrees.
_STAGES_PER_RANK = {"Interleaved1F1B": 2, "ZBV": 2}


def canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "").replace(" ", "")
    if key not in _ALIASES:
        raise ScheduleError(
            f"unknown schedule {name!r}; known schedules: {', '.join(SCHEDULES)} "
            "(or load a CSV with Schedule.from_csv)"
        )
    return _ALIASES[key]


def stages_per_rank(name: str) -> int:
    """Stages per rank of the named schedule (any alias): 2 for Interleaved1F1B (its default)
    and ZBV, 1 otherwise. Raises :class:`ScheduleError` for an unknown name."""
    return _STAGES_PER_RANK.get(canonical_name(name), 1)


def default_ranks(schedule: str | os.PathLike | Schedule, *, stages: int | None) -> int:
    """Pipeline ranks of a run that does not say: the schedule's own (a CSV file or a
    :class:`Schedule`), else ``stages`` over the name's stages per rank, else 2."""
    if is_csv_source(schedule):
        schedule = Schedule.from_csv(os.fspath(schedule))
    if isinstance(schedule, Schedule):
        return schedule.num_ranks
    if not stages:
        return 2
    return max(1, stages // stages_per_rank(str(schedule)))


def resolve(
    schedule: str | os.PathLike | Schedule,
    *,
    stages: int | None,
    microbatches: int,
    ranks: int | None,
) -> Schedule:
    """A :class:`Schedule` from a schedule name (any alias), a CSV path or a Schedule.

    A Schedule is returned as it is and a CSV file is read as it is (``stages``,
    ``microbatches`` and ``ranks`` are the caller's to check against it). A name is built
    for ``stages`` stages, or when ``stages`` is None for ``ranks`` ranks times the name's
    :func:`stages_per_rank`.
    """
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, (str, os.PathLike)):
        raise ScheduleError(f"schedule must be a name, a CSV path or a Schedule, not {schedule!r}")
    if is_csv_source(schedule):
        return Schedule.from_csv(os.fspath(schedule))
    if stages is None:
        if ranks is None:
            raise ScheduleError(f"schedule {schedule!r} needs stages= or ranks=")
        stages = ranks * stages_per_rank(schedule)
    return build(schedule, stages, microbatches, ranks=ranks)


def build(name: str, stages: int, microbatches: int, ranks: int | None = None) -> Schedule:
    """Build the named schedule for ``stages`` pipeline stages and ``microbatches``."""
    canon = canonical_name(name)
    for label, val in (("stages", stages), ("microbatches", microbatches)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ScheduleError(f"{label} must be a positive integer, got {val!r}")
    if ranks is not None and (not isinstance(ranks, int) or ranks < 1):
        raise ScheduleError(f"ranks must be a positive integer, got {ranks!r}")
    p, m = stages, microbatches
    if canon in ("GPipe", "1F1B", "ZBH1"):
        if ranks is not None and ranks != p:
            raise ScheduleError(
                f"{canon} places one stage per rank: ranks must equal stages ({p}), got {ranks}"
            )
        gen = {"GPipe": _gpipe, "1F1B": _one_f_one_b, "ZBH1": _zbh1}[canon]
        programs = gen(p, m)
        stage_to_rank = list(range(p))
    elif canon == "Interleaved1F1B":
        if ranks is None:
            if p % 2:
                raise ScheduleError(
                    f"Interleaved1F1B with {p} stages: pass ranks= (stages must be a multiple "
                    "of ranks; the default is 2 stages per rank)"
                )
            ranks = p // 2
        if p % ranks:
            raise ScheduleError(
                f"Interleaved1F1B needs stages ({p}) to be a multiple of ranks ({ranks})"
            )
        if m % ranks:
            raise ScheduleError(
                f"Interleaved1F1B needs microbatches ({m}) to be a multiple of ranks ({ranks}) "
                "(Megatron's interleaved order); use e.g. "
                f"{max(ranks, (m // ranks + 1) * ranks)} microbatches"
            )
        programs = _interleaved(ranks, p // ranks, m)
        stage_to_rank = [s % ranks for s in range(p)]
    else:  # ZBV
        if p % 2:
            raise ScheduleError(f"ZBV holds 2 stages per rank: stages must be even, got {p}")
        nr = p // 2
        if ranks is not None and ranks != nr:
            raise ScheduleError(f"ZBV with {p} stages runs on {nr} ranks, got ranks={ranks}")
        if m < 2 * nr - 1:
            raise ScheduleError(
                f"ZBV with {nr} ranks needs at least {2 * nr - 1} microbatches, got {m}"
            )
        programs = _zbv(nr, m)
        stage_to_rank = [s if s < nr else 2 * nr - 1 - s for s in range(p)]
    return Schedule(programs, stage_to_rank, name=canon, num_stages=p, num_microbatches=m)


def _gpipe(p: int, m: int) -> list[list[Action]]:
    return [
        [Action(s, "F", i) for i in range(m)] + [Action(s, "B", i) for i in range(m)]
        for s in range(p)
    ]


def _one_f_one_b(p: int, m: int) -> list[list[Action]]:
    programs = []
    for s in range(p):
        warm = min(p - 1 - s, m)
        prog = [Action(s, "F", i) for i in range(warm)]
        for i in range(m - warm):
            prog += [Action(s, "F", warm + i), Action(s, "B", i)]
        prog += [Action(s, "B", i) for i in range(m - warm, m)]
        programs.append(prog)
    return programs


def _zbh1(p: int, m: int) -> list[list[Action]]:
    """1F1B with I/W split; rank r lags its W passes by r microbatches (Qi et al., ZB-H1)."""
    programs = []
    for s in range(p):
        warm = min(p - 1 - s, m)
        lag = min(s, m)
        prog = [Action(s, "F", i) for i in range(warm)]
        w_next = 0
        for i in range(m - warm):
            prog += [Action(s, "F", warm + i), Action(s, "I", i)]
            if i - w_next >= lag:
                prog.append(Action(s, "W", w_next))
                w_next += 1
        for i in range(m - warm, m):
            prog.append(Action(s, "I", i))
            if i - w_next >= lag:
                prog.append(Action(s, "W", w_next))
                w_next += 1
        prog += [Action(s, "W", i) for i in range(w_next, m)]
        programs.append(prog)
    return programs


def _interleaved(p: int, v: int, m: int) -> list[list[Action]]:
    """Megatron's interleaved 1F1B: microbatches in groups of p, chunk-major within a round."""
    total = m * v

    def fwd(k: int, r: int) -> Action:
        chunk = (k % (p * v)) // p
        return Action(chunk * p + r, "F", (k // (p * v)) * p + k % p)

    def bwd(k: int, r: int) -> Action:
        chunk = v - 1 - (k % (p * v)) // p
        return Action(chunk * p + r, "B", (k // (p * v)) * p + k % p)

    programs = []
    for r in range(p):
        warm = min(p - r - 1 if v == 1 else (p - r - 1) * 2 + (v - 1) * p, total)
        prog = [fwd(k, r) for k in range(warm)]
        for i in range(total - warm):
            prog += [fwd(warm + i, r), bwd(i, r)]
        prog += [bwd(k, r) for k in range(total - warm, total)]
        programs.append(prog)
    return programs


def _zbv(p: int, m: int) -> list[list[Action]]:
    """Zero-bubble V (Qi et al.): rank r holds chunk 0 = stage r and chunk 1 = stage 2p-1-r."""
    return [_zbv_rank(p, m, r) for r in range(p)]


def _zbv_rank(p: int, m: int, r: int) -> list[Action]:
    s0, s1 = r, 2 * p - 1 - r
    prog: list[Action] = []
    nf = [0, 0]  # forwards issued per chunk
    nb = [0, 0]  # input grads issued per chunk

    def fwd(chunk: int) -> None:
        prog.append(Action((s0, s1)[chunk], "F", nf[chunk]))
        nf[chunk] += 1

    def bwd(chunk: int, weight: bool = True) -> None:
        stage = (s0, s1)[chunk]
        prog.append(Action(stage, "I", nb[chunk]))
        if weight:
            prog.append(Action(stage, "W", nb[chunk]))
        nb[chunk] += 1

    # warm-up: fill chunk 0, then alternate into chunk 1, then start chunk-1 backwards
    for _ in range(2 * (p - r) - 1):
        fwd(0)
    for _ in range(r):
        fwd(1)
        fwd(0)
    for _ in range(p - r):
        fwd(1)
        bwd(1)
    # steady state: F0 B0 F1 B1
    while nf[1] < nf[0] or nf[0] < m:
        if nf[0] < m:
            fwd(0)
        bwd(0)
        fwd(1)
        bwd(1)
    # cool-down: input grads first, deferred weight grads fill the bubbles
    w0, w1 = nb[0], nb[1]
    for _ in range(r):
        bwd(0, weight=False)
        bwd(1, weight=False)
    for _ in range(p - r):
        bwd(0, weight=False)
        prog.append(Action(s0, "W", w0))
        w0 += 1
    prog += [Action(s1, "W", i) for i in range(w1, nb[1])]
    prog += [Action(s0, "W", i) for i in range(w0, nb[0])]
    return prog
