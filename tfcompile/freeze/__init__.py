"""Freezing: config, phase controller, selection policies and the per-step log.

Names are imported lazily so that `tfcompile.FreezeConfig` does not pull in torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "FreezeConfig": "tfcompile.freeze.config",
    "Freezer": "tfcompile.freeze.controller",
    "FreezeLayout": "tfcompile.freeze.layout",
    "PlanRecord": "tfcompile.freeze.controller",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tfcompile.freeze' has no attribute {name!r}")
    value = getattr(import_module(module_name), name)
    globals()[name] = value
    return value
