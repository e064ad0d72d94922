"""Gradient semantics of partial freezing, per parameter group.

A group frozen in some microbatches of a step gets weight gradients from the others only.
Under ``grad="drop"`` they stay as they are (each microbatch's loss is seeded with 1/M, so the
gradient is the sum over the contributing ones / M); under ``grad="rescale"`` each use of a
group is scaled to the mean over the microbatches that contributed to it, before the uses of a
tied parameter are summed (see :func:`rescale_factors`). The per-group norms feed AutoFreeze.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

ActionKey = tuple[int, int]
GroupKey = tuple[int, str]
#: stage -> group -> model parameter names of the group
Members = Mapping[int, Mapping[str, Sequence[str]]]


def contributing_microbatches(
    members: Members, frozen: Mapping[ActionKey, frozenset[str]], num_microbatches: int
) -> dict[GroupKey, int]:
    """How many microbatches computed each group's weight gradient in the step."""
    counts: dict[GroupKey, int] = {}
    for stage, groups in members.items():
        for group in groups:
            frozen_in = sum(
                group in frozen.get((stage, m), frozenset()) for m in range(num_microbatches)
            )
            counts[(stage, group)] = num_microbatches - frozen_in
    return counts


def rescale_factors(
    contributing: Mapping[GroupKey, int], num_microbatches: int
) -> dict[GroupKey, float]:
    """``grad="rescale"``: the factor M / count of each group that only some microbatches
    contributed to (0 < count < M). The program applies it to the group's weight gradient of
    each microbatch before accumulating, so every use of a tied parameter is scaled by its
    own count before the uses are summed (in the stage, across stages, across ranks)."""
    return {
        key: num_microbatches / count
        for key, count in contributing.items()
        if 0 < count < num_microbatches
    }


def grad_norms(
    params: Mapping[str, torch.nn.Parameter],
    members: Members,
    contributing: Mapping[GroupKey, int],
    num_microbatches: int,
    dropped: bool,
) -> dict[GroupKey, float]:
    """Per-group gradient norm, normalised to a full-batch mean when ``dropped`` (``drop``:
    the gradient holds count / M of the microbatches); groups with no gradient are left out."""
    keys: list[GroupKey] = []
    norms: list[torch.Tensor] = []
    for (stage, group), count in contributing.items():
        grads = [
            params[n].grad
            for n in members[stage][group]
            if n in params and params[n].grad is not None
        ]
        if count <= 0 or not grads:
            continue
        scale = num_microbatches / count if dropped else 1.0
        squared = sum(g.detach().float().pow(2).sum().cpu() for g in grads)
        keys.append((stage, group))
        norms.append(torch.as_tensor(squared).sqrt() * scale)
    values = torch.stack(norms).tolist() if norms else []  # one device sync for all groups
    return dict(zip(keys, values))


def group_tensors(
    params: Mapping[str, torch.nn.Parameter], members: Members
) -> dict[GroupKey, list[torch.Tensor]]:
    """The parameters of each group (those this rank holds), for APF's stability check."""
    return {
        (stage, group): [params[n] for n in names if n in params]
        for stage, groups in members.items()
        for group, names in groups.items()
    }
