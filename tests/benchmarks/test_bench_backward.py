"""benchmarks/bench_backward.py's profile split: library kernels (GEMM, fused attention) vs the
rest. The split decides the floor the benchmark reports for any backend, so it must count a
matrix multiply as library work and elementwise ops as the rest. Never asserts timings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_backward.py"
_spec = importlib.util.spec_from_file_location("bench_backward", SCRIPT)
bench_backward = importlib.util.module_from_spec(_spec)
sys.modules["bench_backward"] = bench_backward
_spec.loader.exec_module(bench_backward)


def test_library_split_counts_gemm_and_attention_as_library_work():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    q = torch.randn(2, 4, 64, 32)
    only_gemm = bench_backward.library_kernel_split(lambda: a @ b, iters=3)
    assert only_gemm["library_ms"] > 0 and only_gemm["library_share"] > 0.5
    attention = bench_backward.library_kernel_split(
        lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True), iters=3
    )
    assert attention["library_ms"] > 0


def test_library_split_counts_elementwise_work_as_the_rest():
    x = torch.randn(512, 512)
    split = bench_backward.library_kernel_split(lambda: (x * 2 + 1).relu().sum(), iters=3)
    assert split["library_ms"] == 0.0 and split["other_ms"] > 0
    assert split["library_share"] == 0.0


def test_library_split_of_a_backward_sees_its_matrix_multiplies():
    w = torch.randn(128, 128, requires_grad=True)
    x = torch.randn(64, 128)

    def step():
        w.grad = None
        torch.tanh(x @ w).sum().backward()

    split = bench_backward.library_kernel_split(step, iters=3)
    assert 0.0 < split["library_share"] < 1.0
