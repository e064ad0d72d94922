"""Per-rank memory statistics of a pipeline (``Pipeline.memory_stats``)."""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable

import torch


def peak_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA's peak allocated bytes on a CUDA device (the caching
    allocator's ``max_memory_allocated``, reset with ``torch.cuda.reset_peak_memory_stats``),
    else the process's peak resident set size (``getrusage``: kilobytes on Linux, bytes on
    macOS), which includes the interpreter and torch itself."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def memory_stats(programs: Iterable, transport, device: torch.device) -> dict[str, int]:
    """``{"peak_bytes", "activation_bytes", "recv_buffer_bytes"}`` of this rank, in bytes:
    the process peak (see :func:`peak_bytes`), what its stage programs keep for pending
    backwards right now (``StageProgram.activation_bytes``), and the receive buffers its
    transport has allocated (0 in one process, where tensors are handed over)."""
    return {
        "peak_bytes": peak_bytes(torch.device(device)),
        "activation_bytes": sum(p.activation_bytes() for p in programs),
        "recv_buffer_bytes": int(transport.buffer_bytes()),
    }
