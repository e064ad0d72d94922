"""tfcompile/split.py: a model cut into pipeline stages at split points or balanced by FLOPs,
blocks composed as the model's forward composes them."""

import itertools

import pytest
import torch
from torch import nn

import tfcompile
from tfcompile import RuntimeConfigError
from tfcompile.models import Llama, LlamaConfig
from tfcompile.split import balanced_cuts, split_model


def tiny_llama() -> Llama:
    torch.manual_seed(0)
    return Llama(
        LlamaConfig(vocab_size=48, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)
    )


def test_split_points_and_balanced_split():
    model = tiny_llama()
    example = (torch.randint(0, 48, (2, 8)),)
    specs = split_model(model, None, example, split_points=["layers.2"])
    assert [s.block_names for s in specs] == [
        ["tok_embeddings", "layers.0", "layers.1"],
        ["layers.2", "layers.3", "norm", "output"],
    ]
    balanced = split_model(model, 3, example)
    assert sum(len(s.block_names) for s in balanced) == 7


@pytest.mark.parametrize(
    "costs,parts",
    [([5, 1, 1, 1, 5], 2), ([1, 2, 3, 4, 5, 6], 3), ([3, 3, 3, 3], 4), ([9, 1, 1, 1, 1, 1, 1], 2)],
)
def test_balanced_cuts_match_brute_force(costs, parts):
    def worst(cuts):
        bounds = [*cuts, len(costs)]
        return max(sum(costs[bounds[i] : bounds[i + 1]]) for i in range(parts))

    best = min(worst([0, *c]) for c in itertools.combinations(range(1, len(costs)), parts - 1))
    assert worst(balanced_cuts(costs, parts)) == best


class NotAComposition(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(x) + self.a(x)  # not b(a(x))


def test_model_whose_forward_is_not_a_composition_is_refused():
    with pytest.raises(RuntimeConfigError, match="pipeline_blocks"):
        tfcompile.compile(
            NotAComposition(),
            schedule="1F1B",
            stages=2,
            microbatches=2,
            example_inputs=(torch.randn(2, 4),),
            loss_fn=lambda o, t: o.sum(),
            example_target=torch.zeros(2),
        )
