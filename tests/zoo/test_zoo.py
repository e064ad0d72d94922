"""The conformance zoo (issue 12): transformers, timm and PEFT models through trace_stage and
compile() unchanged, in one process. Every expected value is eager training of a deep copy
with the model library's own loss (``model(ids, labels=...).loss``; timm: cross entropy of
``model(images)``)."""

from __future__ import annotations

import copy

import pytest
import torch
from zoo_models import ZOO
from zoo_train import compile_case, train_two_steps, worst_relative_error

import tfcompile
from tfcompile.adapters import find_adapter, pipeline_module

NAMES = sorted(ZOO)


@pytest.mark.parametrize("name", NAMES)
def test_whole_model_traces_as_one_loss_stage(name):
    """The adapted model as one stage with the default loss: loss and gradients equal the
    library's own forward and loss; a frozen group's region does not run."""
    case = ZOO[name]()
    model, x, y = case.model, case.inputs, case.targets
    ref = copy.deepcopy(model)
    adapter = find_adapter(model)
    prog = tfcompile.trace_stage(pipeline_module(model), (x,), loss_fn=adapter.loss,
                                 example_target=y)
    loss = prog.forward(0, x, target=y)
    prog.backward(0)
    want = case.eager_loss(ref, x, y)
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-6)
    refs = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        if p.requires_grad:
            err = (p.grad - refs[n].grad).abs().max()
            assert err <= 1e-5 * refs[n].grad.abs().max() + 1e-9, (n, err)
    assert set(prog.region_calls) == set(prog.group_order)

    frozen = frozenset(prog.group_order[: len(prog.group_order) // 2 + 1])
    prog.region_calls.clear()
    prog.forward(1, x, target=y)
    prog.backward(1, frozen=frozen)
    assert not set(prog.region_calls) & frozen, "a frozen group's region ran"
    assert set(prog.region_calls) == set(prog.group_order) - frozen


# 4 stages for one model per family in the fast suite; the rest run with the slow tests (CI)
FOUR_STAGES_FAST = {"llama_tied", "mistral_window", "gpt2", "bert", "lora_llama", "vit",
                    "resnet_bn", "timm_resnet_bn"}
CASES = [(n, 2) for n in NAMES] + [
    pytest.param(n, 4, marks=() if n in FOUR_STAGES_FAST else pytest.mark.slow) for n in NAMES
]


@pytest.mark.parametrize("name,stages", CASES)
def test_compile_trains_like_eager(name, stages):
    """compile(model) with no loss_fn and no target: two AdamW steps equal eager training of a
    deep copy (rtol 1e-5); groups are the model's blocks, named as in the model; a frozen
    group's regions do not run and its parameters get no gradient."""
    case = ZOO[name]()
    pipe = compile_case(case, stages)
    microbatches = pipe.schedule.num_microbatches
    got, want, ref, grad_err = train_two_steps(case, pipe, microbatches)
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * abs(b), (got, want)
    assert grad_err <= 1.0
    assert worst_relative_error(case.model, ref) <= 1.0
    refs = dict(ref.named_buffers())  # BatchNorm running statistics, updated as eager does
    for n, b in case.model.named_buffers():
        torch.testing.assert_close(b, refs[n], rtol=1e-5, atol=1e-7, msg=lambda m, n=n: n)

    model_names = {n for n, _ in case.model.named_parameters()}
    module_names = {n for n, _ in case.model.named_modules()}
    progs = pipe.stage_programs
    assert len(progs) == stages
    for prog in progs.values():
        assert set(prog.groups) <= module_names, prog.groups  # groups are the model's blocks
    assert {n for n, _ in pipe.named_parameters()} <= model_names

    frozen_stage = next(s for s in sorted(progs) if progs[s].group_order)
    group = progs[frozen_stage].group_order[0]
    before = dict(progs[frozen_stage].region_calls)
    case.model.zero_grad(set_to_none=True)
    pipe.step(case.inputs, case.targets,
              frozen={(frozen_stage, m): frozenset({group}) for m in range(microbatches)})
    calls = progs[frozen_stage].region_calls
    assert calls[group] == before.get(group, 0), "the frozen group's region ran"
    for other in progs[frozen_stage].group_order[1:]:
        assert calls[other] == before.get(other, 0) + microbatches
    members = set(pipe.stage_groups(frozen_stage)[group])
    for s in progs:  # a tied embedding's other use (the LM head) is not frozen: it has a grad
        if s != frozen_stage:
            members -= {n for names in pipe.stage_groups(s).values() for n in names}
    for n, p in case.model.named_parameters():
        if n in members:
            assert p.grad is None, n


@pytest.mark.parametrize("name", ["resnet_bn", "timm_resnet_bn"])
def test_batchnorm_model_trains_and_evaluates_like_eager(name):
    """ResNet (BatchNorm; transformers' and timm's): after two training steps the running
    statistics equal eager's (checked above for every model); in eval mode
    ``Pipeline.evaluate`` uses them, as eager eval does, and leaves them unchanged."""
    case = ZOO[name]()
    pipe = compile_case(case, 2)
    _, _, ref, _ = train_two_steps(case, pipe, pipe.schedule.num_microbatches)
    case.model.eval()
    ref.eval()
    stats = {n: b.clone() for n, b in case.model.named_buffers()}
    loss, logits = pipe.evaluate(case.inputs, case.targets, return_outputs=True)
    with torch.no_grad():
        want = case.eager_logits(ref, case.inputs)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-6)
    for n, b in case.model.named_buffers():
        assert torch.equal(b, stats[n]), f"evaluation changed {n}"
    assert any("running_mean" in n for n in stats)
