"""TimelyFreeze's group selection: turn an action's freeze ratio into a set of groups.

The LP decides how much of an action's weight-gradient work to skip; the unit of freezing is a
parameter group whose W cost is known. A greedy pass over a candidate order keeps a group when
adding its cost brings the frozen total closer to ``ratio * total cost``. Plain TimelyFreeze
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
    order: Sequence[str], costs: Mapping[str, float], ratio: float
) -> frozenset[str]:
    """Groups from ``order`` whose summed cost is closest (greedily) to ``ratio`` of the total.

    Zero-cost groups are never picked: freezing them saves no time and only costs accuracy.
    """
    total = sum(costs[g] for g in order)
    target = ratio * total
    chosen: list[str] = []
    acc = 0.0
    for group in order:
        cost = costs[group]
        if cost <= 0.0:
            continue
        if abs(acc + cost - target) < abs(acc - target):
            chosen.append(group)
            acc += cost
    return frozenset(chosen)


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
