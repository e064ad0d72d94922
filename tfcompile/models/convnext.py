"""A small ConvNeXt-style network: depthwise 7x7 conv, LayerNorm, pointwise MLP, layer scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int = 32, mlp_ratio: int = 4, layer_scale: float = 1e-1):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        y = self.dwconv(x).permute(0, 2, 3, 1)  # channels last
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt for (B, 1, 8, 8) digit images."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, dim: int = 32, depth: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=2, stride=2)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x.mean(dim=(2, 3))))

    def pipeline_blocks(self) -> list[tuple[str, nn.Module]]:
        """The forward as a sequence of blocks, for cutting into pipeline stages."""
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]
        return [("stem", self.stem), *blocks, ("head", PooledHead(self))]


class PooledHead(nn.Module):
    """Global average pool + norm + linear head (the last pipeline block of a ConvNeXt)."""

    def __init__(self, net: ConvNeXt):
        super().__init__()
        self.norm = net.norm
        self.head = net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x.mean(dim=(2, 3))))
