"""Cost profiles: per-stage (optionally per-microbatch) action times and communication.

Profile format (JSON)::

    {"stages": [{"F": 18.5, "I": 18.1, "W": 9.3}, ...], "comm": 0.6, "unit": "ms",
     "microbatches": [[{"F": .., "I": .., "W": ..}, ...per stage], ...per microbatch]}

``I`` is the input-gradient time and ``W`` the weight-gradient time with nothing frozen; a full
backward costs ``B = I + W``. A stage entry may give ``B`` instead of ``I`` (then
``I = B - W``). ``comm`` is added on every cross-rank edge. The optional ``microbatches`` table
overrides the per-stage entries for individual microbatches (entries may give a subset of keys).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tfcompile.errors import CostError


def _stage_entry(entry: Any, where: str, partial: bool = False) -> dict[str, float]:
    if not isinstance(entry, Mapping):
        raise CostError(f"{where}: expected a mapping with keys F, I, W, got {entry!r}")
    out: dict[str, float] = {}
    for key in ("F", "I", "W", "B"):
        if key in entry:
            try:
                val = float(entry[key])
            except (TypeError, ValueError):
                raise CostError(f"{where}: {key} must be a number, got {entry[key]!r}") from None
            if not math.isfinite(val) or val < 0:
                raise CostError(f"{where}: {key} must be a finite time >= 0, got {val}")
            out[key] = val
    unknown = set(entry) - {"F", "I", "W", "B"}
    if unknown:
        raise CostError(f"{where}: unknown keys {sorted(unknown)} (expected F, I, W, optional B)")
    if "I" not in out and "B" in out:
        if "W" not in out:
            raise CostError(f"{where}: a B time needs W too (I = B - W)")
        if out["B"] < out["W"]:
            raise CostError(f"{where}: B ({out['B']}) is smaller than W ({out['W']})")
        out["I"] = out["B"] - out["W"]
    out.pop("B", None)
    if not partial:
        missing = [k for k in ("F", "I", "W") if k not in out]
        if missing:
            raise CostError(f"{where}: missing {missing} (need F, I and W, or F, B and W)")
    return out


@dataclass
class CostProfile:
    """Per-stage times of F, I (input grad) and W (weight grad), plus a comm time."""

    stages: list[dict[str, float]]
    comm: float = 0.0
    unit: str = "ms"
    microbatches: list[list[dict[str, float]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.stages, Sequence) or isinstance(self.stages, str) or not self.stages:
            raise CostError("a cost profile needs a non-empty 'stages' list")
        self.stages = [_stage_entry(e, f"stages[{i}]") for i, e in enumerate(self.stages)]
        try:
            self.comm = float(self.comm)
        except (TypeError, ValueError):
            raise CostError(f"comm must be a number, got {self.comm!r}") from None
        if not math.isfinite(self.comm) or self.comm < 0:
            raise CostError(f"comm must be a finite time >= 0, got {self.comm}")
        if self.microbatches is not None:
            mbs = []
            for m, row in enumerate(self.microbatches):
                if not isinstance(row, Sequence) or len(row) != len(self.stages):
                    raise CostError(
                        f"microbatches[{m}] must list one entry per stage ({len(self.stages)})"
                    )
                mbs.append(
                    [_stage_entry(e, f"microbatches[{m}][{s}]", True) for s, e in enumerate(row)]
                )
            self.microbatches = mbs

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostProfile:
        if not isinstance(data, Mapping) or "stages" not in data:
            raise CostError("a cost profile is a mapping with a 'stages' list (and 'comm')")
        extra = set(data) - {"stages", "comm", "unit", "microbatches", "meta", "source"}
        if extra:
            raise CostError(f"unknown cost profile keys {sorted(extra)}")
        meta = dict(data.get("meta", {}))
        if "source" in data:
            meta["source"] = data["source"]
        return cls(
            list(data["stages"]),
            data.get("comm", 0.0),
            str(data.get("unit", "ms")),
            data.get("microbatches"),
            meta,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> CostProfile:
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise CostError(f"cost profile not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise CostError(f"cost profile {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def uniform(
        cls,
        stages: int,
        F: float = 1.0,
        I: float = 1.0,  # noqa: E741
        W: float = 1.0,
        comm: float = 0.0,
    ) -> CostProfile:
        """Every stage costs F, I, W (times in ms)."""
        return cls([{"F": F, "I": I, "W": W} for _ in range(stages)], comm)

    @classmethod
    def from_flops(
        cls,
        stage_flops: Sequence[Mapping[str, float]],
        flops_per_second: float,
        comm: float = 0.0,
        unit: str = "ms",
    ) -> CostProfile:
        """Estimate times from FLOP counts ``[{"F": flops, "I": flops, "W": flops}, ...]``."""
        if not flops_per_second or flops_per_second <= 0:
            raise CostError(f"flops_per_second must be > 0, got {flops_per_second}")
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}.get(unit)
        if scale is None:
            raise CostError(f"unit must be s, ms or us, got {unit!r}")
        stages = [
            {k: float(v) / flops_per_second * scale for k, v in e.items()} for e in stage_flops
        ]
        return cls(stages, comm, unit, meta={"source": "flops"})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stages": [dict(e) for e in self.stages],
            "comm": self.comm,
            "unit": self.unit,
        }
        if self.microbatches is not None:
            out["microbatches"] = [[dict(e) for e in row] for row in self.microbatches]
        if self.meta:
            out["meta"] = dict(self.meta)
        return out

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def arrays(self, num_stages: int, num_microbatches: int) -> dict[str, np.ndarray]:
        """``{"F", "I", "W"}`` -> float64 arrays of shape (stages, microbatches)."""
        if num_stages != len(self.stages):
            raise CostError(
                f"the cost profile has {len(self.stages)} stages but the schedule has "
                f"{num_stages}; give one F/I/W entry per stage"
            )
        out = {
            k: np.repeat(
                np.array([e[k] for e in self.stages], dtype=np.float64)[:, None],
                num_microbatches,
                axis=1,
            )
            for k in ("F", "I", "W")
        }
        if self.microbatches is not None:
            if len(self.microbatches) < num_microbatches:
                raise CostError(
                    f"the profile's microbatches table has {len(self.microbatches)} rows but "
                    f"the schedule has {num_microbatches} microbatches"
                )
            for m in range(num_microbatches):
                for s, e in enumerate(self.microbatches[m]):
                    for k, v in e.items():
                        out[k][s, m] = v
        return out


def as_profile(costs: Any) -> CostProfile:
    """Accept a CostProfile, a dict in profile format, or a path to a JSON profile."""
    if isinstance(costs, CostProfile):
        return costs
    if isinstance(costs, Mapping):
        return CostProfile.from_dict(costs)
    if isinstance(costs, (str, os.PathLike)):
        return CostProfile.load(costs)
    raise CostError(
        f"costs must be a CostProfile, a profile dict or a JSON path, got {type(costs).__name__}"
    )
