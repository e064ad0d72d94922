"""transformers BERT-style encoders with a sequence-classification head (BERT, RoBERTa).

Blocks: the embeddings, one block per encoder layer, then the head, named as in the model
(``bert.embeddings``, ``bert.encoder.layer.3``, ``bert.pooler``, ``classifier``). Inputs:
``input_ids`` (batch, seq) int64 with no padding mask (every token attends to every token, as
transformers does when no ``attention_mask`` is given); token type ids and positions are the
embeddings' defaults. The last block returns the logits (batch, num_labels); the default loss
is single-label cross entropy (ignore index -100).
"""

from __future__ import annotations

import torch
from torch import nn

from tfcompile.adapters.base import Adapter, Blocks, class_index_target
from tfcompile.adapters.losses import classification_loss
from tfcompile.adapters.registry import library_of, register_adapter
from tfcompile.errors import RuntimeConfigError

ENCODER_FAMILY = {
    "BertForSequenceClassification": "bert",
    "RobertaForSequenceClassification": "roberta",
}


class EncoderLayerBlock(nn.Module):
    """One encoder layer without a mask: hidden (batch, seq, dim) -> hidden."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden)


class PooledHead(nn.Module):
    """BERT's head after the pooler: dropout, then the classifier: (batch, dim) -> logits."""

    def __init__(self, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.dropout = dropout
        self.classifier = classifier

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


def _matches(model: nn.Module) -> bool:
    return library_of(model) == "transformers" and type(model).__name__ in ENCODER_FAMILY


def _check(model: nn.Module) -> None:
    cfg = model.config
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        raise RuntimeConfigError(
            f"{type(model).__name__} has is_decoder/add_cross_attention set: the encoder "
            "adapter pipelines bidirectional encoders; build it with is_decoder=False"
        )


def encoder_blocks(model: nn.Module) -> Blocks:
    prefix = ENCODER_FAMILY[type(model).__name__]
    base = getattr(model, prefix)
    blocks: Blocks = [(f"{prefix}.embeddings", base.embeddings)]
    blocks += [
        (f"{prefix}.encoder.layer.{i}", EncoderLayerBlock(layer))
        for i, layer in enumerate(base.encoder.layer)
    ]
    if prefix == "bert":
        blocks += [("bert.pooler", base.pooler), ("classifier", PooledHead(model.dropout,
                                                                           model.classifier))]
    else:  # RoBERTa's head reads the first token itself
        blocks += [("classifier", model.classifier)]
    return blocks


ENCODER = register_adapter(
    Adapter(
        name="transformers encoder classifier (BERT, RoBERTa)",
        matches=_matches,
        blocks=encoder_blocks,
        output=lambda out: out.logits,
        loss=classification_loss,
        example_target=class_index_target,
        check=_check,
    )
)
