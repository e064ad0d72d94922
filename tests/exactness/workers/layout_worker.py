"""Run under torchrun (2 ranks, gloo) by tests/exactness/test_exactness_dist_layout.py.

Issue 11 kinds 2, 4 and 8 across ranks: a stage starting with an in-place op on the received
activation, a loss_fn with a learnable parameter on the last rank, a channels-last stage
boundary (the gradient arrives over gloo contiguous and is re-strided). Each case trains two
AdamW steps with tfcompile and with eager on deep copies (every rank trains the eager copy
in-process) and writes one JSON verdict per rank: {case: {"err": worst error, "error": ...}}.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
import worker_main  # beside this script (torchrun puts its folder on sys.path)
from torch import nn

import tfcompile


class LayerScaleCL(nn.Module):
    """ConvNeXt-v1-like block whose output has channels-last strides."""

    def __init__(self, c=6):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.fc = nn.Linear(c, c)
        self.ls = nn.Parameter(torch.full((c,), 0.3))

    def forward(self, x):
        h = (self.ls * self.fc(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return h + x.contiguous(memory_format=torch.channels_last)


class TempLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.class_w = torch.tensor([1.0, 0.5, 2.0])  # plain attribute: a constant
        self.t = nn.Parameter(torch.tensor(0.7))

    def forward(self, o, y):
        return F.cross_entropy(o / self.t, y, weight=self.class_w)


def train(model, loss_fn, X, Y, split_points, steps=2) -> float:
    ref = copy.deepcopy(model)
    ref_loss = copy.deepcopy(loss_fn) if isinstance(loss_fn, nn.Module) else loss_fn
    pipe = tfcompile.compile(model, schedule="1F1B", microbatches=2, example_inputs=(X[:2],),
                             loss_fn=loss_fn, example_target=Y[:2], split_points=split_points)
    refs = dict(ref.named_parameters())
    if isinstance(loss_fn, nn.Module):
        refs.update((f"loss_fn.{n}", p) for n, p in ref_loss.named_parameters())
    mine = dict(pipe.named_parameters())
    opt = torch.optim.AdamW(mine.values(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(refs.values(), lr=1e-2, weight_decay=0.1)
    err = 0.0
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
        pipe.step(X, Y)
        for a, b in zip(X.chunk(2), Y.chunk(2)):
            (ref_loss(ref(a), b) / 2).backward()
        for n, p in mine.items():
            if p.grad is None or refs[n].grad is None:
                return float("inf")
            err = max(err, (p.grad - refs[n].grad).abs().max().item())
        opt.step()
        ref_opt.step()
        for n, p in mine.items():
            err = max(err, (p.detach() - refs[n].detach()).abs().max().item())
    rank = int(os.environ["RANK"])
    if rank == 1 and isinstance(loss_fn, nn.Module) and "loss_fn.t" not in mine:
        return float("inf")  # the loss parameter belongs to the last stage's rank
    pipe.close()
    return err


def case_k2_inplace_first_op(_schedule: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 8), nn.ReLU(inplace=True),
                          nn.Linear(8, 3))
    X, Y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    return {"err": train(model, F.cross_entropy, X, Y, ["2"])}


def case_k4_loss_parameter(_schedule: str) -> dict:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    X, Y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    return {"err": train(model, TempLoss(), X, Y, ["2"])}


def case_k8_channels_last_boundary(_schedule: str) -> dict:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), LayerScaleCL(), LayerScaleCL(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    X, Y = torch.randn(4, 3, 3, 5), torch.randint(0, 3, (4,))
    return {"err": train(model, F.cross_entropy, X, Y, ["2"])}


CASES = {
    "k2_inplace_first_op": case_k2_inplace_first_op,
    "k4_loss_parameter": case_k4_loss_parameter,
    "k8_channels_last_boundary": case_k8_channels_last_boundary,
}


if __name__ == "__main__":
    worker_main.main(CASES)
