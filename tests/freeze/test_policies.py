"""Group selection and the baselines' decision rules against hand-computed values."""

import math

import pytest
import torch

from tfcompile.freeze.policies import (
    APF,
    AutoFreeze,
    FreezeOut,
    frozen_fraction,
    metric_order,
    normalised_costs,
    random_order,
    select_by_cost,
)

COSTS = {"a": 1.0, "b": 2.0, "c": 3.0}


# ------------------------------------------------------------------ timely selection
def test_greedy_selection_is_closest_in_cost() -> None:
    # target = 0.5 * 6 = 3: from c first, c alone hits it; from a first, a + b does
    assert select_by_cost(["c", "a", "b"], COSTS, 0.5) == {"c"}
    assert select_by_cost(["a", "b", "c"], COSTS, 0.5) == {"a", "b"}
    # target 1: b (2) is as far as nothing (a tie is not taken), a hits it
    assert select_by_cost(["b", "a", "c"], COSTS, 1 / 6) == {"a"}
    assert select_by_cost(["a", "b", "c"], COSTS, 1.0) == {"a", "b", "c"}
    assert select_by_cost(["a", "b", "c"], COSTS, 0.0) == set()


def test_zero_cost_groups_are_never_frozen() -> None:
    costs = {"x": 0.0, "y": 1.0}
    assert select_by_cost(["x", "y"], costs, 1.0) == {"y"}


def test_actual_fraction_is_cost_weighted() -> None:
    assert frozen_fraction(frozenset({"c"}), COSTS) == pytest.approx(0.5)
    assert frozen_fraction(frozenset(), COSTS) == 0.0


def test_missing_costs_fall_back_to_equal_weights() -> None:
    assert normalised_costs({"a": 0, "b": 0}) == {"a": 1.0, "b": 1.0}
    assert normalised_costs({"a": -1, "b": 2}) == {"a": 0.0, "b": 2.0}


def test_random_order_is_seeded_and_rotates() -> None:
    groups = [f"g{i}" for i in range(8)]
    first = random_order(groups, 0, 3, 1, 2)
    assert sorted(first) == groups
    assert first == random_order(groups, 0, 3, 1, 2)
    others = {tuple(random_order(groups, 0, d, 1, 2)) for d in range(6)}
    assert len(others) > 1
    assert random_order(groups, 1, 3, 1, 2) != first or random_order(groups, 2, 3, 1, 2) != first


def test_metric_order_puts_unscored_last_in_forward_order() -> None:
    order = metric_order(["a", "b", "c", "d"], {"a": 0.5, "b": None, "c": 0.1})
    assert order == ["c", "a", "b", "d"]


# ------------------------------------------------------------------ APF
def _apf_params(value: list[float]) -> dict:
    return {(0, "g"): [torch.tensor(value)]}


def test_apf_effective_perturbation_hand_computed() -> None:
    apf = APF(ema=0.5, threshold=0.5, check_every=10, freezes=False)
    apf.check(0, _apf_params([0.0, 0.0]))  # snapshot only
    assert apf.stability()[(0, "g")] is None
    apf.check(10, _apf_params([1.0, 2.0]))  # delta (1, 2): E = (.5, 1), A = (.5, 1)
    assert apf.stability()[(0, "g")] == pytest.approx(1.0)
    apf.check(20, _apf_params([0.0, 2.0]))  # delta (-1, 0): E = (-.25, .5), A = (.75, .5)
    assert apf.stability()[(0, "g")] == pytest.approx((0.25 + 0.5) / (0.75 + 0.5))
    apf.check(30, _apf_params([1.0, 2.0]))  # delta (1, 0): E = (.375, .25), A = (.875, .25)
    assert apf.stability()[(0, "g")] == pytest.approx((0.375 + 0.25) / (0.875 + 0.25))


def test_apf_period_grows_while_stable_halves_when_not() -> None:
    apf = APF(ema=0.5, threshold=0.6, check_every=10, freezes=True)
    key = (0, "g")
    apf.check(0, _apf_params([0.0]))
    apf.check(10, _apf_params([1.0]))  # P = 1: unstable, period stays 0
    assert apf.groups[key].period == 0 and apf.frozen(10) == set()
    apf.check(20, _apf_params([0.0]))  # E=-.25, A=.75: P = 1/3 < .6 -> freeze 1 interval
    assert apf.groups[key].period == 1
    assert apf.frozen(20) == {key} and apf.frozen(29) == {key} and apf.frozen(30) == set()
    apf.check(30, _apf_params([0.0]))  # just unfrozen: only re-snapshots, no verdict
    assert apf.groups[key].period == 1 and apf.frozen(30) == set()
    apf.check(40, _apf_params([1.0]))  # E=.375, A=.875: P = 3/7 < .6 -> period 2
    assert apf.groups[key].period == 2 and apf.frozen(59) == {key} and apf.frozen(60) == set()
    apf.check(50, _apf_params([5.0]))  # frozen: ignored, even if the value changed
    apf.check(60, _apf_params([1.0]))
    apf.check(70, _apf_params([3.0]))  # E=.1875+1, A=.4375+1: P ~ .83 -> halves
    assert apf.stability()[key] == pytest.approx(1.1875 / 1.4375)
    assert apf.groups[key].period == 1 and apf.frozen(70) == set()


def test_apf_state_round_trip() -> None:
    apf = APF(ema=0.5, threshold=0.6, check_every=10, freezes=True)
    for step, v in [(0, 0.0), (10, 1.0), (20, 0.0)]:
        apf.check(step, _apf_params([v]))
    other = APF(ema=0.5, threshold=0.6, check_every=10, freezes=True)
    other.load_state_dict(apf.state_dict())
    for a in (apf, other):
        a.check(30, _apf_params([0.0]))
        a.check(40, _apf_params([1.0]))
    assert other.stability() == apf.stability()
    assert other.frozen(45) == apf.frozen(45)


# ------------------------------------------------------------------ AutoFreeze
ORDER = [(0, "l0"), (0, "l1"), (1, "l2"), (1, "l3")]


def _interval(af: AutoFreeze, norms: list[float], steps: int = 2) -> None:
    for _ in range(steps):
        af.observe(dict(zip(ORDER, norms)))


def test_autofreeze_change_and_prefix_hand_computed() -> None:
    af = AutoFreeze(percentile=50.0, freezes=True)
    _interval(af, [10.0, 10.0, 10.0, 10.0])
    af.end_interval()
    assert af.change == {}  # no previous interval yet
    assert af.advance_prefix(ORDER) == 0
    # changes: l0 |9-10|/10 = .1, l1 .5, l2 .05, l3 .8 -> median (.1 + .5) / 2 = .3
    _interval(af, [9.0, 15.0, 10.5, 2.0])
    changes = af.end_interval()
    assert changes == pytest.approx({ORDER[0]: 0.1, ORDER[1]: 0.5, ORDER[2]: 0.05, ORDER[3]: 0.8})
    # l0 (.1 < .3) freezes; l1 (.5) stops the walk although l2 (.05) is below: prefix only
    assert af.advance_prefix(ORDER) == 1
    assert af.frozen(ORDER) == {ORDER[0]}


def test_autofreeze_is_monotonic_and_keeps_one_layer_training() -> None:
    af = AutoFreeze(percentile=50.0, freezes=True)
    af.frozen_prefix = 1
    af.previous = dict(zip(ORDER, [1.0, 1.0, 1.0, 1.0]))
    # l0 is frozen and now changes a lot: it stays frozen; among l1..l3 changes .0, .1, .2
    _interval(af, [9.0, 1.0, 1.1, 1.2])
    af.end_interval()
    assert af.advance_prefix(ORDER) == 2  # median .1: l1 (0) < .1, l2 (.1) is not
    for _ in range(10):
        _interval(af, [1.0, 1.0, 1.0, 1.0])
        af.end_interval()
        af.advance_prefix(ORDER)
    assert af.frozen_prefix < len(ORDER)  # the percentile of one value is never above it


def test_autofreeze_interval_norm_is_the_mean_of_observed_steps() -> None:
    af = AutoFreeze(percentile=50.0, freezes=False)
    af.observe({ORDER[0]: 2.0, ORDER[1]: 1.0})
    af.observe({ORDER[0]: 4.0})  # l1 frozen this step (hybrid): not observed
    assert af.interval_norms() == {ORDER[0]: 3.0, ORDER[1]: 1.0}
    af.frozen_prefix = 0
    assert af.advance_prefix(ORDER) == 0  # freezes=False never freezes


# ------------------------------------------------------------------ FreezeOut
def test_freezeout_schedule_linear() -> None:
    fo = FreezeOut(["a", "b", "c"], t0=0.5, schedule="linear", total_steps=100)
    assert fo.fraction == pytest.approx({"a": 0.5, "b": 0.75, "c": 1.0})
    assert fo.frozen(49) == set()
    assert fo.frozen(50) == {"a"}
    assert fo.frozen(75) == {"a", "b"}
    assert fo.frozen(10_000) == {"a", "b"}  # the last layer is never frozen


def test_freezeout_cubic_and_lr_factor() -> None:
    fo = FreezeOut(["a", "b", "c"], t0=0.8, schedule="cubic", total_steps=1000)
    assert fo.fraction["a"] == pytest.approx(0.512)
    assert fo.fraction["b"] == pytest.approx(0.9**3)
    assert fo.freeze_step["a"] == 512
    assert fo.lr_factor("a", 0, scaled=False) == pytest.approx(1.0)
    assert fo.lr_factor("a", 256, scaled=False) == pytest.approx(0.5)
    assert fo.lr_factor("a", 512, scaled=False) == pytest.approx(0.0, abs=1e-12)
    assert fo.lr_factor("a", 0) == pytest.approx(1 / 0.512)
    assert math.isclose(fo.lr_factor("c", 500, scaled=False), 0.5 * (1 + math.cos(math.pi / 2)))
