"""transformers decoder-only causal LMs: the Llama family (Llama, Mistral, Qwen2, Qwen3) and
GPT-2.

Blocks: the token embedding, one block per decoder layer, the final norm, the LM head, named
as in the model (``model.embed_tokens``, ``model.layers.3``, ``model.norm``, ``lm_head``). A
decoder layer's block recomputes what the model's forward hands every layer, with tensor ops
only: positions, the rotary embedding (the model's one rotary module, shared by every layer
block: it holds buffers only) and the causal (or sliding-window) mask; so only the hidden
states cross a stage boundary. Inputs: ``input_ids`` (batch, seq) int64, no padding mask and no
cache. The last block returns the logits (batch, seq, vocab); the default loss is next-token
cross entropy (ignore index -100), the target defaults to the input ids. Tied input/output
embeddings (GPT-2, ``tie_word_embeddings``) are one Parameter in the first and the last block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tfcompile.adapters.base import Adapter, Blocks
from tfcompile.adapters.losses import causal_lm_loss
from tfcompile.adapters.masks import causal_mask, position_ids
from tfcompile.adapters.registry import library_of, register_adapter
from tfcompile.errors import RuntimeConfigError

LLAMA_FAMILY = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)
GPT2_FAMILY = frozenset({"GPT2LMHeadModel"})


def _is(model: nn.Module, names: frozenset[str]) -> bool:
    return library_of(model) == "transformers" and type(model).__name__ in names


def check_plain_decoder(model: nn.Module) -> None:
    """Refuse what the blocks do not reproduce: cross-attention, and attention kernels other
    than eager/sdpa (which take the explicit additive mask)."""
    cfg = model.config
    if getattr(cfg, "add_cross_attention", False):
        raise RuntimeConfigError(
            f"{type(model).__name__} has add_cross_attention=True: the causal-LM adapter "
            "pipelines decoder-only models; build it with add_cross_attention=False"
        )
    impl = getattr(cfg, "_attn_implementation", "eager")
    if impl not in ("eager", "sdpa"):
        raise RuntimeConfigError(
            f"{type(model).__name__} uses attn_implementation={impl!r}: the causal-LM adapter "
            "passes an explicit mask, which needs 'eager' (or 'sdpa'); build the model with "
            "attn_implementation='eager'"
        )


def _layer_window(cfg, index: int) -> int | None:
    """Layer `index`'s sliding window: per layer where the config lists layer types (Qwen2),
    else the config's one window (Mistral), else none (Llama)."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return window if types[index] == "sliding_attention" else None
    return window


class LlamaLayerBlock(nn.Module):
    """One Llama-family decoder layer as a block: hidden (batch, seq, dim) -> hidden."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, sliding_window: int | None):
        super().__init__()
        self.layer = layer
        self.rotary = rotary
        self.sliding_window = sliding_window

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pos = position_ids(hidden)
        return self.layer(
            hidden,
            attention_mask=causal_mask(hidden, self.sliding_window),
            position_ids=pos,
            position_embeddings=self.rotary(hidden, pos),
        )


def llama_blocks(model: nn.Module) -> Blocks:
    inner = model.model
    cfg = model.config
    layers = [
        (f"model.layers.{i}", LlamaLayerBlock(layer, inner.rotary_emb, _layer_window(cfg, i)))
        for i, layer in enumerate(inner.layers[: cfg.num_hidden_layers])
    ]
    return [
        ("model.embed_tokens", inner.embed_tokens),
        *layers,
        ("model.norm", inner.norm),
        ("lm_head", model.lm_head),
    ]


class GPT2Embeddings(nn.Module):
    """GPT-2's token + position embeddings and embedding dropout: ids (batch, seq) -> hidden."""

    def __init__(self, wte: nn.Module, wpe: nn.Module, drop: nn.Module):
        super().__init__()
        self.wte = wte
        self.wpe = wpe
        self.drop = drop

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.wte(input_ids)
        return self.drop(hidden + self.wpe(position_ids(hidden)))


class GPT2LayerBlock(nn.Module):
    """One GPT-2 block with its causal mask: hidden (batch, seq, dim) -> hidden."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block(hidden, attention_mask=causal_mask(hidden))


def gpt2_blocks(model: nn.Module) -> Blocks:
    t = model.transformer
    return [
        ("transformer.wte", GPT2Embeddings(t.wte, t.wpe, t.drop)),
        *[(f"transformer.h.{i}", GPT2LayerBlock(b)) for i, b in enumerate(t.h)],
        ("transformer.ln_f", t.ln_f),
        ("lm_head", model.lm_head),
    ]


def _logits(out) -> torch.Tensor:
    return out.logits


def _ids_as_target(example_inputs: tuple) -> torch.Tensor:
    return example_inputs[0]


def _register_causal_lm(
    name: str, family: frozenset[str], blocks: Callable[[nn.Module], Blocks]
) -> Adapter:
    """Register the adapter of one causal-LM family. Every family here keeps one contract (the
    logits out, next-token loss, the input ids as the default target, decoder-only models
    only), so that a new family cannot drift from it; they differ only in the classes they
    match and how they cut a model into blocks."""
    return register_adapter(
        Adapter(
            name=name,
            matches=lambda m: _is(m, family),
            blocks=blocks,
            output=_logits,
            loss=causal_lm_loss,
            example_target=_ids_as_target,
            check=check_plain_decoder,
        )
    )


LLAMA = _register_causal_lm(
    "transformers causal LM (Llama, Mistral, Qwen2, Qwen3)", LLAMA_FAMILY, llama_blocks
)
GPT2 = _register_causal_lm("transformers GPT-2 LM", GPT2_FAMILY, gpt2_blocks)
