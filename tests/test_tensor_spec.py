"""TensorSpec keeps a traced layout only when data can be copied into it."""

import pytest
import torch

from tfcompile.tensor_spec import TensorSpec


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 4, 5),
        lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        lambda: torch.randn(3, 4).t(),
        lambda: torch.randn(1, 3, 1, 4),
    ],
)
def test_dense_layouts_are_kept_and_rebuilt(make):
    t = make()
    spec = TensorSpec.of(t)
    assert spec.stride == tuple(t.stride())
    rebuilt = spec.empty().copy_(t.contiguous())
    assert spec.strides_match(rebuilt) and torch.equal(rebuilt, t)


@pytest.mark.parametrize(
    "make", [lambda: torch.arange(5).expand(3, 5), lambda: torch.randn(4, 6)[:, ::2]]
)
def test_overlapping_or_gapped_layouts_ask_for_none(make):
    """An expanded example (stride 0) cannot be rebuilt from received data: no layout kept."""
    assert TensorSpec.of(make()).stride is None
