"""transformers image classifiers: ViT, ConvNeXt, ConvNeXt V2 and ResNet (BatchNorm).

Blocks, named as in the model: the embeddings (ViT's ``vit.embeddings`` holds the class token
and the position embeddings: no parameter floats outside a block), one block per encoder layer
(ViT) or stage (ConvNeXt, ResNet), then the pooling head. Inputs: ``pixel_values`` (batch,
channels, height, width) float; no attention mask. The last block returns the logits
(batch, num_labels); the default loss is single-label cross entropy. BatchNorm (ResNet) keeps
its running statistics as the model's own buffers: training updates them as eager does and
``Pipeline.evaluate`` in eval mode uses them.
"""

from __future__ import annotations

import torch
from torch import nn

from tfcompile.adapters.base import Adapter, Blocks, class_index_target
from tfcompile.adapters.hf_encoder import EncoderLayerBlock
from tfcompile.adapters.losses import classification_loss
from tfcompile.adapters.registry import library_of, register_adapter

VISION_FAMILY = {
    "ViTForImageClassification": "vit",
    "ConvNextForImageClassification": "convnext",
    "ConvNextV2ForImageClassification": "convnextv2",
    "ResNetForImageClassification": "resnet",
}


class ClassTokenHead(nn.Module):
    """ViT's head: final layer norm, the class token, the classifier: (batch, tokens, dim) ->
    logits."""

    def __init__(self, norm: nn.Module, classifier: nn.Module):
        super().__init__()
        self.norm = norm
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(hidden)[:, 0, :])


class MeanPoolHead(nn.Module):
    """ConvNeXt's head: spatial mean, layer norm, classifier: (batch, C, H, W) -> logits."""

    def __init__(self, norm: nn.Module, classifier: nn.Module):
        super().__init__()
        self.norm = norm
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(hidden.mean([-2, -1])))


class PoolHead(nn.Module):
    """ResNet's head: adaptive average pool, then the classifier (flatten + linear)."""

    def __init__(self, pool: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pool = pool
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(hidden))


def vision_blocks(model: nn.Module) -> Blocks:
    prefix = VISION_FAMILY[type(model).__name__]
    base = getattr(model, prefix)
    if prefix == "vit":
        return [
            ("vit.embeddings", base.embeddings),
            *[(f"vit.layers.{i}", EncoderLayerBlock(layer)) for i, layer in enumerate(base.layers)],
            ("classifier", ClassTokenHead(base.layernorm, model.classifier)),
        ]
    if prefix == "resnet":
        first = [("resnet.embedder", base.embedder)]
        head = ("classifier", PoolHead(base.pooler, model.classifier))
    else:
        first = [(f"{prefix}.embeddings", base.embeddings)]
        head = ("classifier", MeanPoolHead(base.layernorm, model.classifier))
    stages = [(f"{prefix}.encoder.stages.{i}", s) for i, s in enumerate(base.encoder.stages)]
    return [*first, *stages, head]


def _matches(model: nn.Module) -> bool:
    return library_of(model) == "transformers" and type(model).__name__ in VISION_FAMILY


VISION = register_adapter(
    Adapter(
        name="transformers image classifier (ViT, ConvNeXt, ConvNeXt V2, ResNet)",
        matches=_matches,
        blocks=vision_blocks,
        output=lambda out: out.logits,
        loss=classification_loss,
        example_target=class_index_target,
    )
)
