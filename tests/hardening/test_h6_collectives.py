"""Kind 6: every collective tfcompile issues outside the step transport reports the root
cause a failing rank published, not the raw gloo error; a rank that wakes up after the others
gave up raises their root cause at once. (End to end under torchrun: test_h8_fault_soak.py,
faults "compile" and "gather".)"""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tfcompile.errors import PipelineFailure
from tfcompile.runtime.collectives import guarded
from tfcompile.runtime.transport import FailureSignal


def signal() -> FailureSignal:
    failure = FailureSignal(dist.HashStore(), "test")
    failure.GRACE_S = 0.05
    return failure


def test_raw_collective_error_becomes_the_published_root_cause():
    failure = signal()

    def peer_failed_then_connection_closed():
        failure.report(1, "RuntimeError: tracing failed on rank 1")
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234")

    with pytest.raises(PipelineFailure, match="rank 1 failed: RuntimeError: tracing failed"):
        with guarded(failure, 0, "compile()'s config check (all_gather)"):
            peer_failed_then_connection_closed()


def test_stuck_rank_waking_up_raises_the_root_cause_before_the_collective():
    failure = signal()
    failure.report(0, "PipelineFailure: rank 0 gave up waiting for act of stage 0")
    ran = []
    with pytest.raises(PipelineFailure, match="all_gather on rank 1 aborted because rank 0"):
        with guarded(failure, 1, "all_gather"):
            ran.append(True)  # never reached: the collective would fail or hang
    assert not ran


def test_own_collective_timeout_is_published_for_the_others():
    failure = signal()
    with pytest.raises(PipelineFailure, match="rank 0 failed in all_gather.*stuck or dead"):
        with guarded(failure, 0, "all_gather"):
            raise RuntimeError("DistStoreError: wait timeout")
    assert "rank 0 failed in all_gather" in failure.message()
    assert failure.blocked_since is None


def test_no_signal_in_one_process():
    with pytest.raises(ValueError):
        with guarded(None, 0, "all_gather"):
            raise ValueError("passes through unchanged")
