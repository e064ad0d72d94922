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
    # the layout a graph was traced for (a channels-last output's tangent); None: contiguous
    stride: tuple[int, ...] | None = None

    @classmethod
    def of(cls, t: torch.Tensor, device: torch.device | str | None = None) -> TensorSpec:
        """The spec of `t`; `device` overrides its device (fake values carry the trace's)."""
        return cls(
            tuple(t.shape), t.dtype, device if device is not None else t.device, tuple(t.stride())
        )

    def strides_match(self, t: torch.Tensor) -> bool:
        """Whether `t` has this spec's layout (strides of size-1 dimensions do not matter);
        a spec without strides wants a contiguous tensor."""
        if self.stride is None:
            return t.is_contiguous()
        return all(n <= 1 or a == b for n, a, b in zip(self.shape, t.stride(), self.stride))

    def empty(self, device: torch.device | str | None = None) -> torch.Tensor:
        """An uninitialised tensor of this spec, with its strides when it has them."""
        dev = device if device is not None else self.device
        if self.stride is None:
            return torch.empty(self.shape, dtype=self.dtype, device=dev)
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=dev)
