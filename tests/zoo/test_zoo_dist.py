"""A subset of the zoo under torchrun, 2 ranks (gloo): the tied input/output embedding of
GPT-2 and of a tie_word_embeddings Llama lives on both ranks, a LoRA model's frozen base
weights, a BERT classifier, a BatchNorm ResNet (running statistics too), a timm ViT (its
class token and position embeddings are parameters of the model itself). Two AdamW steps
equal eager training on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfcompile.testing import torchrun_verdicts

WORKER = Path(__file__).parent / "zoo_worker.py"
CASES = ("llama_tied", "gpt2", "lora_llama", "bert", "resnet_bn", "timm_vit")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo_dist")
    timeout = 420
    return torchrun_verdicts(WORKER, out, ",".join(CASES), timeout)


@pytest.mark.parametrize("case", CASES)
def test_zoo_model_trains_like_eager_under_torchrun(run, case):
    for rank in range(2):
        v = run[rank].get(case)
        assert v is not None, f"rank {rank} wrote no verdict for {case}:\n{run['log']}"
        assert v["error"] is None, (rank, v["error"], v.get("trace"))
        assert v["grad_err"] <= 1.0, (rank, v)
        assert v["err"] <= 1.0, (rank, v)
        assert v["loss_err"] <= 1e-5, (rank, v)
        assert v["buffer_err"] <= 1e-6, (rank, v)
