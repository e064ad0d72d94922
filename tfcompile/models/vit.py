"""A small Vision Transformer (pre-norm blocks), sized for 8x8 digit images (sklearn digits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ViTBlock(nn.Module):
    def __init__(self, dim: int = 64, n_heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int, img_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed


class ViT(nn.Module):
    """ViT for (B, 1, 8, 8) images; 2x2 patches -> 16 tokens + class token."""

    def __init__(
        self,
        img_size: int = 8,
        patch: int = 2,
        in_chans: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 2,
        n_heads: int = 4,
    ):
        super().__init__()
        self.patch_embed = PatchEmbed(in_chans, dim, patch, img_size)
        self.blocks = nn.ModuleList(ViTBlock(dim, n_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])

    def pipeline_blocks(self) -> list[tuple[str, nn.Module]]:
        """The forward as a sequence of blocks, for cutting into pipeline stages."""
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]
        return [("patch_embed", self.patch_embed), *blocks, ("head", ClassTokenHead(self))]


class ClassTokenHead(nn.Module):
    """Final norm + linear head on the class token (the last pipeline block of a ViT)."""

    def __init__(self, vit: ViT):
        super().__init__()
        self.norm = vit.norm
        self.head = vit.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x)[:, 0])
