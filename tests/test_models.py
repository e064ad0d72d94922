"""Reference models: shapes, weight tying, causality, determinism."""

import torch

from tfcompile.models import MLP, ConvNeXt, Llama, LlamaConfig, ViT


def test_llama_shapes_and_tying():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, tie_weights=True)
    m = Llama(cfg)
    assert m.output.weight is m.tok_embeddings.weight
    assert isinstance(m.layers, torch.nn.ModuleList) and len(m.layers) == 2
    tokens = torch.randint(0, 50, (3, 10))
    out = m(tokens)
    assert out.shape == (3, 10, 50)
    torch.testing.assert_close(m(tokens), out)  # deterministic: no dropout


def test_llama_is_causal():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, n_kv_heads=1))
    t = torch.randint(0, 40, (1, 12))
    t2 = t.clone()
    t2[0, 8:] = (t2[0, 8:] + 1) % 40  # changing later tokens must not change earlier logits
    torch.testing.assert_close(m(t)[:, :8], m(t2)[:, :8])
    assert not torch.allclose(m(t)[:, 8:], m(t2)[:, 8:])


def test_vision_models_and_mlp():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert ViT()(x).shape == (4, 10)
    assert ConvNeXt()(x).shape == (4, 10)
    assert MLP(16, 32, 8, n_layers=3)(torch.randn(5, 16)).shape == (5, 8)
