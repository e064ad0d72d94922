"""Receive buffers bounded by the schedule (issue 15): the slot assignment uses exactly the
maximum number of messages of a boundary in flight at once (brute force), never lets two
in-flight messages share a buffer, and needs fewer than one per microbatch under 1F1B."""

from __future__ import annotations

import pytest

from tfcompile import schedules
from tfcompile.runtime.recv_buffers import buffer_slots, buffers_per_boundary
from tfcompile.schedules.actions import consumed_message

CASES = [("1F1B", 2, 2, 8), ("GPipe", 2, 2, 6), ("ZBV", 4, 2, 8), ("Interleaved1F1B", 4, 2, 8),
         ("ZBH1", 2, 2, 8)]


def _intervals(order, num_stages, lookahead):
    last = {}
    for i, a in enumerate(order):
        last[(a.stage, a.microbatch)] = i
    out = {}
    for i, a in enumerate(order):
        key = consumed_message(a, num_stages)
        if key is not None:
            posted = max(0, i - lookahead + 1) if lookahead else i
            out[key] = (posted, last[(a.stage, a.microbatch)])
    return out


@pytest.mark.parametrize("lookahead", [0, 1, 6])
@pytest.mark.parametrize("name,stages,ranks,M", CASES)
def test_slots_are_the_in_flight_bound(name, stages, ranks, M, lookahead):
    sched = schedules.resolve(name, stages=stages, microbatches=M, ranks=ranks)
    for r in range(ranks):
        order = sched.programs[r]
        slots = buffer_slots(order, stages, lookahead)
        spans = _intervals(order, stages, lookahead)
        assert set(slots) == set(spans)
        # no two messages of a boundary whose lifetimes overlap share a buffer
        for k1, (a1, b1) in spans.items():
            for k2, (a2, b2) in spans.items():
                if k1 < k2 and k1[:2] == k2[:2] and slots[k1] == slots[k2]:
                    assert b1 < a2 or b2 < a1, (k1, k2)
        # as many buffers as messages in flight at once (brute force over action indices)
        for boundary, n in buffers_per_boundary(slots).items():
            live = [sum(1 for k, (a, b) in spans.items() if k[:2] == boundary and a <= i <= b)
                    for i in range(len(order))]
            assert n == max(live), (boundary, n, max(live))


def test_1f1b_needs_fewer_buffers_than_microbatches():
    sched = schedules.resolve("1F1B", stages=2, microbatches=8, ranks=2)
    assert buffers_per_boundary(buffer_slots(sched.programs[1], 2, 0)) == {("act", 0): 1}
    assert buffers_per_boundary(buffer_slots(sched.programs[0], 2, 0)) == {("grad", 1): 1}
    gpipe = schedules.resolve("GPipe", stages=2, microbatches=8, ranks=2)
    assert buffers_per_boundary(buffer_slots(gpipe.programs[1], 2, 0)) == {("act", 0): 8}


def test_memory_stats_in_one_process():
    import torch
    from torch import nn

    import tfcompile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(8, 8), torch.randn(8, 4)
    pipe = tfcompile.compile(model, "1F1B", microbatches=2, ranks=2, example_inputs=(x[:4],),
                             loss_fn=nn.functional.mse_loss, example_target=y[:4],
                             split_points=["2"])
    pipe.step(x, y)
    stats = pipe.memory_stats()
    assert stats["activation_bytes"] == 0  # nothing pending between steps
    assert stats["recv_buffer_bytes"] == 0  # one process: tensors are handed over
    assert stats["peak_bytes"] > 0
    prog = pipe.stage_programs[0]
    prog.forward(0, x[:4])
    assert prog.activation_bytes() > 0
    prog.release()
