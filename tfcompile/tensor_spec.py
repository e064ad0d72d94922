"""TensorSpec: the shape, dtype and device a tensor is expected to have.

One record for both sides of a stage boundary: the stage program checks its inputs and builds
default output gradients from specs, and the transport allocates receive buffers from them. It
lives in this low module so that both import it without the runtime depending on tracing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device | str = "cpu"

    @classmethod
    def of(cls, t: torch.Tensor, device: torch.device | str | None = None) -> TensorSpec:
        """The spec of `t`; `device` overrides its device (fake values carry the trace's)."""
        return cls(tuple(t.shape), t.dtype, device if device is not None else t.device)
