"""The default losses of the adapted families, computed as the libraries compute their own."""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, as transformers' ``ForCausalLMLoss``: position t predicts label
    t+1, labels equal to -100 are ignored, the mean is over the remaining tokens, in float32.

    logits: (batch, seq, vocab) float; labels: (batch, seq) int64 (usually the input ids).
    Returns a float32 scalar.
    """
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return F.cross_entropy(
        logits.flatten(0, -2).float(), shifted.flatten(), ignore_index=IGNORE_INDEX
    )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy of (batch, classes) logits against (batch,) int64 labels (-100 ignored),
    as transformers' single-label sequence classification. Returns a float32 scalar."""
    return F.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX
    )
