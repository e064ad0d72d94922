"""Failure propagation for the collectives tfcompile issues outside the step transport.

The step transport (`transport.DistTransport`) turns a dead or stuck peer into the peer's
own error, read from the rendezvous store (`FailureSignal`). Collectives issued elsewhere
(compile()'s config check and process groups, the controller's all_gather, measurements,
evaluation, the tied-gradient all-reduce, close()'s barrier) go through :func:`guarded`, so
that their failures read the same way instead of as raw gloo/NCCL errors ("Connection closed
by peer", DistStoreError):

- before the collective: a failure another rank already reported is raised at once (a rank
  that was stuck and wakes up after the others gave up raises their root cause);
- while blocked in it: the watchdog thread ends the process with a reported failure after
  ``FailureSignal.GRACE_S`` (a blocked collective cannot be interrupted);
- when it raises: the reported root cause if there is one (waiting up to GRACE_S for the
  failing rank to publish it), else this rank's own error, published for the others.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from tfcompile.errors import PipelineFailure
from tfcompile.runtime.transport import FailureSignal


@contextlib.contextmanager
def guarded(failure: FailureSignal | None, rank: int, what: str) -> Iterator[None]:
    """Run a collective (``what`` names it in messages) under the failure signal; raises
    PipelineFailure carrying the root cause. A no-op in one process (``failure`` None)."""
    if failure is None:
        yield
        return
    reported = failure.message()
    if reported is not None:
        raise PipelineFailure(f"{what} on rank {rank} aborted because {reported}")
    failure.blocked_on, failure.blocked_since = what, time.monotonic()
    try:
        yield
    except PipelineFailure:
        raise
    except Exception as exc:
        reported = failure.message(wait_s=failure.GRACE_S)
        if reported is not None:
            raise PipelineFailure(f"{what} on rank {rank} aborted because {reported}") from exc
        own = PipelineFailure(
            f"rank {rank} failed in {what} ({type(exc).__name__}: {exc}). A peer rank is "
            "stuck or dead; if it is legitimately this slow, raise compile(..., timeout=...)."
        )
        failure.report(rank, str(own))
        raise own from exc
    finally:
        failure.blocked_since = None


_EXIT_HOOK_INSTALLED = False


def exit_promptly_on_uncaught_error() -> None:
    """Under torchrun, end the process right after an uncaught exception's traceback is
    printed, with exit code 1. Otherwise the interpreter's teardown waits in (or aborts from,
    SIGABRT) the process group's destructor, which still holds receives posted to peers that
    will never send, until torchrun kills the rank: its exit code would not be its own."""
    global _EXIT_HOOK_INSTALLED
    if _EXIT_HOOK_INSTALLED:
        return
    _EXIT_HOOK_INSTALLED = True
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        previous(kind, value, tb)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)

    sys.excepthook = hook
