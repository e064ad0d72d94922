"""Ratio -> groups: error diffusion across a stage's microbatches, the cap, and what really ran.

The end-to-end tests drive the single-process pipeline (all stages in one process) and read
each StageProgram's ``region_calls`` to check that frozen groups skip their W regions and that
the controller's reported actual ratio is the cost-weighted share of regions that did not run.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile import FreezeConfig
from tfcompile.freeze.controller import Freezer
from tfcompile.freeze.policies import frozen_fraction, select_by_cost, select_for_stage
from tfcompile.freeze.policies.selection import (
    MAX_ENUMERATED_GROUPS,
    achievable_ratios,
    groups_with_ratio,
    snap_to_achievable,
)
from tfcompile.models.llama import Llama, LlamaConfig


def test_closest_set_can_exceed_the_cap_but_the_stage_average_does_not():
    costs = {"big": 99.0, "small": 1.0}
    order = ["big", "small"]
    # the old rule: closest to 0.9 is {big} = 0.99 > cap 0.9, in every microbatch
    assert select_by_cost(order, costs, 0.9) == {"big"}
    chosen = select_for_stage([order] * 4, costs, [0.9] * 4, cap=0.9)
    ratios = [frozen_fraction(c, costs) for c in chosen]
    assert sum(ratios) / 4 <= 0.9
    assert sum(ratios) / 4 == pytest.approx((3 * 0.99 + 0.01) / 4)
    assert select_by_cost(order, costs, 0.9, limit=0.5) == {"small"}


def test_error_diffusion_follows_the_average_target():
    costs = {f"g{i}": 1.0 for i in range(3)}  # thirds: 0.5 cannot be hit in one microbatch
    order = list(costs)
    chosen = select_for_stage([order] * 6, costs, [0.5] * 6, cap=0.9)
    ratios = [frozen_fraction(c, costs) for c in chosen]
    assert sum(ratios) / 6 == pytest.approx(0.5)
    assert len(set(ratios)) > 1  # alternates between 1/3 and 2/3


def test_unplanned_microbatches_stay_unfrozen():
    costs = {"a": 1.0, "b": 1.0}
    chosen = select_for_stage([["a", "b"]] * 4, costs, [1.0, 0.0, 0.25, 0.0], cap=0.9)
    assert chosen[1] == frozenset() and chosen[3] == frozenset()
    assert chosen[0] == {"a", "b"}


@pytest.mark.parametrize("seed", range(40))
def test_random_targets_never_exceed_the_cap(seed):
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(rng.randint(1, 6))]
    costs = {g: rng.choice([0.0, rng.uniform(0.1, 10.0)]) for g in groups}
    if sum(costs.values()) == 0:
        costs[groups[0]] = 1.0
    microbatches = rng.randint(1, 8)
    cap = rng.uniform(0.1, 1.0)
    # targets as the LP gives them: each in [0, 1], stage average at most the cap
    targets = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(microbatches)]
    scale = min(1.0, cap * microbatches / max(sum(targets), 1e-9))
    targets = [t * scale for t in targets]
    orders = [rng.sample(groups, len(groups)) for _ in range(microbatches)]
    chosen = select_for_stage(orders, costs, targets, cap)
    achieved = [frozen_fraction(c, costs) for c in chosen]
    assert sum(achieved) / microbatches <= cap + 1e-9
    for t, c in zip(targets, chosen):
        assert t > 0 or not c
        assert all(costs[g] > 0 for g in c)


# ----------------------------------------------------------------- end to end
M = 4


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def build(freeze: FreezeConfig):
    torch.manual_seed(0)
    model = Llama(
        LlamaConfig(vocab_size=48, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)
    )
    example = torch.zeros(2, 8, dtype=torch.long)
    return tfcompile.compile(
        model,
        schedule="1F1B",
        stages=2,
        microbatches=M,
        example_inputs=(example,),
        loss_fn=lm_loss,
        example_target=example,
        freeze=freeze,
    )


def step_and_count(pipe, step):
    """One step; returns (frozen mapping, region runs per stage and group during it)."""
    before = {s: dict(p.region_calls) for s, p in pipe.stage_programs.items()}
    x = torch.randint(0, 48, (8, 9), generator=torch.Generator().manual_seed(step))
    pipe.step(x[:, :-1], x[:, 1:])
    ran = {
        s: {g: p.region_calls[g] - before[s].get(g, 0) for g in p.groups}
        for s, p in pipe.stage_programs.items()
    }
    return pipe.last_frozen, ran


def check_step(pipe, frozen, ran, cap):
    freezer = pipe.freezer
    assert frozen == freezer.frozen
    for stage in pipe.local_stages:
        costs = freezer.costs[stage]
        for group in freezer.groups[stage]:
            skipped = sum(group in frozen.get((stage, m), ()) for m in range(M))
            assert ran[stage][group] == M - skipped, (stage, group)
        total = sum(costs.values())
        skipped_cost = sum(costs[g] * (M - ran[stage][g]) for g in costs)
        assert freezer.actual_ratios[stage] == pytest.approx(skipped_cost / (M * total))
        assert freezer.actual_ratios[stage] <= cap + 1e-9


class FixedPlanner:
    """Returns one plan whatever the measured profile."""

    def __init__(self, ratios):
        self.ratios = ratios

    def plan(self, costs):
        return SimpleNamespace(
            ratios=self.ratios, makespan=8.0, baseline_makespan=10.0, status="optimal"
        )

    def makespan(self, costs, ratios):
        return 8.0


def test_planned_ratios_skip_w_regions_and_report_what_ran():
    """A fixed plan (the LP's shape: mostly 0/1, stage average <= cap) through the runtime."""
    cap = 0.6
    plan_ratios = {(0, 0): 1.0, (0, 1): 1.0, (0, 2): 0.4, (1, 1): 0.9, (1, 2): 0.5, (1, 3): 0.9}
    cfg = FreezeConfig(
        policy="timely",
        warmup_steps=1,
        monitor_steps=1,
        ramp_steps=0,
        check_every=1,
        max_freeze_ratio=cap,
        total_steps=8,
    )
    pipe = build(cfg)
    pipe.freezer = Freezer.for_pipeline(cfg, pipe, planner=FixedPlanner(plan_ratios))
    phases = []
    for step in range(7):
        frozen, ran = step_and_count(pipe, step)
        phases.append(pipe.freezer.phase)
        if phases[-1] == "monitor_wmin":  # everything frozen: no W region ran at all
            assert all(n == 0 for per in ran.values() for n in per.values())
            continue
        if phases[-1] == "steady":
            check_step(pipe, frozen, ran, cap)
            for stage in pipe.local_stages:
                target = sum(plan_ratios.get((stage, m), 0.0) for m in range(M)) / M
                assert abs(pipe.freezer.actual_ratios[stage] - target) <= 0.2
                assert (stage, 3 if stage == 0 else 0) not in frozen  # planned 0 stays 0
    assert phases[:3] == ["warmup", "monitor_wmax", "monitor_wmin"]
    assert phases[3:] == ["steady"] * 4


def test_real_plan_respects_the_cap_end_to_end():
    cap = 0.5
    cfg = FreezeConfig(
        policy="timely",
        warmup_steps=1,
        monitor_steps=2,
        ramp_steps=2,
        check_every=1,
        max_freeze_ratio=cap,
        total_steps=10,
    )
    pipe = build(cfg)
    for step in range(9):
        frozen, ran = step_and_count(pipe, step)
        if pipe.freezer.phase in ("ramp", "steady"):
            check_step(pipe, frozen, ran, cap)
    assert pipe.freezer.plan is not None


# ----------------------------------------------------------------- whole groups, exactly
def test_achievable_ratios_are_the_subset_sums():
    costs = {"a": 1.0, "b": 1.0, "c": 2.0, "zero": 0.0}
    assert achievable_ratios(list(costs), costs) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    # a truncating stage only reaches its prefixes (zero-cost groups change nothing)
    assert achievable_ratios(["c", "zero", "a", "b"], costs, prefix=True) == pytest.approx(
        [0, 0.5, 0.75, 1.0]
    )
    many = {f"g{i}": 1.0 + i for i in range(MAX_ENUMERATED_GROUPS + 1)}
    assert achievable_ratios(list(many), many) is None  # fine enough: continuous


def test_snapped_ratios_follow_the_average_and_the_cap():
    # blocks of one stage of a 4-stage split: the embedding is nearly free, the block is all
    reachable = [0.0, 0.02, 0.98, 1.0]
    snapped = snap_to_achievable([0.75] * 4, reachable, cap=0.8)
    assert all(v in reachable for v in snapped)
    assert sum(snapped) / 4 <= 0.8 + 1e-12
    assert sum(snapped) / 4 == pytest.approx(0.75, abs=0.02)
    assert snap_to_achievable([0.0, 0.6, 0.0], reachable, cap=0.8)[::2] == [0.0, 0.0]
    # continuous: the targets, clipped by the running cap
    assert snap_to_achievable([1.0, 1.0], None, cap=0.5) == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize("seed", range(30))
def test_each_microbatch_freezes_exactly_its_snapped_ratio(seed):
    """The decisions run the ratios the prediction simulates: select_for_stage's sets have
    exactly snap_to_achievable's ratios, whatever the (random) candidate order."""
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(rng.randint(1, 7))]
    costs = {g: rng.choice([0.0, 1.0, 2.0, rng.uniform(0.1, 5.0)]) for g in groups}
    costs[groups[0]] = max(costs[groups[0]], 0.5)
    microbatches = rng.randint(1, 8)
    cap = rng.uniform(0.2, 1.0)
    targets = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(microbatches)]
    prefix = rng.random() < 0.3
    orders = [groups if prefix else rng.sample(groups, len(groups)) for _ in targets]
    chosen = select_for_stage(orders, costs, targets, cap, prefix=prefix)
    expected = snap_to_achievable(targets, achievable_ratios(groups, costs, prefix), cap)
    achieved = [frozen_fraction(c, costs) for c in chosen]
    assert achieved == pytest.approx(expected, abs=1e-9)
    if prefix:  # a frozen prefix of the forward order (zero-cost groups aside)
        for c in chosen:
            paid = [g for g in groups if costs[g] > 0]
            assert [g in c for g in paid] == sorted((g in c for g in paid), reverse=True)


def test_groups_with_ratio_prefers_the_order():
    costs = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert groups_with_ratio(["c", "b", "a"], costs, 2 / 3) == {"c", "b"}
    assert groups_with_ratio(["a", "b", "c"], costs, 2 / 3) == {"a", "b"}
    assert groups_with_ratio(["a", "b", "c"], costs, 0.5) is None
