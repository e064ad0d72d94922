"""The adapter registry: which :class:`~tfcompile.adapters.base.Adapter` handles a model.

Adapters are tried in registration order; the built-in ones (transformers causal LMs and
encoders, PEFT) are registered when ``tfcompile.adapters`` is imported, and they never import
the libraries themselves (a model's class is recognised by its module and name), so tfcompile
does not depend on transformers or peft.
"""

from __future__ import annotations

from torch import nn

from tfcompile.adapters.base import Adapter
from tfcompile.errors import RuntimeConfigError

# libraries whose models are never the plain composition of their children: a model from one
# of them without an adapter is refused instead of split generically
KNOWN_LIBRARIES = ("transformers", "timm", "peft")

_ADAPTERS: list[Adapter] = []


def register_adapter(adapter: Adapter, *, first: bool = False) -> Adapter:
    """Add `adapter` to the registry (tried after the ones before it, or before all of them with
    ``first=True``, to override a built-in one). Returns it, so it can decorate a factory."""
    if first:
        _ADAPTERS.insert(0, adapter)
    else:
        _ADAPTERS.append(adapter)
    return adapter


def unregister_adapter(adapter: Adapter) -> None:
    """Remove `adapter` (one registered with register_adapter) from the registry."""
    _ADAPTERS.remove(adapter)


def registered() -> tuple[Adapter, ...]:
    """The adapters, in the order they are tried."""
    return tuple(_ADAPTERS)


def library_of(model: nn.Module) -> str:
    """The top-level package that defines the model's class (``"transformers"``, ...)."""
    return type(model).__module__.split(".", 1)[0]


def find_adapter(model: nn.Module) -> Adapter | None:
    """The adapter for `model`, or None for a model of no known library (today's generic path:
    ``pipeline_blocks()``, ``nn.Sequential`` or its children, checked numerically).

    A model that has its own ``pipeline_blocks()`` keeps it. A model of a known library
    (transformers, timm, peft) that no adapter matches is refused: its forward is not the
    composition of its children, so the generic split would fail obscurely.

    Raises RuntimeConfigError naming the class and the adapter to write.
    """
    if hasattr(model, "pipeline_blocks"):
        return None
    for adapter in _ADAPTERS:
        if adapter.matches(model):
            adapter.check(model)
            return adapter.resolve(model) if adapter.resolve is not None else adapter
    lib = library_of(model)
    if lib in KNOWN_LIBRARIES:
        raise RuntimeConfigError(
            f"{type(model).__name__} ({type(model).__module__}) is a {lib} model with no "
            f"tfcompile adapter: write one for it (an Adapter with its block sequence, output "
            f"and loss, registered with tfcompile.adapters.register_adapter; see "
            f"docs/adapters.md), or give the model a pipeline_blocks() method. Known: "
            f"{', '.join(a.name for a in _ADAPTERS)}"
        )
    return None
