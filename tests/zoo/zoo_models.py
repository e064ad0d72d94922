"""The conformance zoo: tiny models of every adapted family, built from config objects (no
download), dropout off, with a batch and the eager loss each library computes itself.
timm models are built with ``timm.create_model(name, pretrained=False, ...)``; importing
``timm_compat`` first lets torchvision (which timm imports) load beside the CPU torch.

``ZOO[name]()`` -> :class:`ZooCase`. Shared by the in-process tests, the torchrun worker and
``benchmarks/bench_zoo.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm_compat  # noqa: F401 - before anything imports torchvision (transformers, timm)
import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 61
SEQ = 8
BATCH = 4


@dataclass
class ZooCase:
    """One zoo model: the model, a batch (inputs, targets) and the eager loss of a batch as
    the model's own library computes it (``model(ids, labels=...).loss``)."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    eager_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    # image classifiers: the logits as the library's forward gives them (evaluation tests)
    eager_logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None


def _hf_loss(model, x, y):
    return model(input_ids=x, labels=y).loss


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _decoder_common():
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                attn_implementation="eager", attention_dropout=0.0)


def _causal(name, build, seed):
    def make() -> ZooCase:
        torch.manual_seed(seed)
        model = build()
        x = _ids(seed)
        return ZooCase(name, model, x, x.clone(), _hf_loss)

    return make


def llama(tie=False):
    import transformers

    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**_decoder_common(), tie_word_embeddings=tie)
    )


def mistral():
    import transformers

    # a window shorter than the sequence: the sliding-window mask is exercised
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(**_decoder_common(), sliding_window=5)
    )


def qwen2():
    import transformers

    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_decoder_common()))


def qwen3():
    import transformers

    return transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(**_decoder_common(), head_dim=8)
    )


def gpt2():
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager"))


def _encoder_common():
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=40, num_labels=3,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                attn_implementation="eager")


def bert():
    import transformers

    return transformers.BertForSequenceClassification(
        transformers.BertConfig(**_encoder_common())
    )


def roberta():
    import transformers

    return transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**_encoder_common(), pad_token_id=1)
    )


def _classify(name, build, seed):
    def make() -> ZooCase:
        torch.manual_seed(seed)
        model = build()
        x = _ids(seed)
        y = torch.randint(0, 3, (BATCH,), generator=torch.Generator().manual_seed(seed + 1))
        return ZooCase(name, model, x, y, _hf_loss)

    return make


def vit():
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=48, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager"))


def convnext():
    import transformers

    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        num_channels=3, patch_size=2, num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
        num_labels=3, drop_path_rate=0.0))


def convnextv2():
    import transformers

    return transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(
        num_channels=3, patch_size=2, num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
        num_labels=3, drop_path_rate=0.0))


def resnet():
    import transformers

    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1],
        layer_type="basic", num_labels=3))


def _hf_image_loss(model, x, y):
    return model(pixel_values=x, labels=y).loss


def _hf_image_logits(model, x):
    return model(pixel_values=x).logits


def timm_vit():
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16,
                             patch_size=4, depth=2, embed_dim=32, num_heads=2, mlp_ratio=1.5,
                             num_classes=3, drop_rate=0.0)


def timm_vit_reg_gap():
    """Register tokens, position embeddings added before the prefix, average pooling."""
    import timm

    return timm.create_model("vit_base_patch16_reg4_gap_256", pretrained=False, img_size=16,
                             patch_size=4, depth=2, embed_dim=32, num_heads=2, mlp_ratio=1.5,
                             num_classes=3)


def timm_convnext():
    import timm

    return timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1),
                             dims=(8, 8, 16, 16), num_classes=3, drop_path_rate=0.0)


def timm_convnextv2():
    import timm

    return timm.create_model("convnextv2_atto", pretrained=False, depths=(1, 1, 1, 1),
                             dims=(8, 8, 16, 16), num_classes=3, drop_path_rate=0.0)


def timm_resnet():
    import timm

    return timm.create_model("resnet18", pretrained=False, layers=(1, 1, 1, 1),
                             channels=(8, 16, 24, 32), stem_width=8, num_classes=3)


def _timm_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def _timm_logits(model, x):
    return model(x)


def _image(name, build, seed, size=16, timm=False):
    def make() -> ZooCase:
        torch.manual_seed(seed)
        model = build()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(BATCH, 3, size, size, generator=g)
        y = torch.randint(0, 3, (BATCH,), generator=g)
        if timm:
            return ZooCase(name, model, x, y, _timm_loss, _timm_logits)
        return ZooCase(name, model, x, y, _hf_image_loss, _hf_image_logits)

    return make


def lora(build, targets):
    def make():
        import peft

        base = build()
        cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                              init_lora_weights=False)
        return peft.get_peft_model(base, cfg)

    return make


ZOO: dict[str, Callable[[], ZooCase]] = {
    "llama": _causal("llama", llama, 0),
    "llama_tied": _causal("llama_tied", lambda: llama(tie=True), 1),
    "mistral_window": _causal("mistral_window", mistral, 2),
    "qwen2": _causal("qwen2", qwen2, 3),
    "qwen3": _causal("qwen3", qwen3, 4),
    "gpt2": _causal("gpt2", gpt2, 5),
    "bert": _classify("bert", bert, 6),
    "roberta": _classify("roberta", roberta, 7),
    "lora_llama": _causal("lora_llama", lora(llama, ["q_proj", "v_proj"]), 8),
    "lora_gpt2": _causal("lora_gpt2", lora(gpt2, ["c_attn"]), 9),
    "lora_bert": _classify("lora_bert", lora(bert, ["query", "value"]), 10),
    "vit": _image("vit", vit, 11),
    "convnext": _image("convnext", convnext, 12),
    "convnextv2": _image("convnextv2", convnextv2, 13),
    # 32x32: a 1-image microbatch still has 2x2 values per channel at the last BatchNorm
    "resnet_bn": _image("resnet_bn", resnet, 14, size=32),
    "timm_vit": _image("timm_vit", timm_vit, 15, timm=True),
    "timm_vit_reg_gap": _image("timm_vit_reg_gap", timm_vit_reg_gap, 16, timm=True),
    "timm_convnext": _image("timm_convnext", timm_convnext, 17, size=32, timm=True),
    "timm_convnextv2": _image("timm_convnextv2", timm_convnextv2, 18, size=32, timm=True),
    # 64x64: timm's ResNet has four stride-2 layers; 2x2 values per channel at the last BatchNorm
    "timm_resnet_bn": _image("timm_resnet_bn", timm_resnet, 19, size=64, timm=True),
    "lora_timm_vit": _image("lora_timm_vit", lora(timm_vit, ["qkv", "fc1"]), 20, timm=True),
}
