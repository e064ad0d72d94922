"""Zero-bubble schedules with inductor-compiled stage regions train exactly like eager autograd:
in one process (every stage local) and under torchrun (2 ranks, gloo), with part of the groups
frozen in odd microbatches. Reference: eager accumulation on a deep copy of the model, the
parameters compared after SGD steps (tests/runtime/workers/pipeline_worker.py). Slow: CPU
inductor compiles take seconds per graph; the first single-process test fills the session's
disk cache, which the other schedules and the torchrun workers (same graphs) then hit."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tfcompile

WORKER = Path(__file__).parent / "workers" / "pipeline_worker.py"
_spec = importlib.util.spec_from_file_location("pipeline_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

pytestmark = pytest.mark.slow


def _first_group_frozen_in_odd_microbatches(pipe, microbatches):
    frozen, params_of_mb = {}, {}
    for stage in range(pipe.num_stages):
        spec = pipe.specs[stage]
        first = next(iter(spec.groups_by_block()))
        for m in range(1, microbatches, 2):
            frozen[(stage, m)] = {first}
            names = [spec.param_names[n] for n in spec.groups_by_block()[first]]
            params_of_mb.setdefault(m, set()).update(names)
    return frozen, params_of_mb


@pytest.mark.parametrize("schedule,ranks", [("ZBV", 2), ("ZBH1", 4), ("csv", 2)])
def test_zero_bubble_in_one_process_with_inductor_equals_eager(
    schedule, ranks, inductor_cache, tmp_path
):
    """ZBV, ZBH1 and ZBV read back from a torch-format CSV (I and W actions); all with the same
    4-stage split, so after the first the graphs are disk-cache hits."""
    torch.manual_seed(0)
    model = worker.make_model(0)
    reference = copy.deepcopy(model)
    microbatches = 4
    if schedule == "csv":
        schedule = tmp_path / "zbv.csv"
        tfcompile.schedules.build("ZBV", 4, microbatches, ranks=2).to_csv(schedule)
    example = torch.zeros(4, 12, dtype=torch.long)
    pipe = tfcompile.compile(
        model, schedule, stages=4, microbatches=microbatches, ranks=ranks,
        example_inputs=(example,), loss_fn=worker.loss_fn, example_target=example,
        backend="inductor",
    )  # fmt: skip
    frozen, params_of_mb = _first_group_frozen_in_odd_microbatches(pipe, microbatches)
    opt = torch.optim.SGD(pipe.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randint(0, 64, (4 * microbatches, 13), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = pipe.step(x[:, :-1], x[:, 1:], frozen=frozen)
        opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_loss = worker.eager_step(reference, x[:, :-1], x[:, 1:], microbatches, params_of_mb)
        ref_opt.step()
        assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    refs = dict(reference.named_parameters())
    for name, p in pipe.named_parameters():
        r = refs[name]
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-5 * float(r.abs().max()), msg=name)
    programs = pipe.stage_programs.values()
    assert all(p.compile_seconds > 0 for p in programs)
    pipe.close()


def test_zbv_under_torchrun_with_inductor_equals_eager(tmp_path, inductor_cache):
    timeout = 480
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--monitor-interval=1", str(WORKER), "--out", str(tmp_path), "--timeout",
        str(timeout - 20), "--schedules", "ZBV", "--steps", "2", "--frozen",
        "--backend", "inductor",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in range(2):
        v = json.loads((tmp_path / f"rank{rank}.json").read_text())["ZBV"]
        assert v["params"] > 0 and v["param_rel_err"] <= 1e-5, (rank, v)
        assert v["loss_rel_err"] <= 1e-5, (rank, v)
