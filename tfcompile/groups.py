"""Parameter groups: the unit of freezing.

A group is a named list of parameters whose weight gradient is computed (or skipped) together:
one weight-gradient region per group in a traced stage. This module owns every rule that turns
the user's choice into groups:

- ``resolve_groups(module, choice)``: group name -> canonical parameter names of one module
  ("block", "tensor" or a dict), in the module's own parameter names;
- ``groups_by_block(module, block_names)``: one group per block of a pipeline stage, named as
  the block is in the model;
- ``stage_groups(choice, spec, model_names)``: the user's choice, given in model names, turned
  into a stage's groups (group names in model names, members in stage names), ready for
  ``resolve_groups`` on the stage module.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from torch import nn

from tfcompile.errors import GroupError

__all__ = [
    "ROOT_GROUP",
    "GroupChoice",
    "canonical_names",
    "groups_by_block",
    "resolve_groups",
    "stage_groups",
]

ROOT_GROUP = "_root"

# "block", "tensor", or group name -> parameter names
GroupChoice = str | Mapping[str, Sequence[str]]


def canonical_names(module: nn.Module) -> dict[str, str]:
    """Every name a parameter is reachable under (tied aliases too) -> its canonical name."""
    by_id = {id(p): n for n, p in module.named_parameters()}
    return {n: by_id[id(p)] for n, p in module.named_parameters(remove_duplicate=False)}


def resolve_groups(module: nn.Module, groups: GroupChoice = "block") -> dict[str, list[str]]:
    """Group name -> canonical parameter names (only parameters that require grad).

    "block": one group per direct child owning parameters (a ModuleList/Sequential child gives
    one group per element, named e.g. ``layers.0``); parameters held by the module itself form
    the group ``_root``. "tensor": one group per parameter. A dict: group -> parameter names.
    A parameter reachable under several names (tied weights) belongs to the first group that
    reaches it (for "block") and its gradient is the sum of all its uses.
    """
    canon = canonical_names(module)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    if isinstance(groups, str):
        if groups == "tensor":
            return {n: [n] for n, _ in module.named_parameters() if n in trainable}
        if groups != "block":
            raise GroupError(
                f"groups={groups!r} is not known: use 'block', 'tensor' or a dict "
                "group name -> list of parameter names"
            )
        return _block_groups(module, canon, trainable)
    if not isinstance(groups, Mapping):
        raise GroupError("groups must be 'block', 'tensor' or a dict group -> parameter names")
    return _mapped_groups(groups, canon, trainable)


def _block_groups(
    module: nn.Module, canon: Mapping[str, str], trainable: Collection[str]
) -> dict[str, list[str]]:
    """The "block" rule: children (ModuleList/Sequential elements) first, own params last, so a
    tied parameter lands in the first block that uses it."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()

    def add(group: str, names: Sequence[str]) -> None:
        for local in names:
            name = canon[local]
            if name in trainable and name not in seen:
                seen.add(name)
                out.setdefault(group, []).append(name)

    def names_under(prefix: str, mod: nn.Module) -> list[str]:
        return [f"{prefix}{n}" for n, _ in mod.named_parameters(remove_duplicate=False)]

    own = [n for n, _ in module.named_parameters(recurse=False, remove_duplicate=False)]
    for cname, child in module.named_children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            for ename, elem in child.named_children():
                add(f"{cname}.{ename}", names_under(f"{cname}.{ename}.", elem))
        else:
            add(cname, names_under(f"{cname}.", child))
    add(ROOT_GROUP, own)
    return out


def _mapped_groups(
    groups: Mapping[str, Sequence[str]], canon: Mapping[str, str], trainable: Collection[str]
) -> dict[str, list[str]]:
    """The dict rule: every trainable parameter in exactly one group, tied aliases included."""
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for g, names in groups.items():
        if isinstance(names, str):
            raise GroupError(
                f"group {g!r}: give a list of parameter names, not the string {names!r}"
            )
        for n in names:
            if n not in canon:
                close = [c for c in canon if n.split(".")[-1] in c][:5]
                raise GroupError(
                    f"group {g!r} names unknown parameter {n!r}; known parameters look like "
                    f"{close or list(canon)[:5]} (see module.named_parameters())"
                )
            name = canon[n]
            if name in owner:
                raise GroupError(
                    f"parameter {n!r} is listed in group {owner[name]!r} and again in {g!r}"
                    + (f" (it is tied to {name!r})" if name != n else "")
                    + ": each parameter must belong to exactly one group"
                )
            owner[name] = g
            if name in trainable:
                out.setdefault(g, []).append(name)
    missing = sorted(set(trainable) - set(owner))
    if missing:
        raise GroupError(
            f"parameters {missing[:8]}{' ...' if len(missing) > 8 else ''} are in no group: "
            "add them to a group (every trainable parameter needs one)"
        )
    return out


def groups_by_block(module: nn.Module, block_names: Sequence[str]) -> dict[str, list[str]]:
    """One freezing group per block of a stage module that owns parameters, named as in the
    model (the stage module is an ``nn.Sequential`` of the blocks, so a stage parameter name
    starts with the block's index).

    A parameter shared by two blocks (tied weights) belongs to the first block only, as in
    `module.named_parameters()`.
    """
    groups: dict[str, list[str]] = {}
    for stage_name, _ in module.named_parameters():
        block_name = block_names[int(stage_name.split(".", 1)[0])]
        groups.setdefault(block_name, []).append(stage_name)
    return groups


class StageLike(Protocol):
    """What stage_groups reads of a stage (``split.StageSpec`` has it): the stage module, the
    model names of its blocks and its parameters' model names."""

    module: nn.Module
    block_names: Sequence[str]
    param_names: Mapping[str, str]


def stage_groups(groups: GroupChoice, spec: StageLike, model_names: Collection[str]):
    """Translate the user's group choice (in model names) into trace_stage's, for one stage.

    Group names stay model names, so every rank reports the same group for a parameter; the
    members are the stage module's parameter names. A dict may name parameters of other
    stages: a group with no member here is dropped.
    """
    if groups == "block":
        return groups_by_block(spec.module, spec.block_names)
    if groups == "tensor":
        return {spec.param_names[n]: [n] for n, _ in spec.module.named_parameters()}
    if isinstance(groups, Mapping):
        unknown = sorted({n for names in groups.values() for n in names} - set(model_names))
        if unknown:
            raise GroupError(
                f"group map names parameters the model does not have: {unknown[:5]}; use names "
                "from model.named_parameters()"
            )
        to_stage = {}
        for stage_name, _ in spec.module.named_parameters():
            to_stage[spec.param_names[stage_name]] = stage_name
        out = {}
        for group, names in groups.items():
            local = [to_stage[n] for n in names if n in to_stage]
            if local:
                out[group] = local
        return out
    raise GroupError(f"groups must be 'block', 'tensor' or a dict, not {groups!r}")
