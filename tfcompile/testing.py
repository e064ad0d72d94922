"""Small example stages shared by tests, golden graphs, the demo and the benchmarks.

``build_stage(name, dtype)`` returns a :class:`StageCase`: a module, example inputs (activations
that need a gradient have ``requires_grad`` set), and for loss stages a loss function and target.
``linear_freeze_pipeline`` is the tiny freezing pipeline of the hardening tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

import tfcompile
from tfcompile.models.convnext import ConvNeXtBlock
from tfcompile.models.llama import Llama, LlamaBlock, LlamaConfig
from tfcompile.models.mlp import MLP
from tfcompile.models.vit import ViTBlock

if TYPE_CHECKING:
    from tfcompile.freeze.config import FreezeConfig
    from tfcompile.runtime.pipeline import Pipeline


@dataclass
class StageCase:
    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    loss_fn: Callable | None = None
    target: torch.Tensor | None = None
    kwargs: dict = field(default_factory=dict)

    def make_inputs(self, seed: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """Fresh inputs (and target) of the same shapes/dtypes, for another microbatch."""
        g = torch.Generator().manual_seed(seed)
        xs = []
        for x in self.inputs:
            if x.is_floating_point():
                y = torch.randn(x.shape, generator=g, dtype=x.dtype)
                xs.append(y.requires_grad_(x.requires_grad))
            else:
                xs.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=g))
        t = self.target
        if t is not None:
            t = torch.randint(0, int(t.max()) + 1, t.shape, generator=g)
        return tuple(xs), t


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), target.flatten())


class EmbedTiedHead(nn.Module):
    """Embedding + one decoder block + tied LM head: a whole small LM as one stage."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(h)


def llama_config(dim: int = 32, n_layers: int = 1, vocab: int = 64, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, **kw)


def build_stage(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> StageCase:
    """Named example stages: mlp, llama_block, vit_block, convnext_block, embed_tied_head."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        m = MLP(16, 32, 8, n_layers=2).to(dtype)
        x = torch.randn(4, 16, generator=g, dtype=dtype).requires_grad_()
        return StageCase(name, m, (x,))
    if name == "llama_block":
        m = LlamaBlock(llama_config()).to(dtype)
        x = torch.randn(2, 8, 32, generator=g, dtype=dtype).requires_grad_()
        return StageCase(name, m, (x,))
    if name == "vit_block":
        m = ViTBlock(dim=32, n_heads=4).to(dtype)
        x = torch.randn(2, 17, 32, generator=g, dtype=dtype).requires_grad_()
        return StageCase(name, m, (x,))
    if name == "convnext_block":
        m = ConvNeXtBlock(dim=16).to(dtype)
        x = torch.randn(2, 16, 4, 4, generator=g, dtype=dtype).requires_grad_()
        return StageCase(name, m, (x,))
    if name == "embed_tied_head":
        cfg = llama_config(n_layers=1)
        m = EmbedTiedHead(cfg).to(dtype)
        tokens = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
        target = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
        return StageCase(name, m, (tokens,), loss_fn=lm_loss, target=target)
    raise ValueError(f"unknown stage case {name!r}")


STAGE_NAMES = ("mlp", "llama_block", "vit_block", "convnext_block", "embed_tied_head")


def split_llama(model: Llama, n_stages: int) -> list[nn.Module]:
    """Cut a Llama into `n_stages` sequential stage modules at block boundaries."""
    layers = list(model.layers)
    per = [len(layers) // n_stages + (i < len(layers) % n_stages) for i in range(n_stages)]
    stages: list[nn.Module] = []
    start = 0
    for i, k in enumerate(per):
        blocks = layers[start : start + k]
        start += k
        stages.append(
            _LlamaStage(
                model.tok_embeddings if i == 0 else None,
                blocks,
                model.norm if i == n_stages - 1 else None,
                model.output if i == n_stages - 1 else None,
            )
        )
    return stages


class _LlamaStage(nn.Module):
    def __init__(self, emb, blocks, norm, output):
        super().__init__()
        self.tok_embeddings = emb
        self.layers = nn.ModuleList(blocks)
        self.norm = norm
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
        for layer in self.layers:
            x = layer(x)
        if self.output is not None:
            x = self.output(self.norm(x))
        return x


def torchrun_verdicts(
    worker: Path, out: Path, cases: str, timeout: float, nproc: int = 2
) -> dict:
    """Run a test worker under torchrun (``nproc`` ranks, gloo) on ``cases`` (comma list) and
    collect each rank's verdicts, ``out/rank<r>.json`` ({} for a rank that wrote none), plus
    ``"log"``: the tail of the run's output, for the assertion messages. The worker gets
    ``--out``, ``--cases`` and ``--timeout`` (30 s less than ours, so it reports before we
    give up)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "--monitor-interval=1", str(worker), "--out", str(out),
           "--cases", cases, "--timeout", str(timeout - 30)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    verdicts: dict = {}
    for rank in range(nproc):
        path = Path(out) / f"rank{rank}.json"
        verdicts[rank] = json.loads(path.read_text()) if path.exists() else {}
    verdicts["log"] = result.stdout[-2000:] + result.stderr[-3000:]
    return verdicts


def linear_freeze_pipeline(freeze: FreezeConfig, layers: int) -> Pipeline:
    """A tiny freezing pipeline: ``layers`` Linear(8, 8) layers (seed 0) over 2 stages, 1F1B,
    2 microbatches, MSE loss, with ``freeze``. Several freezing tests need the same small
    model, differing only in its depth and freeze config, so it is built in one place; each
    test brings its own optimizer and training loop."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(layers)])
    return tfcompile.compile(
        model,
        schedule="1F1B",
        stages=2,
        microbatches=2,
        example_inputs=(torch.zeros(2, 8),),
        loss_fn=F.mse_loss,
        example_target=torch.zeros(2, 8),
        freeze=freeze,
    )
