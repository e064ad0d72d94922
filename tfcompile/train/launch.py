"""Start a script under torchrun (``python -m torch.distributed.run --standalone``).

The benchmarks that need several processes start themselves this way; one helper keeps the
command line, the environment and the timeout handling in one place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

#: Exit status reported when the run was killed for running past its timeout (as timeout(1)).
TIMED_OUT = 124


def torchrun_command(script: str | os.PathLike, args: Sequence[str], nproc: int) -> list[str]:
    """The command line that runs ``script args`` on ``nproc`` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "--monitor-interval=1",  # notice a dead worker within a second
        str(script),
        *args,
    ]


def torchrun(
    script: str | os.PathLike,
    args: Sequence[str],
    *,
    nproc: int,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    on_line: Callable[[str], None] | None = None,
) -> int:
    """Run ``script args`` under torchrun and return its exit status (`TIMED_OUT` on timeout).

    ``env``: added to this process's environment; the repository root of ``tfcompile`` is put
    on PYTHONPATH so that the workers import this checkout. ``on_line``: called with each
    line of the workers' combined output (otherwise it goes to this process's stdout).
    """
    full_env = dict(os.environ, **(env or {}))
    root = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, full_env.get("PYTHONPATH")]))
    cmd = torchrun_command(script, args, nproc)
    piped = subprocess.PIPE if on_line is not None else None
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=full_env, stdout=piped, stderr=subprocess.STDOUT if piped else None,
        text=True,
    )  # fmt: skip
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, kill) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        if on_line is not None:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line)
        rc = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
    return TIMED_OUT if expired.is_set() else rc
