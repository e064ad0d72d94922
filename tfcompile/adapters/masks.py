"""Attention masks built with tensor ops only, from the hidden states' shape.

transformers builds its masks in ``masking_utils`` with Python control flow on tensor values
(padding detection, cache lengths), which a traced stage refuses. With no padding and no
cache those masks are plain functions of the sequence length; these builders compute the same
additive masks (0 where a query may attend, the dtype's minimum elsewhere, as transformers'
eager masks) with ``arange`` comparisons, so a decoder layer's block traces.
"""

from __future__ import annotations

import torch


def causal_mask(hidden: torch.Tensor, sliding_window: int | None = None) -> torch.Tensor:
    """Additive causal mask for hidden states of shape (batch, seq, dim).

    Returns a (1, 1, seq, seq) tensor of hidden's dtype: 0 where key ``k`` may be attended by
    query ``q`` (``k <= q``, and ``k > q - sliding_window`` with a window, as transformers'
    ``sliding_window_overlay``), ``torch.finfo(dtype).min`` elsewhere.
    """
    seq = hidden.shape[1]
    pos = torch.arange(seq, device=hidden.device)
    allowed = pos[None, :] <= pos[:, None]
    if sliding_window is not None:
        allowed = allowed & (pos[None, :] > pos[:, None] - sliding_window)
    full = torch.full((seq, seq), torch.finfo(hidden.dtype).min, dtype=hidden.dtype,
                      device=hidden.device)
    return full.masked_fill(allowed, 0.0)[None, None]


def position_ids(hidden: torch.Tensor) -> torch.Tensor:
    """Positions 0..seq-1 of hidden states (batch, seq, dim), shape (1, seq), int64 (no cache,
    no padding: what transformers uses then)."""
    return torch.arange(hidden.shape[1], device=hidden.device)[None]
