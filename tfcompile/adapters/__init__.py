"""Adapters: models someone else wrote (transformers text and vision models, timm image
classifiers, PEFT) through ``tfcompile.compile()`` unchanged.

``find_adapter(model)`` gives the :class:`Adapter` of a known family (its blocks named as in
the model, its output reduction, default loss and target), None for a model of no known
library (compile()'s generic split), and refuses a transformers/timm/peft model no adapter
handles. ``pipeline_module(model)`` is the whole adapted model as one stage module (for
``trace_stage``). docs/adapters.md says how to add a family.
"""

from __future__ import annotations

from torch import nn

from tfcompile.adapters import (  # noqa: F401 - registers
    hf_causal_lm,
    hf_encoder,
    hf_vision,
    peft,
    timm_models,
)
from tfcompile.adapters.base import Adapter, Blocks, check_composition, run_blocks
from tfcompile.adapters.registry import (
    find_adapter,
    register_adapter,
    registered,
    unregister_adapter,
)
from tfcompile.errors import RuntimeConfigError

__all__ = [
    "Adapter",
    "Blocks",
    "check_composition",
    "defaults",
    "find_adapter",
    "pipeline_module",
    "register_adapter",
    "registered",
    "run_blocks",
    "unregister_adapter",
]


def defaults(adapter: Adapter, loss_fn, example_target, example_inputs: tuple):
    """compile()'s loss_fn and example_target, the adapter's where the user gave none (a
    given loss_fn always wins)."""
    if loss_fn is None:
        loss_fn = adapter.loss
    if example_target is None and adapter.example_target is not None:
        example_target = adapter.example_target(example_inputs)
    return loss_fn, example_target


def pipeline_module(model: nn.Module) -> nn.Module:
    """The adapted model as one stage module: an ``nn.Sequential`` of its blocks, whose
    composition is the model's forward reduced to a tensor (the logits), for ``trace_stage``.

    Raises RuntimeConfigError when no adapter handles `model`.
    """
    adapter = find_adapter(model)
    if adapter is None:
        raise RuntimeConfigError(f"no tfcompile adapter handles {type(model).__name__}")
    return nn.Sequential(*[m for _, m in adapter.blocks(model)])
