"""benchmarks/gpu_check.py on CPU with tiny sizes (--device cpu --small), every section (both
backends; the pipeline section with the eager one): it runs end to end, writes one JSON with
a row per case, and its exactness rows pass.
Never asserts timings. Slow: it compiles the tiny stages with inductor (shared disk cache)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
_spec.loader.exec_module(gpu_check)


@pytest.mark.slow
def test_gpu_check_small_on_cpu(tmp_path, inductor_cache, capsys):
    # the pipeline section with the eager backend only: pipelines with inductor-compiled
    # regions are tested in tests/runtime/test_compiled_pipeline.py, and their CPU compiles
    # would double this test's time
    out, out_pipe = tmp_path / "gpu_check.json", tmp_path / "pipeline.json"
    rc = gpu_check.main(["--device", "cpu", "--small", "--out", str(out),
                         "--sections", "exactness,backward,cuda_graphs,memory"])  # fmt: skip
    data = json.loads(out.read_text())
    assert rc == 0, data
    rc = gpu_check.main(["--device", "cpu", "--small", "--sections", "pipeline",
                         "--backends", "eager", "--out", str(out_pipe)])  # fmt: skip
    pipe_data = json.loads(out_pipe.read_text())
    assert rc == 0, pipe_data
    sections = {**data["sections"], **pipe_data["sections"]}
    assert set(sections) == {s.name for s in gpu_check.SECTIONS}
    exact = sections["exactness"]
    assert {(r["dtype"], r["backend"]) for r in exact} == {
        (d, b) for d in ("float32", "bfloat16") for b in ("eager", "inductor")
    }
    assert all(r["passed"] for r in exact), exact
    assert sections["cuda_graphs"] == [{"config": "cuda_graphs", "skipped": "CUDA only"}]
    configs = [r["config"] for r in sections["backward"]]
    assert "eager autograd" in configs and "tfcompile[inductor] 100% frozen" in configs
    memory = {(r["precision"], r["policy"]): r for r in sections["memory"]}
    assert set(memory) == {("fp32", "none"), ("fp32", "full"), ("fp32", "selective"),
                           ("bf16", "none"), ("bf16", "full")}  # fmt: skip
    # activation checkpointing keeps fewer bytes for the backward than none
    kept = {k: r["activation_bytes"] for k, r in memory.items()}
    assert kept[("fp32", "full")] < kept[("fp32", "selective")] < kept[("fp32", "none")]
    pipe_rows = sections["pipeline"]
    assert {(r["schedule"], r["backend"]) for r in pipe_rows} == {
        ("1F1B", "eager"), ("ZBV", "eager")
    }
    assert all(r["final_phase"] == "steady" for r in pipe_rows)
    # the eager backend compiles nothing; one device runs every rank's actions in turn, so
    # the prediction (the actions' sum) exceeds the makespan of a two-device pipeline
    assert all(r["compiling_steps"] == 0 for r in pipe_rows), pipe_rows
    assert all(r["predicted_ms"] > r["two_device_ms"] > 0 for r in pipe_rows), pipe_rows
    assert all(r["compile_s"] > 0 for r in sections["exactness"] if r["backend"] == "inductor")
    assert "== pipeline" in capsys.readouterr().out


def test_a_section_registers_with_one_line(tmp_path, monkeypatch):
    """Another helper's section: appended to SECTIONS, its rows land in the JSON; a section
    that raises becomes an error row (exit code 1) while the others still run."""
    sections = [
        gpu_check.Section("extra", lambda ctx: [{"device": str(ctx.device), "value": 1.0}]),
        gpu_check.Section("broken", lambda ctx: 1 / 0),
    ]
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    out = tmp_path / "g.json"
    rc = gpu_check.main(["--device", "cpu", "--small", "--out", str(out)])
    data = json.loads(out.read_text())
    assert rc == 1
    assert data["sections"]["extra"] == [{"device": "cpu", "value": 1.0}]
    assert "ZeroDivisionError" in data["sections"]["broken"][0]["error"]
