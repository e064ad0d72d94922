"""ActionTimer: the step window a pipeline keeps, and resizing it without patching internals."""

import torch

from tfcompile.runtime.timers import ActionTimer


def _record_steps(timer: ActionTimer, steps: range) -> None:
    for step in steps:
        timer.begin_step(step)
        token = timer.start()
        timer.stop(token, stage=0, part="F", microbatch=0)
        timer.end_step()


def test_window_keeps_the_last_steps_only():
    timer = ActionTimer(torch.device("cpu"), window=2)
    _record_steps(timer, range(5))
    assert [p.step for p in timer.window()] == [3, 4]


def test_set_window_none_keeps_every_later_step_and_what_was_kept():
    timer = ActionTimer(torch.device("cpu"), window=2)
    _record_steps(timer, range(3))
    timer.set_window(None)
    _record_steps(timer, range(3, 8))
    assert [p.step for p in timer.window()] == [1, 2, 3, 4, 5, 6, 7]
    timer.set_window(3)
    assert [p.step for p in timer.window()] == [5, 6, 7]
    assert len(timer.window_arrivals()) == 0 and len(timer.arrivals) == 3
