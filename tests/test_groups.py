"""groups.py: the group rules ("block", "tensor", dict) and their translation to stage names."""

import pytest
import torch
from torch import nn

from tfcompile import GroupError
from tfcompile.groups import ROOT_GROUP, groups_by_block, resolve_groups, stage_groups
from tfcompile.models import Llama
from tfcompile.split import split_model
from tfcompile.testing import llama_config


class WithOwn(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    def forward(self, x):
        return self.blocks(x * self.scale)


def test_block_groups_expand_lists_and_put_own_params_last():
    assert resolve_groups(WithOwn(), "block") == {
        "blocks.0": ["blocks.0.weight", "blocks.0.bias"],
        "blocks.1": ["blocks.1.weight", "blocks.1.bias"],
        ROOT_GROUP: ["scale"],
    }


def test_block_groups_tied_weight_in_first_block_only():
    torch.manual_seed(0)
    model = Llama(llama_config(n_layers=2, tie_weights=True))
    groups = resolve_groups(model, "block")
    assert list(groups)[:3] == ["tok_embeddings", "layers.0", "layers.1"]
    assert groups["tok_embeddings"] == ["tok_embeddings.weight"]
    assert "output" not in groups  # its only parameter is the tied embedding
    members = [p for ps in groups.values() for p in ps]
    assert len(members) == len(set(members)) == len(list(model.parameters()))


def test_frozen_parameters_are_in_no_group():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    m[0].weight.requires_grad_(False)
    assert resolve_groups(m, "block") == {"0": ["0.bias"], "1": ["1.weight", "1.bias"]}
    assert resolve_groups(m, "tensor") == {n: [n] for n in ["0.bias", "1.weight", "1.bias"]}


def test_dict_groups_accept_tied_alias_names():
    torch.manual_seed(0)
    model = Llama(llama_config(n_layers=1, tie_weights=True))
    names = [n for n, _ in model.named_parameters()]
    groups = resolve_groups(model, {"head": ["output.weight"], "rest": names[1:]})
    assert groups == {"head": ["tok_embeddings.weight"], "rest": names[1:]}


def test_group_errors():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(GroupError, match="unknown parameter 'nope'"):
        resolve_groups(m, {"a": ["nope"]})
    with pytest.raises(GroupError, match="again"):
        resolve_groups(m, {"a": ["0.weight", "0.bias"], "b": ["0.weight", "1.weight", "1.bias"]})
    with pytest.raises(GroupError, match="in no group"):
        resolve_groups(m, {"a": ["0.weight"]})
    with pytest.raises(GroupError, match="'block', 'tensor'"):
        resolve_groups(m, "layer")
    with pytest.raises(GroupError, match="not the string"):
        resolve_groups(m, {"a": "0.weight"})
    with pytest.raises(GroupError, match="'block', 'tensor'"):
        resolve_groups(m, 3)


@pytest.fixture(scope="module")
def specs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 4))
    return model, split_model(model, None, (torch.randn(2, 4),), split_points=["2"])


def test_groups_by_block_names_blocks_as_in_the_model(specs):
    _, (first, second) = specs
    expected = {"2": ["0.weight", "0.bias"], "3": ["1.weight", "1.bias"]}
    assert groups_by_block(second.module, second.block_names) == expected
    assert second.groups_by_block() == expected
    assert first.groups_by_block() == {"0": ["0.weight", "0.bias"]}  # ReLU owns nothing


def test_stage_groups_translate_model_names(specs):
    model, (_, second) = specs
    names = {n for n, _ in model.named_parameters()}
    assert stage_groups("block", second, names) == second.groups_by_block()
    assert stage_groups("tensor", second, names) == {
        "2.weight": ["0.weight"],
        "2.bias": ["0.bias"],
        "3.weight": ["1.weight"],
        "3.bias": ["1.bias"],
    }
    gmap = {"early": ["0.weight", "0.bias", "2.weight"], "late": ["2.bias", "3.weight", "3.bias"]}
    assert stage_groups(gmap, second, names) == {
        "early": ["0.weight"],
        "late": ["0.bias", "1.weight", "1.bias"],
    }
    with pytest.raises(GroupError, match="does not have"):
        stage_groups({"a": ["9.weight"]}, second, names)
    with pytest.raises(GroupError, match="'block', 'tensor' or a dict"):
        stage_groups("layer", second, names)
