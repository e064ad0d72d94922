"""Data parallel x pipeline (dp=2 x pp=2, gloo, CPU processes) against eager training on the
global batch; DCP checkpoints across layouts and a rank killed while saving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tfcompile
from tfcompile.errors import RuntimeConfigError

WORKER = Path(__file__).parent / "workers" / "dp_worker.py"


def torchrun(nproc: int, out: Path, *args: str, timeout: float = 240):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "--monitor-interval=1", str(WORKER),
        "--out", str(out), "--timeout", str(timeout - 20), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def verdicts(out: Path, name: str, nproc: int) -> list[dict]:
    return [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in range(nproc)]


def test_dp_needs_torchrun():
    with pytest.raises(RuntimeConfigError, match="torchrun"):
        tfcompile.compile(
            torch.nn.Linear(2, 2), "1F1B", stages=2, dp=2, example_inputs=torch.zeros(1, 2),
            loss_fn=torch.nn.functional.mse_loss, example_target=torch.zeros(1, 2),
        )  # fmt: skip


@pytest.mark.slow
def test_dp2_pp2_equals_eager_on_the_global_batch(tmp_path):
    """1F1B and ZBV, 3 AdamW steps with clipping (2-norm, then inf); at step 1 the first
    group of every stage is frozen in every microbatch: not reduced, and it does not move."""
    result = torchrun(4, tmp_path, "--case", "train", "--schedule", "1F1B,ZBV")
    assert result.returncode == 0, result.stderr[-3000:]
    for rank, verdict in enumerate(verdicts(tmp_path, "train", 4)):
        assert verdict["error"] is None, verdict["error"]
        for schedule in ("1F1B", "ZBV"):
            v = verdict[schedule]
            assert v["param_rel_err"] < 1e-5, (rank, schedule, v)
            assert v["norm_rel_err"] < 1e-5, (rank, schedule, v)
            full, frozen_step = v["stats"][0], v["stats"][1]
            if schedule == "ZBV" and rank % 2 == 0:  # stage 3's reduction overlaps stage 0's
                assert full["buckets_overlapped"] >= 1, full
            assert full["bytes_reduced"] > 0 and full["bytes_skipped_frozen"] == 0
            if v["local_frozen"]:
                assert v["frozen_moved"] == 0.0
                assert frozen_step["groups_skipped"] > 0
                assert frozen_step["bytes_skipped_frozen"] > 0
            # what freezing skipped is exactly what was not reduced
            assert (
                frozen_step["bytes_reduced"] + frozen_step["bytes_skipped_frozen"]
                == full["bytes_reduced"]
            )


@pytest.mark.slow
def test_checkpoint_survives_a_crash_and_loads_at_other_layouts(tmp_path):
    """Save at (dp=2, pp=2); a rank killed while saving the next checkpoint leaves the
    previous one as the latest; it loads at (1, 2) and (2, 1) and continues bit for bit like a
    pipeline of that layout given the same state, and at (1, 4) in one process. Ranks asked to
    load checkpoints of different steps all refuse."""
    ckpt = str(tmp_path / "ck" / "step{step}")
    saved = torchrun(4, tmp_path, "--case", "save", "--ckpt", ckpt)
    assert saved.returncode != 0  # rank 1 was killed inside the second save
    assert all(v["saved"].endswith("step2") for v in verdicts(tmp_path, "saved", 4))
    assert not (tmp_path / "ck" / "step3").exists()
    assert tfcompile.latest_checkpoint(ckpt) == tmp_path / "ck" / "step2"
    reference = torch.load(tmp_path / "reference.pt", weights_only=False)

    loaded = torchrun(2, tmp_path, "--case", "load", "--ckpt", ckpt, "--ckpt-dir", str(tmp_path))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    for verdict in verdicts(tmp_path, "load", 2):
        assert verdict["error"] is None, verdict["error"]
        for layout in ("dp1", "dp2"):
            assert verdict[layout]["step"] == 2
            assert verdict[layout]["max_abs_diff"] == 0.0, (layout, verdict)
        assert "ranks would load different checkpoints" in verdict["mixed"]

    sys.path.insert(0, str(WORKER.parent))
    try:
        import dp_worker
    finally:
        sys.path.pop(0)
    example = torch.zeros(2, 6, dtype=torch.long)
    pipe = tfcompile.compile(
        dp_worker.make_model(seed=5), "1F1B", stages=4, ranks=4, microbatches=4,
        example_inputs=example, loss_fn=dp_worker.loss_fn, example_target=example,
    )  # fmt: skip
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2)
    tfcompile.load_checkpoint(tmp_path / "ck" / "step2", pipe, opt)
    assert pipe.step_index == 2
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.detach(), reference[name][0], rtol=0, atol=0, msg=name)
        for key, value in reference[name][1].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=0, atol=0)
