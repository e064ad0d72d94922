"""Checkpoint and resume: a resumed run reproduces the uninterrupted one exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile import FreezeConfig, FreezeConfigError
from tfcompile.errors import RuntimeConfigError
from tfcompile.models.llama import Llama, LlamaConfig
from tfcompile.train.checkpoint import MANIFEST, load_checkpoint, save_checkpoint

MICROBATCHES = 4
STEPS = 12
# warm-up 0-1, monitor w_max 2-3, monitor w_min 4-5, plan at 6, ramp 6-7, steady 8-
CONFIG = dict(
    policy="timely",
    warmup_steps=2,
    monitor_steps=2,
    ramp_steps=2,
    check_every=1,
    replan_every=0,  # a re-plan reads fresh timings, which differ between runs
    max_freeze_ratio=0.9,
    seed=3,
    total_steps=STEPS,
)


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def build(policy: str = "timely", **overrides):
    torch.manual_seed(0)
    model = Llama(
        LlamaConfig(vocab_size=48, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)
    )
    example = torch.zeros(2, 8, dtype=torch.long)
    freeze = None if policy == "none" else FreezeConfig(**{**CONFIG, "policy": policy, **overrides})
    pipe = tfcompile.compile(
        model,
        schedule="1F1B",
        stages=2,
        microbatches=MICROBATCHES,
        example_inputs=(example,),
        loss_fn=lm_loss,
        example_target=example,
        freeze=freeze,
    )
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=1e-2)
    return pipe, optimizer


def run(pipe, optimizer, gen, steps, log):
    """Steps pipe.step_index .. steps-1; batches from `gen`, a dropout-like use of the RNG."""
    while pipe.step_index < steps:
        x = torch.randint(0, 48, (8, 9), generator=gen)
        noise = torch.rand(()).item()  # the global RNG must be restored too
        optimizer.zero_grad(set_to_none=True)
        loss = pipe.step(x[:, :-1], x[:, 1:])
        optimizer.step()
        frozen = {k: sorted(v) for k, v in sorted(pipe.last_frozen.items())}
        phase = pipe.freezer.phase if pipe.freezer is not None else "off"
        log.append((pipe.step_index - 1, loss, noise, phase, frozen))
    return log


def params_of(pipe):
    return {n: p.detach().clone() for n, p in pipe.named_parameters()}


@pytest.mark.parametrize("policy,save_at", [("timely", 7), ("apf", 5)])
def test_resume_equals_uninterrupted(tmp_path, policy, save_at):
    """Save after planning, inside the ramp; resume across the ramp -> steady boundary."""
    pipe, opt = build(policy)
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(11)
    log = run(pipe, opt, gen, save_at, [])
    if policy.startswith("timely"):
        assert pipe.freezer.plan is not None, "the test must save after planning"
    save_checkpoint(tmp_path / "ckpt", pipe, opt, extra={"data": gen, "note": "x"})
    full = run(pipe, opt, gen, STEPS, list(log))
    expected = params_of(pipe)
    plan = pipe.freezer.plan

    pipe2, opt2 = build(policy)
    gen2 = torch.Generator().manual_seed(999)  # overwritten by the checkpoint
    torch.manual_seed(12345)
    extra = load_checkpoint(tmp_path / "ckpt", pipe2, opt2, extra={"data": gen2})
    assert extra["note"] == "x"
    assert pipe2.step_index == save_at
    resumed = run(pipe2, opt2, gen2, STEPS, list(log))

    assert [r[0] for r in resumed] == list(range(STEPS))
    assert resumed == full  # losses, RNG draws, phases and frozen decisions
    assert {r[3] for r in full[save_at:]} >= ({"ramp", "steady"} if policy != "apf" else set())
    if policy.startswith("timely"):
        assert any(r[4] for r in full[save_at:]), "something must be frozen after planning"
        assert dict(pipe2.freezer.plan.ratios) == dict(plan.ratios)
        assert pipe2.freezer.plan.makespan == pytest.approx(plan.makespan)
    got = params_of(pipe2)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_resume_before_planning_without_freezing(tmp_path):
    pipe, opt = build("none")
    gen = torch.Generator().manual_seed(1)
    log = run(pipe, opt, gen, 3, [])
    save_checkpoint(tmp_path, pipe, opt, extra={"data": gen})
    assert (tmp_path / MANIFEST).exists() and not list(tmp_path.parent.glob("*.tmp"))
    full = run(pipe, opt, gen, 6, list(log))
    pipe2, opt2 = build("none")
    gen2 = torch.Generator()
    load_checkpoint(tmp_path, pipe2, opt2, extra={"data": gen2})
    assert run(pipe2, opt2, gen2, 6, list(log)) == full


def test_load_rejects_mismatches(tmp_path):
    pipe, opt = build("timely")
    save_checkpoint(tmp_path, pipe, opt)
    other, other_opt = build("none")
    with pytest.raises(RuntimeConfigError, match="freezing controller"):
        load_checkpoint(tmp_path, other, other_opt)
    seeded, seeded_opt = build("timely", seed=4)
    with pytest.raises(FreezeConfigError, match="seed"):
        load_checkpoint(tmp_path, seeded, seeded_opt)
    with pytest.raises(RuntimeConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing", pipe, opt)


def test_config_rejects_phases_longer_than_training():
    with pytest.raises(FreezeConfigError, match="need 7 steps"):
        FreezeConfig(**{**CONFIG, "total_steps": 6, "ramp_steps": 1})
    FreezeConfig(**{**CONFIG, "total_steps": 7, "ramp_steps": 1})


def test_example_resume_reproduces_the_run(tmp_path):
    """`run` (examples/train_llama.py) with --save mid-run then --resume, in one process."""
    from tfcompile.train.run import RunConfig, run

    common = RunConfig(
        ranks=2, steps=14, freeze="timely", warmup=2, dim=32, layers=2, heads=2, kv_heads=1,
        seq=16, batch=8, threads=1, no_dumps=True, no_plots=True, eval_every=5,
    )  # fmt: skip
    ckpt = str(tmp_path / "ckpt" / "step{step}")
    # the uninterrupted run writes a checkpoint at step 9 and goes on to the end
    full = run(replace(common, out=str(tmp_path / "full"), save=ckpt, save_every=9))
    assert full["plan"] is not None  # planned at step 6, before the checkpoint
    resumed = run(replace(common, out=str(tmp_path / "b"), resume=ckpt.format(step=9)))
    assert resumed["start_step"] == 9
    assert resumed["losses"] == full["losses"][9:]
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["ratios_per_step"] == full["ratios_per_step"][9:]
    assert resumed["plan"] == full["plan"]  # restored, not re-measured


def test_checkpoints_are_atomic_and_integrity_checked(tmp_path, monkeypatch):
    """{step} paths, latest complete checkpoint, incomplete/corrupted/truncated refusals
    naming the directory or file, and a failed save that leaves no temp directory."""
    import shutil

    import torch.distributed.checkpoint as dcp

    from tfcompile.train.checkpoint import latest_checkpoint

    pipe, opt = build("none")
    gen = torch.Generator().manual_seed(1)
    run(pipe, opt, gen, 2, [])
    pattern = str(tmp_path / "step{step}")
    first = tfcompile.save_checkpoint(pattern, pipe, opt)
    assert first.name == "step2" and latest_checkpoint(pattern) == first
    run(pipe, opt, gen, 3, [])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dcp, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        tfcompile.save_checkpoint(pattern, pipe, opt)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step2"]  # no step3, no .tmp
    # a save killed before its commit: a directory without a manifest is never the latest
    shutil.copytree(first, tmp_path / "step3")
    (tmp_path / "step3" / MANIFEST).unlink()
    assert latest_checkpoint(pattern) == first
    pipe2, opt2 = build("none")
    tfcompile.load_checkpoint(pattern, pipe2, opt2)
    assert pipe2.step_index == 2
    with pytest.raises(RuntimeConfigError, match="step3 is an incomplete checkpoint"):
        tfcompile.load_checkpoint(tmp_path / "step3", pipe2, opt2)
    data = next(first.glob("*.distcp"))
    blob = data.read_bytes()
    data.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(RuntimeConfigError, match=f"{data.name} is corrupted"):
        tfcompile.load_checkpoint(first, pipe2, opt2)
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(RuntimeConfigError, match=f"{data.name} is truncated"):
        tfcompile.load_checkpoint(first, pipe2, opt2)


def test_run_config_changes_replan_or_refuse(tmp_path):
    """The documented rule: a different cap re-plans (the freezer starts over at the resume
    step), different phase lengths are refused."""
    pipe, opt = build("timely")
    gen = torch.Generator().manual_seed(1)
    run(pipe, opt, gen, 7, [])
    assert pipe.freezer.plan is not None
    tfcompile.save_checkpoint(tmp_path, pipe, opt)
    other, other_opt = build("timely", ramp_steps=3)
    with pytest.raises(FreezeConfigError, match="ramp_steps"):
        tfcompile.load_checkpoint(tmp_path, other, other_opt)
    capped, capped_opt = build("timely", max_freeze_ratio=0.5, total_steps=STEPS + 7)
    tfcompile.load_checkpoint(tmp_path, capped, capped_opt)
    assert capped.step_index == 7 and capped.freezer.plan is None
    log = run(capped, capped_opt, gen, 7 + 7, [])  # warm-up, monitor, plan again
    assert capped.freezer.plan is not None and log[-1][3] == "ramp"
    # the restarted freezer is saved and resumed with its shifted phases
    tfcompile.save_checkpoint(tmp_path / "again", capped, capped_opt)
    again, again_opt = build("timely", max_freeze_ratio=0.5, total_steps=STEPS + 7)
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())
    tfcompile.load_checkpoint(tmp_path / "again", again, again_opt)
    assert again.freeze_restart_step == 7 and again.freezer.plan is not None
    rng = torch.get_rng_state()
    expected = run(capped, capped_opt, gen, 16, [])
    torch.set_rng_state(rng)
    assert run(again, again_opt, gen2, 16, []) == expected
