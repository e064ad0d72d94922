"""Receive buffers bounded by the schedule: how many a rank needs per stage boundary, and which
one each message uses.

A message's receive buffer is busy from the moment its receive is posted (``lookahead`` actions
before the consuming action, see ``StepRunner.run_step``) until the consuming stage has finished
that microbatch's backward (its last action on that microbatch: a received activation may be a
saved value of the forward, a received gradient may be read by a weight-gradient region). These
intervals over the rank's action list are fixed by the schedule, so the buffers are assigned
once per action list (greedy interval colouring, which needs exactly the maximum overlap): under
1F1B a boundary needs about ``num_stages`` buffers instead of one per microbatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tfcompile.schedules.actions import Action, MessageKey, consumed_message

Boundary = tuple[str, int]  # (kind, src_stage)


def buffer_slots(
    order: Sequence[Action],
    num_stages: int,
    lookahead: int,
    is_remote: Callable[[MessageKey], bool] = lambda key: True,
) -> dict[MessageKey, int]:
    """Message -> index of the buffer it is received into, among the buffers of its boundary.

    `order` is the rank's actions of one step, in the order they run; receives are posted
    ``lookahead`` actions ahead (0: at the consuming action). Two messages of a boundary share
    an index only when the first one's last use ends before the second one's receive is posted.
    """
    last_use: dict[tuple[int, int], int] = {}
    for i, a in enumerate(order):
        last_use[(a.stage, a.microbatch)] = i
    intervals = []
    for i, a in enumerate(order):
        key = consumed_message(a, num_stages)
        if key is None or not is_remote(key):
            continue
        posted = max(0, i - lookahead + 1) if lookahead else i
        intervals.append((posted, last_use[(a.stage, a.microbatch)], key))
    free_at: dict[Boundary, list[int]] = {}  # boundary -> per buffer, the index it frees after
    slots: dict[MessageKey, int] = {}
    for posted, released, key in sorted(intervals, key=lambda t: t[0]):
        buffers = free_at.setdefault((key[0], key[1]), [])
        slot = next((j for j, end in enumerate(buffers) if end < posted), None)
        if slot is None:
            slot = len(buffers)
            buffers.append(released)
        else:
            buffers[slot] = released
        slots[key] = slot
    return slots


def buffers_per_boundary(slots: dict[MessageKey, int]) -> dict[Boundary, int]:
    """How many buffers each boundary needs under `slots` (its bound)."""
    out: dict[Boundary, int] = {}
    for (kind, src, _), slot in slots.items():
        out[(kind, src)] = max(out.get((kind, src), 0), slot + 1)
    return out
