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
        """The spec of `t`; `device` overrides its device (fake values carry the trace's).

        Its strides are kept when they are a dense, non-overlapping layout (contiguous,
        channels-last, a transpose): a tensor can be copied into those. An expanded example
        (a stride-0 dimension, e.g. position ids from ``arange(n).expand(b, n)``) cannot be
        rebuilt from received data, so its spec asks for no particular layout."""
        shape, stride = tuple(t.shape), tuple(t.stride())
        return cls(
            shape,
            t.dtype,
            device if device is not None else t.device,
            stride if _dense(shape, stride) else None,
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


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether `stride` lays `shape` out densely without overlap: sorted by stride, every
    dimension of size > 1 steps over exactly the elements of the ones inside it."""
    expected = 1
    for n, st in sorted(((n, st) for n, st in zip(shape, stride) if n > 1), key=lambda d: d[::-1]):
        if st != expected:
            return False
        expected *= n
    return True
