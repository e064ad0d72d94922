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


#: Most groups (with a W cost) a stage may have for its reachable ratios to be enumerated
#: (2^14 subsets); a stage with more is fine-grained enough to be treated as continuous.
MAX_ENUMERATED_GROUPS = 14
#: Two ratios closer than this are the same ratio (sums of float costs are not exact).
RATIO_EPS = 1e-9


def achievable_ratios(
    order: Sequence[str], costs: Mapping[str, float], prefix: bool = False
) -> list[float] | None:
    """Every ratio one action of a stage can freeze exactly: the W cost of a set of groups
    over the stage's total, sorted, 0 and 1 included.

    With ``prefix`` (a truncating stage) only prefixes of ``order`` count. None when the stage
    has more than :data:`MAX_ENUMERATED_GROUPS` groups with a cost: then any ratio is treated
    as reachable. Zero-cost groups never change the ratio and are left out.
    """
    total = sum(max(float(costs[g]), 0.0) for g in order)
    paid = [max(float(costs[g]), 0.0) / total for g in order if costs[g] > 0.0] if total else []
    if prefix:
        sums = [0.0]
        for cost in paid:
            sums.append(sums[-1] + cost)
    elif len(paid) > MAX_ENUMERATED_GROUPS:
        return None
    else:
        sums = [0.0]
        for cost in paid:
            sums += [s + cost for s in sums]
    out: list[float] = []
    for value in sorted(min(s, 1.0) for s in sums):
        if not out or value - out[-1] > RATIO_EPS:
            out.append(value)
    return out


def snap_to_achievable(
    targets: Sequence[float], achievable: Sequence[float] | None, cap: float
) -> list[float]:
    """Per-microbatch ratios a stage can reach, following ``targets`` on average.

    Groups are coarse: with a few groups per stage the ratio closest to a target can sit far
    from it (and above the cap). Each microbatch with a positive target takes the reachable
    ratio closest to its target plus the shortfall (or minus the excess) carried from the
    earlier microbatches (error diffusion), so the stage's average tracks the average target;
    the running total never exceeds ``cap`` x the number of microbatches, so the average never
    exceeds the cap. Microbatches the plan leaves unfrozen (target 0) stay unfrozen: freezing
    them would cost accuracy without shortening the critical path. ``achievable`` None
    (continuous): the targets, clipped by the same running cap.
    """
    budget = cap * len(targets)
    carry = used = 0.0
    snapped: list[float] = []
    for target in targets:
        if target <= 0.0:
            snapped.append(0.0)
            continue
        aim = min(max(target + carry, 0.0), 1.0)
        limit = max(min(1.0, budget - used), 0.0)
        if achievable is None:
            value = min(aim, limit)
        else:
            fits = (v for v in achievable if v <= limit + RATIO_EPS)
            value = min(fits, key=lambda v: (abs(v - aim), v))
        carry += target - value
        used += value
        snapped.append(value)
    return snapped


def groups_with_ratio(
    order: Sequence[str], costs: Mapping[str, float], ratio: float, prefix: bool = False
) -> frozenset[str] | None:
    """The first set of groups (depth-first along ``order``, earlier groups preferred) whose
    W cost is ``ratio`` of the stage's; a prefix of ``order`` with ``prefix``. None when no
    set has that ratio."""
    total = sum(max(float(costs[g]), 0.0) for g in order)
    if ratio <= RATIO_EPS:
        return frozenset()
    if total <= 0.0:
        return None
    paid = [(g, float(costs[g]) / total) for g in order if costs[g] > 0.0]
    if prefix:
        acc = 0.0
        for i, (_, cost) in enumerate(paid):
            acc += cost
            if abs(acc - ratio) <= RATIO_EPS:
                return frozenset(g for g, _ in paid[: i + 1])
        return None
    # suffix sums bound the search: what the remaining groups can still add
    rest = [0.0] * (len(paid) + 1)
    for i in range(len(paid) - 1, -1, -1):
        rest[i] = rest[i + 1] + paid[i][1]
    chosen: list[str] = []

    def search(i: int, need: float) -> bool:
        if abs(need) <= RATIO_EPS:
            return True
        if i == len(paid) or need > rest[i] + RATIO_EPS:
            return False
        group, cost = paid[i]
        if cost <= need + RATIO_EPS:
            chosen.append(group)
            if search(i + 1, need - cost):
                return True
            chosen.pop()
        return search(i + 1, need)

    return frozenset(chosen) if search(0, ratio) else None


def select_for_stage(
    orders: Sequence[Sequence[str]],
    costs: Mapping[str, float],
    targets: Sequence[float],
    cap: float,
    prefix: bool = False,
) -> list[frozenset[str]]:
    """One group set per microbatch of a stage, following the targets on average.

    The ratios come from :func:`snap_to_achievable` (error diffusion onto the ratios the
    groups can reach exactly; see there), so a plan snapped the same way predicts what runs;
    each microbatch then freezes the first set along its own ``order`` (random for plain
    TimelyFreeze, most converged first for the hybrids) with exactly that ratio. A stage with
    too many groups to enumerate falls back to the greedy choice along ``order``.
    """
    if orders:
        reachable = achievable_ratios(orders[0], costs, prefix)
        if reachable is not None:
            snapped = snap_to_achievable(targets, reachable, cap)
            chosen = [
                groups_with_ratio(order, costs, value, prefix)
                for order, value in zip(orders, snapped, strict=True)
            ]
            if all(c is not None for c in chosen):
                return chosen  # type: ignore[return-value]
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
