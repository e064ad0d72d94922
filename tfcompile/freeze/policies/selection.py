"""TimelyFreeze's group selection: turn an action's freeze ratio into a set of groups.

The LP decides how much of an action's weight-gradient work to skip; the unit of freezing is a
parameter group whose W cost is known. A greedy pass over a candidate order keeps a group when
adding its cost brings the frozen total closer to ``ratio * total cost``; across a stage's
microbatches the rounding error is carried forward (error diffusion, `select_for_stage`) so
that the stage's average follows the plan and never exceeds the cap. Plain TimelyFreeze
uses a random order that is a pure function of (seed, decision index, stage, microbatch), so
every rank and every resumed run agrees without shared RNG state, and the choice rotates at
each decision step. Hybrids pass a metric order instead (most converged group first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def normalised_costs(costs: Mapping[str, float]) -> dict[str, float]:
    """Costs as floats; all-zero or missing costs fall back to equal weights."""
    values = {g: max(float(c), 0.0) for g, c in costs.items()}
    if sum(values.values()) <= 0.0:
        return dict.fromkeys(values, 1.0)
    return values


def select_by_cost(
    order: Sequence[str],
    costs: Mapping[str, float],
    ratio: float,
    limit: float | None = None,
    prefix: bool = False,
) -> frozenset[str]:
    """Groups from ``order`` whose summed cost is closest (greedily) to ``ratio`` of the total.

    A group is kept when adding it brings the frozen total closer to the target and, when
    ``limit`` is given, keeps the frozen fraction at or below ``limit`` (the cap). Zero-cost
    groups are never picked: freezing them saves no time and only costs accuracy. With
    ``prefix`` the choice stops at the first group not taken, so it is a prefix of ``order``
    (zero-cost groups aside): on a stage whose backward is truncated at the earliest unfrozen
    group, only a frozen prefix saves the input-gradient work as well.
    """
    total = sum(costs[g] for g in order)
    if total <= 0.0:
        return frozenset()
    target = ratio * total
    bound = None if limit is None else limit * total * (1.0 + 1e-12)
    chosen: list[str] = []
    acc = 0.0
    for group in order:
        cost = costs[group]
        if cost <= 0.0:
            continue
        fits = bound is None or acc + cost <= bound
        if fits and abs(acc + cost - target) < abs(acc - target):
            chosen.append(group)
            acc += cost
        elif prefix:
            break
    return frozenset(chosen)


def select_for_stage(
    orders: Sequence[Sequence[str]],
    costs: Mapping[str, float],
    targets: Sequence[float],
    cap: float,
    prefix: bool = False,
) -> list[frozenset[str]]:
    """One group set per microbatch of a stage, following the targets on average (error diffusion).

    Groups are coarse: with a few groups per stage the set closest to ``r * total`` can sit
    far from ``r`` (and above the cap). Each microbatch with a positive target aims at its
    target plus the shortfall (or minus the excess) carried from the earlier microbatches, so
    the stage's average actual ratio tracks the average target; the running frozen total never
    exceeds ``cap`` x the number of microbatches, so the average never exceeds the cap.
    Microbatches the plan leaves unfrozen (target 0) stay unfrozen: freezing them would cost
    accuracy without shortening the critical path.
    """
    budget = cap * len(targets)
    carry = 0.0
    used = 0.0
    chosen: list[frozenset[str]] = []
    for order, target in zip(orders, targets, strict=True):
        if target <= 0.0:
            chosen.append(frozenset())
            continue
        aim = min(max(target + carry, 0.0), 1.0)
        limit = max(min(1.0, budget - used), 0.0)
        groups = select_by_cost(order, costs, aim, limit=limit, prefix=prefix)
        achieved = frozen_fraction(groups, costs)
        carry += target - achieved
        used += achieved
        chosen.append(groups)
    return chosen


def frozen_fraction(frozen: frozenset[str] | set[str], costs: Mapping[str, float]) -> float:
    """Actual freeze ratio of one action: frozen W cost over the stage's total W cost."""
    total = sum(costs.values())
    if total <= 0.0:
        return 0.0
    return sum(costs[g] for g in frozen if g in costs) / total


def random_order(
    groups: Sequence[str], seed: int, decision: int, stage: int, microbatch: int
) -> list[str]:
    """A permutation of ``groups`` fixed by (seed, decision index, stage, microbatch)."""
    rng = np.random.default_rng([seed, decision, stage, microbatch])
    return [groups[i] for i in rng.permutation(len(groups))]


def metric_order(groups: Sequence[str], score: Mapping[str, float | None]) -> list[str]:
    """Groups by ascending score (most converged first); unscored groups last, forward order."""
    position = {g: i for i, g in enumerate(groups)}

    def key(group: str) -> tuple[int, float, int]:
        value = score.get(group)
        if value is None:
            return (1, 0.0, position[group])
        return (0, float(value), position[group])

    return sorted(groups, key=key)
