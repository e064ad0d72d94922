"""Issue 11 kinds 1, 3, 6, 7 under torchrun (2 ranks, gloo): accumulation over two pipe.step()
calls, evaluation in eval mode with outputs on the last rank, tied weights under freezing
across ranks, a forward-only stage on its own rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfcompile.testing import torchrun_verdicts

WORKER = Path(__file__).parent / "workers" / "exactness_worker.py"
COMM_CASES = (
    "k1_accumulate_two_steps,k1_two_biases_two_steps,k6_frozen_everywhere,"
    "k6_rescale_per_use,k6_partial_freeze_two_steps"
)

pytestmark = pytest.mark.slow


def torchrun(out: Path, cases: str, timeout: float = 180) -> dict[int, dict]:
    return torchrun_verdicts(WORKER, out, cases, timeout)


@pytest.fixture(scope="module")
def comm_run(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("exact_comm"), COMM_CASES)


@pytest.fixture(scope="module")
def forward_only_run(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("exact_fwd"), "k7_forward_only,k3_evaluate_eval_mode")


def check(run: dict, case: str, atol: float = 1e-5) -> None:
    for rank in range(2):
        v = run[rank].get(case)
        assert v is not None, f"rank {rank} wrote no verdict for {case}:\n{run['log']}"
        assert v["error"] is None, (rank, v["error"], v.get("trace"))
        assert v["err"] <= atol, (rank, v)


def test_k1_accumulation_over_two_steps_under_torchrun(comm_run):
    check(comm_run, "k1_accumulate_two_steps")


def test_k1_two_biases_at_both_boundaries_two_steps_under_torchrun(comm_run):
    check(comm_run, "k1_two_biases_two_steps")


def test_k6_tied_weight_frozen_everywhere_keeps_grad_none_on_every_rank(comm_run):
    check(comm_run, "k6_frozen_everywhere", atol=0.0)


def test_k6_rescale_tied_weight_per_use_and_copies_bit_identical(comm_run):
    check(comm_run, "k6_rescale_per_use", atol=1e-6)


def test_k6_partial_freeze_drop_and_rescale_two_adamw_steps_under_torchrun(comm_run):
    check(comm_run, "k6_partial_freeze_two_steps")


def test_k7_forward_only_stage_under_torchrun(forward_only_run):
    check(forward_only_run, "k7_forward_only")


def test_k3_evaluate_eval_mode_outputs_on_last_rank_under_torchrun(forward_only_run):
    check(forward_only_run, "k3_evaluate_eval_mode")
