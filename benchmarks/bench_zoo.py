"""Each conformance-zoo model (tests/zoo/zoo_models.py): trace time and step time vs eager.

For every model, in one process: the time to trace the whole adapted model as one loss stage
(``trace_stage``), the time of ``compile()`` into 2 stages (1F1B, 2 microbatches, all stages in
this process), and the median training step time (forward + backward of every microbatch, no
optimizer) of the pipeline against eager autograd of the model's own forward and loss on a
deep copy, measured round-robin. Tiny models: this measures tfcompile's overhead per step
(program dispatch, the in-process mailbox), not pipelining gains.

Prints a table and writes JSON to benchmarks/results/bench_zoo.json. Never asserts on time.
Usage: python benchmarks/bench_zoo.py [--reps 7] [--models llama,gpt2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "zoo"))

from zoo_models import ZOO  # noqa: E402
from zoo_train import compile_case, eager_step  # noqa: E402

import tfcompile  # noqa: E402
from tfcompile.adapters import find_adapter, pipeline_module  # noqa: E402


def measure(name: str, reps: int) -> dict:
    case = ZOO[name]()
    ref = copy.deepcopy(case.model)
    adapter = find_adapter(case.model)
    t0 = time.perf_counter()
    tfcompile.trace_stage(pipeline_module(copy.deepcopy(case.model)), (case.inputs,),
                          loss_fn=adapter.loss, example_target=case.targets)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = compile_case(case, 2)
    compile_s = time.perf_counter() - t0
    m = pipe.schedule.num_microbatches
    ours, eager = [], []
    for _ in range(reps):  # round-robin: both see the same machine load
        t0 = time.perf_counter()
        pipe.step(case.inputs, case.targets)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        eager_step(case, ref, m)
        eager.append(time.perf_counter() - t0)
    ours_ms, eager_ms = statistics.median(ours) * 1e3, statistics.median(eager) * 1e3
    return {
        "model": name,
        "params": sum(p.numel() for p in case.model.parameters()),
        "trace_s": trace_s,
        "compile_2_stages_s": compile_s,
        "step_ms": ours_ms,
        "eager_step_ms": eager_ms,
        "ratio": ours_ms / eager_ms,
        "ratios_paired_median": statistics.median(a / b for a, b in zip(ours, eager)),
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_zoo.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':<16}{'params':>9}{'trace s':>9}{'compile s':>11}{'step ms':>10}"
          f"{'eager ms':>10}{'ratio':>8}{'paired':>8}")
    for name in args.models.split(","):
        r = measure(name, args.reps)
        rows.append(r)
        print(f"{name:<16}{r['params']:>9}{r['trace_s']:>9.2f}{r['compile_2_stages_s']:>11.2f}"
              f"{r['step_ms']:>10.2f}{r['eager_step_ms']:>10.2f}{r['ratio']:>8.2f}"
              f"{r['ratios_paired_median']:>8.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reps": args.reps, "threads": args.threads, "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
