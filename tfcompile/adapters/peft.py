"""PEFT-wrapped models (LoRA and the other tuner methods that wrap layers in place).

A ``PeftModel`` keeps the base model's module tree under ``base_model.model`` and replaces
some ``nn.Linear`` layers by LoRA layers in place; its forward is the base model's. So the
base model's adapter gives the blocks, renamed under the wrapper's prefix
(``base_model.model.model.layers.3``), and its output, loss and target. The frozen base weights
are simply parameters without ``requires_grad``: the groups hold the trainable adapter weights.
Prompt-learning methods (prefix/prompt tuning) change the inputs and are refused.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from tfcompile.adapters.base import Adapter, Blocks
from tfcompile.adapters.registry import find_adapter, library_of, register_adapter
from tfcompile.errors import RuntimeConfigError


def _matches(model: nn.Module) -> bool:
    return library_of(model) == "peft" and hasattr(model, "get_base_model")


def _base(model: nn.Module) -> tuple[str, nn.Module, Adapter]:
    """The wrapped transformers model, its name inside the wrapper and its adapter."""
    base = model.get_base_model()
    prefix = next(n for n, m in model.named_modules() if m is base)
    adapter = find_adapter(base)
    if adapter is None:
        raise RuntimeConfigError(
            f"{type(model).__name__} wraps {type(base).__name__}, which has no tfcompile "
            "adapter: write one for the base model (docs/adapters.md)"
        )
    return prefix, base, adapter


def _check(model: nn.Module) -> None:
    config = model.peft_config.get(model.active_adapter)
    if config is not None and getattr(config, "is_prompt_learning", False):
        raise RuntimeConfigError(
            f"{type(model).__name__} uses {config.peft_type}, a prompt-learning method that "
            "adds virtual tokens to the inputs: the PEFT adapter pipelines methods that wrap "
            "layers in place (LoRA, IA3, ...)"
        )
    _base(model)  # the base model must have an adapter (raises otherwise)


def resolve(model: nn.Module) -> Adapter:
    """The base model's adapter with its block names under the wrapper's prefix."""
    prefix, _, adapter = _base(model)

    def blocks(wrapper: nn.Module) -> Blocks:
        base = wrapper.get_base_model()
        return [(f"{prefix}.{name}" if prefix else name, m) for name, m in adapter.blocks(base)]

    return replace(adapter, name=f"PEFT-wrapped {adapter.name}", matches=_matches,
                   blocks=blocks, check=_check, resolve=None)


def _unresolved(model: nn.Module):
    raise AssertionError("the PEFT adapter is used through resolve()")  # pragma: no cover


PEFT = register_adapter(
    Adapter(
        name="PEFT-wrapped model",
        matches=_matches,
        blocks=_unresolved,
        output=_unresolved,
        check=_check,
        resolve=resolve,
    )
)
