"""examples/finetune_hf.py in one process, a few steps: the transformers Llama from a config
goes through compile() with no loss_fn and trains (the loss goes down on the stdlib corpus)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_hf.py"


def test_finetune_hf_example_trains_in_one_process():
    spec = importlib.util.spec_from_file_location("finetune_hf", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    losses = module.main(["--ranks", "2", "--steps", "6", "--freeze", "none", "--layers", "2",
                          "--hidden", "32", "--seq", "16", "--batch", "8", "--lr", "1e-2"])
    assert len(losses) == 6
    assert losses[-1] < losses[0]
