"""Freezing policies: which parameter groups an action freezes.

``selection`` turns an LP ratio into groups (TimelyFreeze); ``apf``, ``autofreeze`` and
``freezeout`` implement the baselines' published decision rules, and their metrics order the
candidates in the ``timely+apf`` and ``timely+autofreeze`` hybrids.
"""

from tfcompile.freeze.policies.apf import APF
from tfcompile.freeze.policies.autofreeze import AutoFreeze
from tfcompile.freeze.policies.freezeout import FreezeOut
from tfcompile.freeze.policies.selection import (
    achievable_ratios,
    frozen_fraction,
    groups_with_ratio,
    metric_order,
    normalised_costs,
    random_order,
    select_by_cost,
    select_for_stage,
    snap_to_achievable,
)

__all__ = [
    "APF",
    "AutoFreeze",
    "FreezeOut",
    "achievable_ratios",
    "frozen_fraction",
    "groups_with_ratio",
    "metric_order",
    "normalised_costs",
    "random_order",
    "select_by_cost",
    "select_for_stage",
    "snap_to_achievable",
]
