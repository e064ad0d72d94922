"""timm image classifiers: VisionTransformer, ConvNeXt (V1 and V2: one class, ``use_grn``) and
ResNet (BatchNorm).

Blocks, named as in the model, following timm's ``forward_features`` then ``forward_head``:

- VisionTransformer: ``patch_embed`` (the patch embedding, then the class/register tokens and
  the position embeddings, which are parameters of the model itself and of no child module,
  then ``patch_drop`` and ``norm_pre``: :class:`ViTEmbed`), ``blocks.i``, and ``head`` (final
  ``norm``, token pooling, ``fc_norm``, ``head_drop``, ``head``: :class:`ViTHead`);
- ConvNeXt: ``stem``, ``stages.i`` (downsample and blocks), ``head`` (``norm_pre``, then
  timm's head module: pool, norm, classifier);
- ResNet: ``conv1`` (``conv1``, ``bn1``, ``act1``, ``maxpool``), ``layerN.i`` (one block per
  residual block), ``fc`` (``global_pool``, dropout, ``fc``).

Input: images (batch, channels, height, width) float, the model's ``forward(x)``. The last
block returns the logits (batch, num_classes); the default loss is cross entropy (ignore
index -100). BatchNorm keeps its running statistics as the model's own buffers. The wrappers
are not children of the model, so where they apply dropout themselves (ResNet's
``drop_rate``) they follow the training mode of a module they wrap.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tfcompile.adapters.base import Adapter, Blocks, class_index_target
from tfcompile.adapters.losses import classification_loss
from tfcompile.adapters.registry import library_of, register_adapter
from tfcompile.errors import RuntimeConfigError

TIMM_FAMILY = ("VisionTransformer", "ConvNeXt", "ResNet")


class ViTEmbed(nn.Module):
    """timm ViT's embedding: (batch, C, H, W) -> tokens (batch, prefix + patches, dim).

    Holds the model's ``cls_token``, ``reg_token`` and ``pos_embed`` Parameters themselves (the
    same objects, so they keep the model's names), and computes ``VisionTransformer._pos_embed``
    (fixed image size): prefix tokens concatenated before or after adding the position
    embedding, as ``no_embed_class`` says.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.patch_embed = model.patch_embed
        self.pos_drop = model.pos_drop
        self.patch_drop = model.patch_drop
        self.norm_pre = model.norm_pre
        self.cls_token = model.cls_token
        self.reg_token = model.reg_token
        self.pos_embed = model.pos_embed
        self.no_embed_class = model.no_embed_class

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = x.view(x.shape[0], -1, x.shape[-1])
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token)
                  if t is not None]
        if self.pos_embed is None:  # timm returns here, before pos_drop
            return self.norm_pre(self.patch_drop(torch.cat([*prefix, x], dim=1)))
        if self.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))


class ViTHead(nn.Module):
    """timm ViT's head: final norm, pooling over tokens (``global_pool``: "token", "avg",
    "max", "avgmax", "" or an attention pool), ``fc_norm``, dropout, classifier:
    (batch, tokens, dim) -> logits (batch, num_classes). Pooling as timm's ``global_pool_nlc``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.norm = model.norm
        self.attn_pool = model.attn_pool
        self.fc_norm = model.fc_norm
        self.head_drop = model.head_drop
        self.head = model.head
        self.global_pool = model.global_pool
        self.num_prefix_tokens = model.num_prefix_tokens
        self.pool_include_prefix = model.pool_include_prefix

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        body = x if self.pool_include_prefix else x[:, self.num_prefix_tokens:]
        if self.attn_pool is not None:
            return self.attn_pool(body)
        if not self.global_pool:
            return x
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return body.mean(dim=1)
        if self.global_pool == "max":
            return body.amax(dim=1)
        return 0.5 * (body.amax(dim=1) + body.mean(dim=1))  # "avgmax" (check() refuses others)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.fc_norm(self.pool(self.norm(tokens)))))


class ResNetStem(nn.Module):
    """timm ResNet's stem: ``conv1`` (a conv or a deep-stem Sequential), ``bn1``, ``act1``,
    ``maxpool``: (batch, C, H, W) -> (batch, stem_width, H/4, W/4)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.conv1 = model.conv1
        self.bn1 = model.bn1
        self.act1 = model.act1
        self.maxpool = model.maxpool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(images))))


class ResNetHead(nn.Module):
    """timm ResNet's head: ``global_pool`` (pool and flatten), dropout (``drop_rate``), ``fc``:
    (batch, C, H, W) -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.global_pool = model.global_pool
        self.fc = model.fc
        self.drop_rate = float(model.drop_rate)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(features)
        if self.drop_rate:  # the model's mode reaches this wrapper through its fc
            x = F.dropout(x, p=self.drop_rate, training=self.fc.training)
        return self.fc(x)


class ConvNeXtHead(nn.Module):
    """timm ConvNeXt's ``norm_pre`` (identity unless ``head_norm_first``), then its head
    module (pool, norm, classifier): (batch, C, H, W) -> logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.norm_pre = model.norm_pre
        self.head = model.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm_pre(features))


def timm_blocks(model: nn.Module) -> Blocks:
    kind = type(model).__name__
    if kind == "VisionTransformer":
        return [
            ("patch_embed", ViTEmbed(model)),
            *[(f"blocks.{i}", block) for i, block in enumerate(model.blocks)],
            ("head", ViTHead(model)),
        ]
    if kind == "ConvNeXt":
        return [
            ("stem", model.stem),
            *[(f"stages.{i}", stage) for i, stage in enumerate(model.stages)],
            ("head", ConvNeXtHead(model)),
        ]
    residual = [(f"layer{n}.{i}", block) for n in range(1, 5)
                for i, block in enumerate(getattr(model, f"layer{n}"))]
    return [("conv1", ResNetStem(model)), *residual, ("fc", ResNetHead(model))]


def _check(model: nn.Module) -> None:
    if type(model).__name__ != "VisionTransformer":
        return
    if getattr(model, "dynamic_img_size", False):
        raise RuntimeConfigError(
            "VisionTransformer has dynamic_img_size=True (position embeddings resampled per "
            "input size): the timm adapter pipelines a fixed image size; build it with "
            "dynamic_img_size=False"
        )
    if model.attn_pool is None and model.global_pool not in ("", "token", "avg", "max",
                                                             "avgmax"):
        raise RuntimeConfigError(
            f"VisionTransformer has global_pool={model.global_pool!r}, which the timm adapter "
            "does not know: use 'token', 'avg', 'max', 'avgmax', 'map' or ''"
        )


def _matches(model: nn.Module) -> bool:
    return library_of(model) == "timm" and type(model).__name__ in TIMM_FAMILY


TIMM = register_adapter(
    Adapter(
        name="timm image classifier (VisionTransformer, ConvNeXt, ResNet)",
        matches=_matches,
        blocks=timm_blocks,
        output=lambda out: out,
        loss=classification_loss,
        example_target=class_index_target,
        check=_check,
    )
)
