"""Adapter registry rules (issue 12): what is refused up front and why, the default loss and
its override, block names. Fast: only the loss-override case traces."""

from __future__ import annotations

import copy
from dataclasses import replace

import peft
import pytest
import torch
import transformers
from torch import nn
from zoo_models import ZOO, gpt2, llama

import tfcompile
from tfcompile.adapters import (
    find_adapter,
    losses,
    register_adapter,
    unregister_adapter,
)
from tfcompile.errors import RuntimeConfigError


def test_block_names_are_the_models_own():
    adapter = find_adapter(llama())
    names = [n for n, _ in adapter.blocks(llama())]
    assert names == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm",
                     "lm_head"]
    lora = ZOO["lora_gpt2"]().model
    names = [n for n, _ in find_adapter(lora).blocks(lora)]
    assert names[0] == "base_model.model.transformer.wte"
    assert names[-1] == "base_model.model.lm_head"
    assert set(names) - {"base_model.model.transformer.wte"} <= {
        n for n, _ in lora.named_modules()}


def test_a_library_model_without_adapter_is_refused_naming_class_and_adapter():
    model = transformers.GPT2Model(gpt2().config)  # the bare model: no head, no adapter
    with pytest.raises(RuntimeConfigError, match=r"GPT2Model .*no tfcompile adapter.*adapters"):
        tfcompile.compile(model, "1F1B", stages=2, microbatches=2,
                          example_inputs=(torch.zeros(2, 4, dtype=torch.long),),
                          loss_fn=lambda o, y: o.sum(), example_target=torch.zeros(2))


def test_a_timm_model_of_no_known_family_is_refused_naming_class_and_adapter():
    import timm

    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, depth=1, embed_dim=32, num_heads=2, num_classes=3)
    with pytest.raises(RuntimeConfigError,
                       match=r"VisionTransformerDistilled \(timm.*no tfcompile adapter.*adapters"):
        find_adapter(model)


def test_timm_vit_with_dynamic_image_size_is_refused():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                              patch_size=4, depth=1, embed_dim=32, num_heads=2,
                              dynamic_img_size=True)
    with pytest.raises(RuntimeConfigError, match="dynamic_img_size"):
        find_adapter(model)


def test_timm_block_names_are_the_models_own():
    for name in ("timm_vit", "timm_convnext", "timm_resnet_bn"):
        model = ZOO[name]().model
        names = [n for n, _ in find_adapter(model).blocks(model)]
        assert set(names) <= {n for n, _ in model.named_modules()}, names
    assert names == ["conv1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"]


def test_cross_attention_is_refused():
    cfg = gpt2().config
    cfg.add_cross_attention = True
    with pytest.raises(RuntimeConfigError, match="add_cross_attention"):
        find_adapter(transformers.GPT2LMHeadModel(cfg))


def test_prompt_learning_peft_is_refused():
    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    model = peft.get_peft_model(llama(), cfg)
    with pytest.raises(RuntimeConfigError, match="prompt-learning"):
        find_adapter(model)


def test_a_model_with_pipeline_blocks_keeps_them():
    class Own(nn.Sequential):
        def pipeline_blocks(self):
            return list(self.named_children())

    assert find_adapter(Own(nn.Linear(2, 2))) is None
    assert find_adapter(nn.Linear(2, 2)) is None  # no known library: the generic path


def test_blocks_that_do_not_reproduce_the_forward_are_refused():
    """An adapter that drops the final norm is caught by the composition check."""
    builtin = find_adapter(llama())
    wrong = register_adapter(replace(
        builtin, name="wrong llama",
        blocks=lambda m: [b for b in builtin.blocks(m) if b[0] != "model.norm"]), first=True)
    try:
        with pytest.raises(RuntimeConfigError, match="wrong llama.*do not reproduce"):
            tfcompile.compile(llama(), "1F1B", stages=2, microbatches=2,
                              example_inputs=(torch.zeros(2, 4, dtype=torch.long),))
    finally:
        unregister_adapter(wrong)


def test_default_losses_are_the_libraries_own():
    case = ZOO["llama"]()
    out = case.model(case.inputs, labels=case.targets)
    torch.testing.assert_close(losses.causal_lm_loss(out.logits, case.targets), out.loss)
    labels = case.targets.clone()
    labels[:, :3] = -100
    out = case.model(case.inputs, labels=labels)
    torch.testing.assert_close(losses.causal_lm_loss(out.logits, labels), out.loss)
    case = ZOO["bert"]()
    out = case.model(case.inputs, labels=case.targets)
    torch.testing.assert_close(losses.classification_loss(out.logits, case.targets), out.loss)


def test_a_given_loss_fn_overrides_the_default():
    case = ZOO["qwen2"]()
    ref = copy.deepcopy(case.model)

    def loss_fn(logits, y):
        return (logits.float() ** 2).mean()

    pipe = tfcompile.compile(case.model, "1F1B", stages=2, microbatches=2,
                             example_inputs=(case.inputs[:2],), loss_fn=loss_fn,
                             example_target=case.targets[:2])
    got = pipe.step(case.inputs, case.targets)
    want = sum(loss_fn(ref(x).logits, None).item() / 2 for x in case.inputs.chunk(2))
    assert abs(got - want) <= 1e-5 * abs(want)
