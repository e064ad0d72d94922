"""A silent HiGHS instance: ``new_highs()``.

highspy prints its banner ("Running HiGHS x.y.z ... Copyright ...") from the C++ ``Highs``
constructor, i.e. before any option (``output_flag``) can be set, and on file descriptor 1,
so neither the option nor ``contextlib.redirect_stdout`` suppresses it. The first
construction in a process therefore runs with fd 1 pointed at /dev/null (C stdio flushed
inside, so a pipe-buffered banner cannot escape afterwards); HiGHS prints the banner once per
process, later constructions are plain.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_banner_suppressed = False


def new_highs() -> Any:
    """A ``highspy.Highs`` with ``output_flag`` off, without the banner on stdout."""
    import highspy

    global _banner_suppressed
    with _lock:
        if _banner_suppressed:
            h = highspy.Highs()
        else:
            with _fd_silenced(1):
                h = highspy.Highs()
            _banner_suppressed = True
    h.setOptionValue("output_flag", False)
    return h


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _fd_silenced(fd: int) -> Iterator[None]:
    """File descriptor ``fd`` goes to /dev/null inside (no-op where it cannot be duplicated)."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        _flush_c_stdio()
        os.dup2(devnull, fd)
        yield
        _flush_c_stdio()
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
