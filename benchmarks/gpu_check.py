"""The GPU check: one command that measures tfcompile on one CUDA device (CPU with --small).

    python benchmarks/gpu_check.py                       # one GPU, about 5 minutes on an H200
    python benchmarks/gpu_check.py --device cpu --small  # the same sections, tiny sizes

Sections (each a function returning table rows, registered in ``SECTIONS``):

- ``exactness``: stage-compiler gradients (eager and inductor backends) against eager autograd
  on a deep copy, fp32 (TF32 off) and bf16, a LLaMA block stage and a loss stage;
- ``backward``: forward+backward of a 4-block LLaMA stage, eager autograd vs tfcompile (eager
  backend) vs tfcompile+inductor, nothing frozen and 25/50/75/100% of the weight-gradient
  FLOPs frozen; median ms, ratio to eager autograd, peak memory (CUDA allocator);
- ``pipeline``: a single-process pipeline (every stage on the one device, 2 pipeline ranks),
  1F1B and ZBV, eager and inductor backends, TimelyFreeze run to its steady phase: measured
  step time (median of the steady steps that compiled nothing) vs the prediction from the
  measured profile (CUDA-event action timers). One device runs every rank's actions in turn,
  so the prediction is the sum of the actions' medians (``predicted_ms``; the difference is
  host overhead); ``two_device_ms`` is the simulated makespan had each rank its own device.
  Tokens/s, compile and first-step time;
- ``memory``: activation checkpointing none/full/selective (fp32) and bf16 rows of a LLaMA
  stage (bytes kept for the backward, step time; ``bench_memory.gpu_check_section``);
- ``cuda_graphs``: the backward section's stage with ``InductorBackend(cuda_graphs=True)`` vs
  plain inductor (CUDA only; a skip row elsewhere).

Another section registers with one line, ``SECTIONS.append(Section("name", fn))``, where
``fn(ctx) -> list[dict]``; its rows land in the JSON under its name and in the printed table.
Writes one JSON (``--out``, default benchmarks/results/gpu_check.json) and prints one table.
Never asserts on time; a section that raises is recorded as an error row and the rest run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "gpu_check.json"
BACKENDS = ("eager", "inductor")


@dataclass(frozen=True)
class Sizes:
    """Model and run sizes of one check (``FULL`` on a GPU, ``SMALL`` on CPU)."""

    dim: int
    heads: int
    kv_heads: int
    seq: int
    microbatch: int  # sequences per microbatch
    stage_blocks: int  # blocks of the backward section's stage
    layers: int  # pipeline model
    microbatches: int
    phase_steps: int  # freezing: warm-up, each monitoring window and ramp, in steps
    steady_steps: int
    reps: int  # backward section repetitions


FULL = Sizes(dim=1024, heads=16, kv_heads=8, seq=512, microbatch=4, stage_blocks=4, layers=8,
             microbatches=8, phase_steps=3, steady_steps=6, reps=10)  # fmt: skip
SMALL = Sizes(dim=32, heads=4, kv_heads=2, seq=16, microbatch=2, stage_blocks=2, layers=4,
              microbatches=4, phase_steps=1, steady_steps=2, reps=2)  # fmt: skip


@dataclass(frozen=True)
class Context:
    device: torch.device
    sizes: Sizes
    backends: tuple[str, ...]
    pipeline_runs: frozenset[str] | None = None  # "schedule:backend" labels; None: all

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Context], list[dict]]


def _llama_config(s: Sizes, layers: int):
    from tfcompile.models.llama import LlamaConfig

    return LlamaConfig(vocab_size=256, dim=s.dim, n_layers=layers, n_heads=s.heads,
                       n_kv_heads=s.kv_heads, max_seq_len=s.seq)  # fmt: skip


class Blocks(nn.Module):
    """A middle pipeline stage: LLaMA blocks, an activation in and out."""

    def __init__(self, cfg, n: int):
        super().__init__()
        from tfcompile.models.llama import LlamaBlock

        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _blocks_stage(s: Sizes, dev: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The backward and cuda_graphs sections' stage (``s.stage_blocks`` LLaMA blocks, seeded)
    with an input activation that takes a gradient and an output gradient, both
    (microbatch, seq, dim) float32 on `dev`."""
    torch.manual_seed(0)
    module = Blocks(_llama_config(s, s.stage_blocks), s.stage_blocks).to(dev)
    x = torch.randn(s.microbatch, s.seq, s.dim, device=dev, requires_grad=True)
    dy = torch.randn(s.microbatch, s.seq, s.dim, device=dev)
    return module, x, dy


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, -2).float(), target.flatten())


def _timed(ctx: Context, fn: Callable[[], object]) -> float:
    """Seconds of one call (CUDA: synchronised before and after)."""
    ctx.sync()
    t0 = time.perf_counter()
    fn()
    ctx.sync()
    return time.perf_counter() - t0


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# -- (a) exactness ---------------------------------------------------------------------------
def exactness(ctx: Context) -> list[dict]:
    import tfcompile
    from tfcompile.models.llama import Llama

    s, dev = ctx.sizes, ctx.device
    rows = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        for case in ("llama_blocks", "llama_loss_stage"):
            torch.manual_seed(0)
            if case == "llama_blocks":
                module = Blocks(_llama_config(s, 2), 2)
                x = torch.randn(s.microbatch, s.seq, s.dim, device=dev, dtype=dtype)
                inputs, target, loss_fn = (x.requires_grad_(),), None, None
            else:
                module = Llama(_llama_config(s, 2))
                x = torch.randint(0, 256, (s.microbatch, s.seq), device=dev)
                target = torch.randint(0, 256, (s.microbatch, s.seq), device=dev)
                inputs, loss_fn = (x,), lm_loss
            module = module.to(device=dev, dtype=dtype)
            ref = copy.deepcopy(module)
            out = ref(*inputs)
            loss = loss_fn(out, target) if loss_fn else out.float().square().mean()
            loss.backward()
            grad_out = None if loss_fn else (2 * out.detach().float() / out.numel()).to(dtype)
            for backend in ctx.backends:
                mod = copy.deepcopy(module)
                prog = tfcompile.trace_stage(mod, inputs, loss_fn=loss_fn, example_target=target,
                                             backend=backend)  # fmt: skip
                prog.forward(0, *inputs, target=target)
                grads = prog.backward(0, *(() if loss_fn else (grad_out,)))
                refs = dict(ref.named_parameters())
                err = max(_rel_err(p.grad, refs[n].grad) for n, p in mod.named_parameters())
                if not loss_fn:
                    err = max(err, _rel_err(grads[0], inputs[0].grad))
                rows.append({"case": case, "dtype": str(dtype).replace("torch.", ""),
                             "backend": backend, "max_rel_err": err, "tol": tol,
                             "passed": err <= tol,
                             "compile_s": round(prog.compile_seconds, 2)})  # fmt: skip
    return rows


# -- (b) backward benchmark ------------------------------------------------------------------
def backward(ctx: Context) -> list[dict]:
    import tfcompile

    s, dev = ctx.sizes, ctx.device
    module, x, dy = _blocks_stage(s, dev)
    programs = {b: tfcompile.trace_stage(copy.deepcopy(module), (x,), backend=b)
                for b in ctx.backends}  # fmt: skip
    prog0 = programs["eager"]
    total = sum(prog0.region_flops.values())
    fractions = (0.0, 0.25, 0.5, 0.75, 1.0)
    frozen_of = {}
    for f in fractions:  # groups front to back until their FLOP share reaches f
        chosen, acc = [], 0
        for g in prog0.group_order:
            if acc >= f * total - 1e-9 * total:
                break
            chosen.append(g)
            acc += prog0.region_flops[g]
        frozen_of[f] = (frozenset(chosen), acc / total)

    def eager_fb():
        y = module(x)
        y.backward(dy)
        module.zero_grad(set_to_none=True)
        x.grad = None

    def ours_fb(prog, frozen):
        prog.forward(0, x)
        prog.backward(0, dy, frozen=frozen)
        prog.module.zero_grad(set_to_none=True)

    configs: dict[str, tuple[Callable[[], object], str, float]] = {
        "eager autograd": (eager_fb, "-", 0.0)
    }
    for backend, prog in programs.items():
        for f, (frozen, share) in frozen_of.items():
            label = f"tfcompile[{backend}] {int(100 * f)}% frozen"
            configs[label] = (lambda p=prog, fz=frozen: ours_fb(p, fz), backend, share)
    first_s = {}
    for name, (fn, _, _) in configs.items():  # first call (compiles), then one warm-up
        first_s[name] = _timed(ctx, fn)
        fn()
    samples: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(s.reps):  # round-robin, so machine noise hits every configuration
        for name, (fn, _, _) in configs.items():
            samples[name].append(_timed(ctx, fn))
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = []
    for name, (fn, backend, share) in configs.items():
        peak = None
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
            base = torch.cuda.memory_allocated(ctx.device)
            fn()
            ctx.sync()
            peak = (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20
        unfrozen = med.get(f"tfcompile[{backend}] 0% frozen", med[name])
        rows.append({
            "config": name, "frozen_flop_share": round(share, 3),
            "median_ms": 1e3 * med[name], "vs_eager_autograd": med[name] / med["eager autograd"],
            "saved_vs_unfrozen": 1 - med[name] / unfrozen if backend != "-" else None,
            "first_call_ms": 1e3 * first_s[name], "peak_mib": peak,
            "compile_s": round(programs[backend].compile_seconds, 2) if backend != "-" else 0.0,
        })  # fmt: skip
    return rows


# -- (c) single-process pipeline -------------------------------------------------------------
def pipeline(ctx: Context) -> list[dict]:
    import tfcompile
    from tfcompile.models.llama import Llama
    from tfcompile.schedules.simulate import simulate

    s, dev = ctx.sizes, ctx.device
    rows = []
    steps = s.phase_steps * 4 + s.steady_steps
    freeze = tfcompile.FreezeConfig(policy="timely", warmup_steps=s.phase_steps,
                                    monitor_steps=s.phase_steps, ramp_steps=s.phase_steps,
                                    check_every=s.phase_steps, total_steps=steps)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    batch = s.microbatch * s.microbatches
    data = [torch.randint(0, 256, (batch, s.seq + 1), generator=gen).to(dev) for _ in range(4)]
    runs = [(schedule, b, b) for schedule in ("1F1B", "ZBV") for b in ctx.backends]
    if ctx.device.type == "cuda" and "inductor" in ctx.backends:
        from tfcompile.compile_backend import InductorBackend

        runs.append(("1F1B", "inductor+cuda_graphs", InductorBackend(cuda_graphs=True)))
    if ctx.pipeline_runs is not None:
        runs = [r for r in runs if f"{r[0]}:{r[1]}" in ctx.pipeline_runs]
    for schedule, label, backend in runs:
        try:  # one run that fails is an error row; the others still run
            torch.manual_seed(0)
            model = Llama(_llama_config(s, s.layers))
            example = torch.zeros(s.microbatch, s.seq, dtype=torch.long)
            t0 = time.perf_counter()
            pipe = tfcompile.compile(model, schedule, ranks=2, microbatches=s.microbatches,
                                     example_inputs=(example,), loss_fn=lm_loss,
                                     example_target=example, device=dev, freeze=freeze,
                                     backend=backend)  # fmt: skip
            trace_s = time.perf_counter() - t0
            times, phases, compiled = [], [], []

            def compile_total(pipe=pipe) -> float:
                return sum(p.compile_seconds for p in pipe.stage_programs.values())

            for i in range(steps):
                x = data[i % len(data)]
                before = compile_total()
                times.append(_timed(ctx, lambda x=x, pipe=pipe: pipe.step(x[:, :-1], x[:, 1:])))
                phases.append(pipe.freezer.phase)
                compiled.append(compile_total() > before)
                for p in pipe.parameters():
                    p.grad = None
            # steady steps that compiled nothing (a new frozen set can need a truncated
            # backward_input variant, compiled on its first use)
            clean = [ph == "steady" and not c for ph, c in zip(phases, compiled)]
            steady = [t for t, ok in zip(times, clean) if ok] or times[-2:]
            tail = next((k for k, ok in enumerate(reversed(clean)) if not ok), len(clean))
            measured = statistics.median(steady)
            profile = pipe.measured_profile(window=max(tail, 1))  # the trailing clean steps
            tl = simulate(pipe.schedule, profile)
            serial = sum(tl.busy) / 1e3  # one device runs every rank's actions in turn
            rows.append({
                "schedule": schedule, "backend": label, "trace_s": round(trace_s, 2),
                "compile_s": round(compile_total(), 2), "first_step_s": times[0],
                "steady_step_ms": 1e3 * measured, "predicted_ms": 1e3 * serial,
                "prediction_err_pct": 100 * (serial - measured) / measured,
                "two_device_ms": tl.makespan, "tokens_per_s": batch * s.seq / measured,
                "final_phase": phases[-1], "steady_steps": len(steady),
                "compiling_steps": sum(compiled),
                "uncaptured_graphs": sum(len(getattr(p.backend, "not_captured", ()))
                                         for p in pipe.stage_programs.values()),
                "freeze_ratio": statistics.fmean(pipe.freezer.actual_ratios.values() or [0.0]),
            })  # fmt: skip
            pipe.close()
        except Exception as exc:  # noqa: BLE001 - recorded, like a failing section
            rows.append({"schedule": schedule, "backend": label,
                         "error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc()[-3000:]})  # fmt: skip
    return rows


# -- CUDA graphs: compiled regions replayed as CUDA graphs vs plain inductor -------------------
def cuda_graphs(ctx: Context) -> list[dict]:
    """Forward+backward of a LLaMA blocks stage with ``InductorBackend(cuda_graphs=True)``
    against plain inductor, at two sizes: the backward section's stage (compute-bound) and a
    small one (dim 256, 2 blocks, 2 x 128 tokens: launch-bound). Median ms, first call and the
    largest gradient difference. The default of ``cuda_graphs`` follows these rows (CUDA only;
    a skip row elsewhere)."""
    import tfcompile
    from tfcompile.compile_backend import InductorBackend

    if ctx.device.type != "cuda":
        return [{"config": "cuda_graphs", "skipped": "CUDA only"}]
    dev = ctx.device
    small = Sizes(**{**vars(ctx.sizes), "dim": 256, "heads": 4, "kv_heads": 2, "seq": 128,
                     "microbatch": 2, "stage_blocks": 2})  # fmt: skip
    rows = []
    for size_name, s in (("backward stage", ctx.sizes), ("small stage", small)):
        module, x, dy = _blocks_stage(s, dev)
        variants = {"inductor": "inductor",
                    "inductor+cuda_graphs": InductorBackend(cuda_graphs=True)}  # fmt: skip
        runs = {}
        for label, backend in variants.items():
            mod = copy.deepcopy(module)
            prog = tfcompile.trace_stage(mod, (x,), backend=backend)

            def fb(prog=prog, mod=mod, x=x, dy=dy):
                mod.zero_grad(set_to_none=True)
                prog.forward(0, x)
                prog.backward(0, dy)

            first = _timed(ctx, fb)
            fb()
            runs[label] = {"first": first, "times": [], "mod": mod, "prog": prog, "fb": fb}
        for _ in range(max(s.reps, 20)):  # round-robin, so machine noise hits both
            for run in runs.values():
                run["times"].append(_timed(ctx, run["fb"]))
        base = statistics.median(runs["inductor"]["times"])
        ref = dict(runs["inductor"]["mod"].named_parameters())
        for label, run in runs.items():
            first, mod, prog = run["first"], run["mod"], run["prog"]
            med = statistics.median(run["times"])
            err = max(_rel_err(p.grad, ref[n].grad) for n, p in mod.named_parameters())
            rows.append({"size": size_name, "config": label, "median_ms": 1e3 * med,
                         "vs_inductor": med / base, "first_call_ms": 1e3 * first,
                         "compile_s": round(prog.compile_seconds, 2),
                         "graphs": len(prog.backend.compiled),
                         "uncaptured": len(prog.backend.not_captured),
                         "uncaptured_why": sorted(set(prog.backend.not_captured.values()))[:2],
                         "max_rel_err_vs_inductor": err})  # fmt: skip
    return rows


def memory(ctx: Context) -> list[dict]:
    """Activation checkpointing (none/full/selective) and bf16 rows of a LLaMA stage: bytes kept
    for the backward and step time, from ``benchmarks/bench_memory.py``."""
    if str(HERE.parent) not in sys.path:  # run as a script: the repository root is not on it
        sys.path.insert(0, str(HERE.parent))
    from benchmarks.bench_memory import gpu_check_section

    return gpu_check_section(str(ctx.device), small=ctx.sizes is SMALL)


SECTIONS: list[Section] = [
    Section("exactness", exactness),
    Section("backward", backward),
    Section("cuda_graphs", cuda_graphs),
    Section("pipeline", pipeline),
    Section("memory", memory),
]


def _print_table(results: dict) -> None:
    for name, rows in results["sections"].items():
        print(f"\n== {name}")
        if not rows:
            continue
        for r in rows:
            if "error" in r:
                print(f"  ERROR {[v for k, v in r.items() if k not in ('error', 'trace')]}: "
                      f"{r['error']}")  # fmt: skip
        rows = [r for r in rows if "error" not in r]
        if not rows:
            continue
        keys = list(rows[0])
        print("  ".join(f"{k:>14s}" for k in keys))
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                cells.append(f"{v:>14.4g}" if isinstance(v, float) else f"{str(v):>14s}")
            print("  ".join(cells))


def _write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU: about a minute)")
    p.add_argument("--sections", default=None, help="comma-separated subset of the sections")
    p.add_argument("--backends", default=",".join(BACKENDS), help="eager,inductor or one")
    p.add_argument("--pipeline-runs", default=None,
                   help="comma-separated schedule:backend runs of the pipeline section, e.g. "
                        "1F1B:inductor+cuda_graphs (default: all)")  # fmt: skip
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device; run with --device cpu --small", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 exactness means fp32 matmuls
        torch.backends.cudnn.allow_tf32 = False
    runs = frozenset(args.pipeline_runs.split(",")) if args.pipeline_runs else None
    ctx = Context(device, SMALL if args.small else FULL, tuple(args.backends.split(",")), runs)
    wanted = set(args.sections.split(",")) if args.sections else None
    out = Path(args.out)
    results = {
        "config": {"device": str(device), "torch": torch.__version__, "sizes": vars(ctx.sizes),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "backends": ctx.backends},  # fmt: skip
        "sections": {},
        "seconds": {},
    }
    for section in SECTIONS:
        if wanted is not None and section.name not in wanted:
            continue
        t0 = time.perf_counter()
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {section.name}", flush=True)
        try:
            results["sections"][section.name] = section.run(ctx)
        except Exception as exc:  # noqa: BLE001 - recorded, the other sections still run
            results["sections"][section.name] = [
                {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            ]
        results["seconds"][section.name] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_check] {section.name}: {results['seconds'][section.name]} s", flush=True)
        _write(out, results)  # after every section: a run cut short keeps what it measured
    _print_table(results)
    print(f"\nresults: {out}")
    failed = [n for n, rows in results["sections"].items() if any("error" in r for r in rows)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
