"""A process whose pipelines were never closed exits cleanly: the failure watchdog threads
are stopped before the interpreter finalizes. (A daemon thread returning from a TCPStore call
during finalization aborts the process: "terminate called without an active exception",
SIGABRT, seen as a flaky torchrun worker in CI.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

SCRIPT = textwrap.dedent(
    """
    import datetime, time
    import torch.distributed as dist
    from tfcompile.runtime.transport import FailureSignal

    timeout = datetime.timedelta(seconds=10)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timeout)
    signals = []
    for i in range(4):  # four pipelines, none closed
        watch = dist.TCPStore("127.0.0.1", server.port, is_master=False,
                              wait_for_workers=False, timeout=timeout)
        signal = FailureSignal(server, f"pipe{i}", watch_store=watch)
        signal.POLL_S = 0.0  # always inside a store call: the race every time
        signal.start_watchdog(0)
        signals.append(signal)
    time.sleep(0.3)
    print("done", flush=True)
    """
)


def test_unclosed_watchdogs_do_not_abort_the_exit():
    for _ in range(3):
        run = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert "terminate called" not in run.stderr
        assert run.stdout.strip() == "done"


def test_stop_joins_the_watchdog():
    import datetime

    import torch.distributed as dist

    from tfcompile.runtime.transport import FailureSignal

    timeout = datetime.timedelta(seconds=10)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timeout)  # fmt: skip
    signal = FailureSignal(server, "pipe", watch_store=server)
    signal.start_watchdog(0)
    assert "tfcompile-watchdog" in {t.name for t in threading.enumerate()}
    signal.stop()
    assert "tfcompile-watchdog" not in {t.name for t in threading.enumerate()}
