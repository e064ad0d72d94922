"""compile() and the single-process executor: eager equality, freezing, splitting, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile.errors import GroupError, RuntimeConfigError
from tfcompile.freeze.controller import Freezer
from tfcompile.models.llama import Llama, LlamaConfig
from tfcompile.planner import FreezePlanner
from tfcompile.schedules.generators import _ALIASES
from tfcompile.schedules.profile import CostProfile

SCHEDULES = [("GPipe", 2), ("1F1B", 2), ("ZBH1", 2), ("Interleaved1F1B", 4), ("ZBV", 4)]


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(
        LlamaConfig(vocab_size=48, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)
    )


def batch(seed: int, size: int = 8, seq: int = 9):
    x = torch.randint(0, 48, (size, seq), generator=torch.Generator().manual_seed(seed))
    return x[:, :-1], x[:, 1:]


def eager_grads(model, inputs, targets, microbatches, dropped=None):
    """Eager accumulation of loss/microbatches; `dropped[m]` = params that skip microbatch m."""
    dropped = dropped or {}
    named = dict(model.named_parameters())
    total = 0.0
    for m, (x, y) in enumerate(zip(inputs.chunk(microbatches), targets.chunk(microbatches))):
        loss = lm_loss(model(x), y) / microbatches
        grads = torch.autograd.grad(loss, list(named.values()))
        for (name, p), g in zip(named.items(), grads):
            if name not in dropped.get(m, ()):
                p.grad = g.clone() if p.grad is None else p.grad + g
        total += loss.item()
    return total


def compiled(model, schedule, stages, microbatches=4, **kw):
    inputs, targets = batch(0)
    mb = inputs.shape[0] // microbatches
    return tfcompile.compile(
        model,
        schedule=schedule,
        stages=stages,
        microbatches=microbatches,
        example_inputs=(inputs[:mb].contiguous(),),
        loss_fn=lm_loss,
        example_target=targets[:mb].contiguous(),
        **kw,
    )


@pytest.mark.parametrize("schedule,stages", SCHEDULES)
def test_training_steps_equal_eager(schedule, stages):
    model = tiny_llama()
    reference = copy.deepcopy(model)
    pipe = compiled(model, schedule, stages)
    opt = torch.optim.AdamW(pipe.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    for step in range(3):
        inputs, targets = batch(step + 1)
        opt.zero_grad()
        loss = pipe.step(inputs, targets)
        opt.step()
        ref_opt.zero_grad()
        ref_loss = eager_grads(reference, inputs, targets, 4)
        ref_opt.step()
        assert loss == pytest.approx(ref_loss, rel=1e-5)
    for (name, p), (ref_name, r) in zip(pipe.named_parameters(), reference.named_parameters()):
        assert name == ref_name
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


def test_frozen_microbatches_add_nothing_to_frozen_groups():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    pipe = compiled(model, "1F1B", 2)
    frozen = {(0, 1): {"layers.0"}, (0, 3): {"tok_embeddings", "layers.1"}, (1, 0): {"output"}}
    dropped = {}
    for (stage, m), groups in frozen.items():
        for g in groups:
            dropped.setdefault(m, set()).update(pipe.stage_groups(stage)[g])
    inputs, targets = batch(1)
    pipe.step(inputs, targets, frozen=frozen)
    eager_grads(reference, inputs, targets, 4, dropped)
    for (name, p), (_, r) in zip(pipe.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_groups_and_parameters_use_model_names():
    model = tiny_llama()
    pipe = compiled(model, "1F1B", 2)
    assert [n for n, _ in pipe.named_parameters()] == [n for n, _ in model.named_parameters()]
    groups = {g for s in pipe.local_stages for g in pipe.stage_groups(s)}
    assert groups == {
        "tok_embeddings",
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
        "norm",
        "output",
    }
    assert all(pipe.group_costs(0)[g] > 0 for g in pipe.stage_groups(0))


def test_profile_and_trace(tmp_path):
    pipe = compiled(tiny_llama(), "1F1B", 2)
    for step in range(2):
        pipe.step(*batch(step))
    profile = pipe.measured_profile()
    assert isinstance(profile, CostProfile) and len(profile.stages) == 2
    assert all(row[k] > 0 for row in profile.stages for k in ("F", "I", "W"))
    trace = pipe.write_trace(tmp_path / "trace.json")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    measured = [e for e in events if e["ph"] == "X" and e["pid"] < 2]
    predicted = [e for e in events if e["ph"] == "X" and e["pid"] >= 2]
    assert len(measured) == 2 * 4 * 3  # F, I and W parts of 4 microbatches on 2 stages
    assert len(predicted) == 2 * 4 * 3  # F, I and W: the B actions as the runtime runs them
    assert trace["otherData"]["profile"] == profile.to_dict()






def test_bad_inputs_raise_clear_errors():
    model = tiny_llama()
    pipe = compiled(model, "1F1B", 2)
    inputs, targets = batch(0, size=6)
    with pytest.raises(RuntimeConfigError, match="multiple of the microbatch count"):
        pipe.step(inputs, targets)
    with pytest.raises(GroupError, match="not groups of stage 0"):
        pipe.step(*batch(0), frozen={(0, 0): {"nope"}})
    with pytest.raises(RuntimeConfigError, match="outside stages"):
        pipe.step(*batch(0), frozen={(5, 0): {"output"}})
    with pytest.raises(RuntimeConfigError, match="not blocks of the model"):
        compiled(tiny_llama(), "1F1B", 2, split_points=["layers.9"])
    with pytest.raises(RuntimeConfigError, match="one split point fewer than the number"):
        compiled(tiny_llama(), "1F1B", 2, split_points=["tok_embeddings"])
    with pytest.raises(RuntimeConfigError, match="needs example_inputs"):
        tfcompile.compile(tiny_llama(), schedule="1F1B", stages=2)


class PassesTokens(nn.Module):
    """Embeds the tokens and passes them on (integer) with the hidden state."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(8, 4)

    def forward(self, tokens):
        return self.emb(tokens), tokens + 1


class UsesTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 4)

    def forward(self, h, tokens):
        return h * self.emb(tokens)


def test_integer_activations_between_stages_travel_without_gradients():
    """Integer tensors may cross a stage boundary (issue 11 kind 5): no gradient is computed or
    sent for them, and training equals eager on a copy."""
    torch.manual_seed(0)
    model = nn.Sequential(PassesTokens(), UsesTokens(), nn.Flatten(), nn.Linear(8, 2))
    ref = copy.deepcopy(model)
    x = torch.randint(0, 8, (4, 2), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0])
    pipe = tfcompile.compile(
        model,
        schedule="1F1B",
        stages=2,
        microbatches=2,
        split_points=["1"],
        example_inputs=(x[:2],),
        loss_fn=nn.functional.cross_entropy,
        example_target=y[:2],
    )
    stage1 = pipe.stage_programs[1]
    assert stage1.input_requires_grad == (True, False)
    assert [s.dtype for s in stage1.traced.input_specs] == [torch.float32, torch.int64]
    loss = pipe.step(x, y)
    want = 0.0
    for xm, ym in zip(x.chunk(2), y.chunk(2)):
        mb_loss = nn.functional.cross_entropy(ref[3](ref[2](ref[1](*ref[0](xm)))), ym) / 2
        mb_loss.backward()
        want += mb_loss.item()
    assert abs(loss - want) < 1e-6
    refs = dict(ref.named_parameters())
    for name, p in pipe.named_parameters():
        torch.testing.assert_close(p.grad, refs[name].grad, rtol=0, atol=1e-6)


def test_schedule_from_a_torch_format_csv_file(tmp_path):
    from tfcompile.schedules import build

    path = tmp_path / "zbv.csv"
    build("ZBV", 4, 4).to_csv(path)
    model = tiny_llama()
    reference = copy.deepcopy(model)
    pipe = compiled(model, str(path), None)
    assert (pipe.schedule.num_ranks, pipe.num_stages) == (2, 4)
    inputs, targets = batch(3)
    loss = pipe.step(inputs, targets)
    assert loss == pytest.approx(eager_grads(reference, inputs, targets, 4), rel=1e-5)


def test_wmin_measured_on_a_few_all_frozen_microbatches():
    """wmin_microbatches=1: one whole microbatch frozen per step in the w_min window, and the
    planner's w_min comes from those backward parts only."""
    config = tfcompile.FreezeConfig(
        policy="timely", warmup_steps=1, monitor_steps=2, ramp_steps=1, check_every=1,
        total_steps=8, wmin_microbatches=1,
    )  # fmt: skip
    pipe = compiled(tiny_llama(), "1F1B", 2, freeze=config)
    frozen_in_window = []
    for step in range(6):
        pipe.step(*batch(step))
        if pipe.freezer.phase == "monitor_wmin":
            frozen_in_window.append(dict(pipe.last_frozen))
    assert len(frozen_in_window) == 2
    for frozen in frozen_in_window:
        assert len(frozen) == 2 and len({m for _, m in frozen}) == 1  # one microbatch
        for (stage, _), groups in frozen.items():
            assert groups == frozenset(pipe.stage_groups(stage))
    wmax, wmin = pipe.freezer.profiles["wmax"], pipe.freezer.profiles["wmin"]
    for full, frozen in zip(wmax.stages, wmin.stages):
        assert frozen["W"] < 0.5 * full["W"]  # no weight-gradient region ran in those parts
    assert pipe.freezer.plan is not None
    # w_max of the plan: the unfrozen microbatches of the same steps (paired measurement)
    paired, planned = pipe.freezer.profiles["wmax_paired"], pipe.freezer.profiles["planned"]
    assert paired is not None and paired is not wmax
    for stage, (plan, full, frozen) in enumerate(zip(planned.stages, paired.stages, wmin.stages)):
        assert plan["F"] == full["F"]
        if pipe.truncates_backward(stage):  # token ids, groups in any order: W regions only
            assert (plan["I"], plan["W"]) == (full["I"], full["W"])
            continue
        both = full["I"] + full["W"] - frozen["I"] - frozen["W"]
        assert plan["W"] == pytest.approx(max(both, 0.0))


class Stage0Bottleneck:
    """The real planner, solving on profiles whose stage 0 is made 3x slower and whose weight
    gradient is at least its forward time: under load the measured W = w_max - w_min of a
    one-step window can clip to 0, which would leave nothing worth freezing on stage 0."""

    def __init__(self, schedule, max_freeze_ratio):
        self.planner = FreezePlanner(
            schedule, max_freeze_ratio=max_freeze_ratio, warm_start=False, prune=True
        )

    def plan(self, costs):
        stages = [dict(st) for st in costs.stages]
        stages[0] = {k: 3 * v for k, v in stages[0].items()}
        stages[0]["W"] = max(stages[0]["W"], stages[0]["F"])
        return self.planner.plan(CostProfile(stages, costs.comm, costs.unit))

    def makespan(self, costs, ratios):
        return self.planner.makespan(costs, ratios)


def test_timely_freezes_a_prefix_on_the_token_stage():
    """Stage 0 gets token ids (no input gradient): with prefix_on_truncating_stages, timely
    freezes front to back there, so its backward is truncated. The real planner runs on the
    measured profile with stage 0 made the bottleneck (3x), so that what it freezes does not
    depend on this machine's timing noise."""
    config = tfcompile.FreezeConfig(
        policy="timely", warmup_steps=1, monitor_steps=1, ramp_steps=1, check_every=1,
        total_steps=8, prefix_on_truncating_stages=True,
    )  # fmt: skip
    pipe = compiled(tiny_llama(), "1F1B", 2, freeze=config)
    planner = Stage0Bottleneck(pipe.execution_schedule, config.max_freeze_ratio)
    pipe.freezer = Freezer.for_pipeline(config, pipe, planner=planner)
    assert pipe.truncates_backward(0) and not pipe.truncates_backward(1)
    order = list(pipe.stage_groups(0))
    assert order[0] == "tok_embeddings"
    seen_stage0 = []
    for step in range(7):
        pipe.step(*batch(step))
        seen_stage0 += [g for (s, _), g in pipe.last_frozen.items() if s == 0]
    steady = [g for g in seen_stage0 if len(g) < len(order)]  # leave out the w_min window
    assert steady, "the plan froze nothing on stage 0"
    for groups in steady:
        assert set(groups) == set(order[: len(groups)])


@pytest.mark.parametrize("alias", sorted(_ALIASES))
def test_compile_accepts_every_schedule_alias_like_its_canonical_name(alias):
    """Regression: `compile(schedule="zbvzerobubble")` on 2 ranks raised, and
    `schedule="interleaved"` built 2 stages where "Interleaved1F1B" builds 4."""
    from tfcompile.schedules import canonical_name

    def pipe(schedule):
        torch.manual_seed(0)
        return tfcompile.compile(
            nn.Sequential(*(nn.Linear(4, 4) for _ in range(4))),
            schedule=schedule,
            microbatches=4,
            ranks=2,
            example_inputs=(torch.randn(2, 4),),
            loss_fn=nn.functional.mse_loss,
            example_target=torch.randn(2, 4),
        )

    got, want = pipe(alias), pipe(canonical_name(alias))
    assert got.schedule == want.schedule and got.schedule.num_ranks == 2
    assert got.num_stages == want.num_stages == len(got.stage_programs)
    assert got.has_first_stage and got.has_last_stage


def test_schedule_may_be_positional_the_rest_is_keyword_only():
    """`compile(model, "1F1B", ...)` (the form users and the case files write) works; every
    argument after the schedule is keyword-only."""
    kwargs = dict(
        microbatches=2, ranks=2, example_inputs=(torch.randn(2, 4),),
        loss_fn=nn.functional.mse_loss, example_target=torch.randn(2, 4),
    )  # fmt: skip
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    pipe = tfcompile.compile(model, "1F1B", **kwargs)
    assert pipe.schedule.name == "1F1B" and pipe.num_stages == 2
    with pytest.raises(TypeError):
        tfcompile.compile(model, "1F1B", None, **kwargs)
