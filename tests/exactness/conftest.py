"""Shared fixtures of the exactness tests (issue 11).

`stage_programs(pipe)` is the one place that knows how a Pipeline exposes its per-stage
programs (``pipe.stage_programs``, formerly ``pipe.programs``); tests get it as a fixture, the
torchrun worker imports this file by path. Numerical helpers live in exact_helpers.py.
"""

from __future__ import annotations

import pytest


def stage_programs(pipe) -> dict:
    """stage index -> traced program of a Pipeline, under the new or the old attribute name."""
    progs = getattr(pipe, "stage_programs", None)
    if progs is None:
        progs = pipe.programs
    return progs


@pytest.fixture(name="stage_programs")
def _stage_programs_fixture():
    return stage_programs
