"""What an adapter says about a model family, and the blocks it builds from it.

An :class:`Adapter` turns a model someone else wrote (a transformers causal LM, a BERT
classifier, a PEFT-wrapped one) into what ``split.py`` pipelines: a sequence of
``(model name, module)`` blocks whose composition, each block's tensor outputs passed on as
the next one's arguments, equals the model's forward reduced to a tensor. Blocks hold the
model's own submodules (no copies), so parameters keep their objects and their names
(``model.layers.3.mlp.up_proj.weight``); a block that needs more than its submodule (the
rotary embedding and the causal mask of a decoder layer) is a small wrapper module around it,
and only tensors cross a block boundary.

docs/adapters.md says how to write one for a new family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tfcompile.errors import RuntimeConfigError

Blocks = list[tuple[str, nn.Module]]


def _accept(model: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class Adapter:
    """How to pipeline one model family.

    - ``name``: the family, as error messages name it;
    - ``matches(model)``: whether this adapter handles ``model`` (checked in registration order);
    - ``blocks(model)``: the block sequence, named with the model's own module names; modules
      shared across blocks (a rotary embedding: buffers only) may sit in several blocks;
    - ``output(out)``: the model's own output object (``CausalLMOutputWithPast``, ...) reduced to
      the tensor the last block returns (the logits), for the composition check;
    - ``loss(output, target)``: the family's default loss (a float32 scalar), used when
      compile() gets no ``loss_fn``;
    - ``example_target(example_inputs)``: a target of the right structure when compile() gets
      no ``example_target`` (causal LM: the input ids themselves), or None to require one;
    - ``check(model)``: raises RuntimeConfigError for configurations the blocks cannot express
      (cross-attention, a non-LoRA PEFT method, ...), naming the setting to change;
    - ``resolve(model)``: for a wrapper family (PEFT), the adapter of this particular model
      (the wrapped model's, its block names under the wrapper's prefix); None otherwise.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    blocks: Callable[[nn.Module], Blocks]
    output: Callable[[Any], torch.Tensor]
    loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    example_target: Callable[[tuple], Any] | None = None
    check: Callable[[nn.Module], None] = _accept
    resolve: Callable[[nn.Module], Adapter] | None = None


def class_index_target(example_inputs: tuple) -> torch.Tensor:
    """The default ``example_target`` of a classifier adapter: class 0 for every example,
    (batch,) int64, the batch size read off the first input. compile() only traces the loss
    with it, so any valid label does; the classifier adapters (image classifiers, text encoders)
    share this one so that they agree on the target's structure.
    """
    return torch.zeros(example_inputs[0].shape[0], dtype=torch.long)


def run_blocks(blocks: Sequence[nn.Module], inputs: tuple):
    """The blocks composed as a stage composes them (a tuple output is splatted into the next
    block); a single value comes back as itself."""
    values = tuple(inputs)
    for block in blocks:
        out = block(*values)
        values = out if isinstance(out, tuple) else (out,)
    return values[0] if len(values) == 1 else values


def check_composition(model: nn.Module, adapter: Adapter, blocks: Blocks, inputs: tuple) -> None:
    """The blocks' composition must give the model's own output (reduced by the adapter) on the
    example inputs: a configuration the adapter does not express (a scaled embedding, a
    different mask) is refused here instead of training a different model.

    Raises RuntimeConfigError naming the model class, the adapter and the largest difference.
    """
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout draws alike in both
        torch.manual_seed(0)
        want = adapter.output(model(*inputs))
        torch.manual_seed(0)
        got = run_blocks([m for _, m in blocks], inputs)
    if (
        not isinstance(got, torch.Tensor)
        or got.shape != want.shape
        or not torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    ):
        diff = (
            f"largest difference {(got - want).abs().max().item():.3g}"
            if isinstance(got, torch.Tensor) and got.shape == want.shape
            else f"shape {getattr(got, 'shape', type(got).__name__)} vs {tuple(want.shape)}"
        )
        raise RuntimeConfigError(
            f"the {adapter.name} adapter's blocks do not reproduce "
            f"{type(model).__name__}.forward on the example inputs ({diff}): this configuration "
            "is not supported by the adapter; write an adapter for it (docs/adapters.md) or give "
            "the model a pipeline_blocks() method"
        )
