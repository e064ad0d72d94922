"""`FreezeLayout`: what the freezing controller needs to know about the pipeline, once.

The controller is built from this frozen description instead of holding the pipeline, so
that it can be tested with a layout written by hand and never calls back into the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GroupKey = tuple[int, str]


@dataclass(frozen=True)
class FreezeLayout:
    """This rank's share of the pipeline as the freezer sees it.

    ``schedule`` is the schedule as the runtime executes it (a full backward B runs as I then
    W), so that plans and predictions match what runs. ``members[stage][group]`` lists the
    model parameter names of each group of a local stage, groups in forward order;
    ``w_flops[stage][group]`` their weight-gradient FLOPs (relative W cost). On a
    ``truncating_stages`` stage the backward stops at the earliest unfrozen group (no input
    gradient to produce, e.g. token ids).
    """

    schedule: Any
    local_stages: tuple[int, ...]
    members: Mapping[int, Mapping[str, tuple[str, ...]]]
    w_flops: Mapping[int, Mapping[str, float]]
    truncating_stages: frozenset[int] = frozenset()

    @property
    def num_microbatches(self) -> int:
        return int(self.schedule.num_microbatches)

    @property
    def num_stages(self) -> int:
        return int(self.schedule.num_stages)

    def groups(self, stage: int) -> list[str]:
        """The groups of a local stage in forward order."""
        return list(self.members[stage])

    def local_order(self) -> list[GroupKey]:
        """Every local group in forward order (stage, then the stage's group order)."""
        return [(s, g) for s in self.local_stages for g in self.members[s]]

    @classmethod
    def of(
        cls,
        schedule: Any,
        members: Mapping[int, Mapping[str, Any]],
        w_flops: Mapping[int, Mapping[str, float]],
        truncating_stages: Any = (),
    ) -> FreezeLayout:
        """A layout from plain mappings; local stages are the keys of ``members``, sorted.
        A group without a FLOP count costs 0."""
        stages = tuple(sorted(int(s) for s in members))
        return cls(
            schedule,
            stages,
            {s: {g: tuple(names) for g, names in members[s].items()} for s in stages},
            {s: {g: float(w_flops[s].get(g, 0.0)) for g in members[s]} for s in stages},
            frozenset(int(s) for s in truncating_stages),
        )

    @classmethod
    def from_pipeline(cls, pipe: Any) -> FreezeLayout:
        """The layout of a compiled `tfcompile.runtime.Pipeline` (this rank's stages)."""
        stages = pipe.local_stages
        return cls.of(
            pipe.execution_schedule,
            {s: pipe.stage_groups(s) for s in stages},
            {s: pipe.group_costs(s) for s in stages},
            [s for s in stages if pipe.truncates_backward(s)],
        )
