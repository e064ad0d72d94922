"""Small, readable reference models (nanoGPT style) used by tests, examples and benchmarks.

All are deterministic (no dropout) so that traced gradients can be compared with eager autograd.
"""

from tfcompile.models.convnext import ConvNeXt, ConvNeXtBlock
from tfcompile.models.llama import Llama, LlamaBlock, LlamaConfig, RMSNorm
from tfcompile.models.mlp import MLP
from tfcompile.models.vit import ViT, ViTBlock

__all__ = [
    "MLP",
    "ConvNeXt",
    "ConvNeXtBlock",
    "Llama",
    "LlamaBlock",
    "LlamaConfig",
    "RMSNorm",
    "ViT",
    "ViTBlock",
]
