"""Lets ``import torchvision`` (and so ``import timm``, and transformers' model modules, which
import torchvision when it is installed) succeed beside the pinned CPU torch.

Why: the only torchvision wheels on the package index that match torch 2.13.0 are built
against CUDA torch; their compiled ops (``torchvision/_C.so``) link ``libtorch_cuda.so`` and do
not load beside ``torch==2.13.0+cpu``. torchvision tolerates that for every op except two:
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, and ``torch.library.register_fake`` raises "operator
torchvision::nms does not exist", so the import fails.

What: if torchvision is installed but has not been imported yet, first load its compiled ops as
torchvision itself would (``torch.ops.load_library`` on ``torchvision/_C``); if that fails and
the two ops are still undefined, declare their schemas (as torchvision's C++ library declares
them) in a ``torchvision`` FRAGMENT library, with no kernel. torchvision then imports; calling
``nms`` would raise "no kernel", which is right, and neither timm's classifiers nor
transformers' model modules call it. With a torchvision whose ops load, or without
torchvision, this does nothing. Test support only: importing it has no other effect.

Imported first by ``tests/conftest.py`` and by ``zoo_models.py`` (the benchmark and the
torchrun worker import it outside pytest).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch

# the schemas of torchvision's csrc/ops/nms.cpp and quantized qnms
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

# the fragment must stay alive: its definitions are removed when the Library object is freed
_fragment: torch.library.Library | None = None


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _load_compiled_ops(package_dir: Path) -> bool:
    """torchvision.extension's own loading, done before torchvision is imported."""
    finder = importlib.machinery.FileFinder(
        str(package_dir),
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
    )
    spec = finder.find_spec("_C")
    if spec is None or spec.origin is None:
        return False
    try:
        torch.ops.load_library(spec.origin)
    except (ImportError, OSError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Declare the two op schemas if torchvision is installed and its ops cannot load.
    Returns whether it declared them."""
    global _fragment
    if _fragment is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:  # not installed: nothing to do
        return False
    _load_compiled_ops(Path(spec.origin).parent)
    missing = [name for name in SCHEMAS if not _has_op(name)]
    if not missing:
        return False
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _fragment.define(SCHEMAS[name])
    return True


ensure_torchvision_importable()
