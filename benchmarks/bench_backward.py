"""Backward time of a traced LLaMA-style stage vs eager autograd, with 0-100% of groups frozen.

Stage: 4 LlamaBlocks (a middle pipeline stage: its input is an activation that needs a
gradient), float32 on CPU. Rows: eager backward; ours with nothing frozen; ours with the groups
frozen whose FLOP share reaches 25/50/75/100%. Configurations are measured round-robin. For
every row: median backward time (forward excluded); ratio to eager (of medians, of best times,
and the median of per-round paired ratios, the most robust on a shared machine); time saved vs
ours-unfrozen; the frozen regions' measured share of the backward ("expected" saving) and
saved/expected. Peak memory of one forward+backward: bytes in use by malloc above the level
before the forward, sampled after every aten op (glibc mallinfo2 in a TorchDispatchMode).
A second table does the same for a first stage (token embedding + blocks, integer inputs), where
freezing front-to-back also truncates the backward at the earliest unfrozen group.

Where the time goes: one forward + backward of eager autograd, ours and ours+inductor under
torch.profiler, split into library kernels (GEMM, fused attention, convolution: the same
oneDNN/MKL kernels whichever backend calls them) and everything else. Eager's library share is
the floor of any such backend's ratio to eager (it would have to make every other op free).

Rows "ind", "ind_25".. are the same with inductor-compiled regions (``backend="inductor"``);
its compile time and each configuration's first-call time are reported apart from the medians.

Prints tables and writes JSON to benchmarks/results/bench_backward.json. Never asserts on time.
Usage: python benchmarks/bench_backward.py [--dim 512] [--reps 15] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile.models.llama import LlamaBlock, LlamaConfig
from tfcompile.passes.flops import format_flops
from tfcompile.testing import lm_loss


class Blocks(nn.Module):
    def __init__(self, cfg: LlamaConfig, n: int, embed: bool = False):
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim) if embed else None
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(n))

    def forward(self, x):
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
        for layer in self.layers:
            x = layer(x)
        return x


def _median_ms(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        ts.append(fn())
    return 1e3 * statistics.median(ts)


def _malloc_in_use():
    """Bytes in use by glibc malloc (heap + mmap'd blocks), or None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in fields.split()]

        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        mi = libc.mallinfo2()
        return mi.uordblks + mi.hblkhd

    return in_use


def _peak_bytes(fn) -> int:
    """Peak bytes allocated above the level before fn, sampled after every aten op (a
    TorchDispatchMode reading glibc's mallinfo2; it sees eager autograd's backward ops too)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    in_use = _malloc_in_use()
    if in_use is None:
        return -1

    class Peak(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.base = in_use()
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use() - self.base)
            return out

    with Peak() as p:
        fn()
    return p.peak


# Ops whose work is a vendor library kernel (oneDNN/MKL GEMM, the fused attention kernels,
# convolution) that eager autograd and inductor call alike: inductor on CPU lowers matrix
# multiplies and attention to these same extern kernels, so their time is the part of a step no
# backend that calls them can shrink.
LIBRARY_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_addmm_activation")
LIBRARY_PREFIXES = ("aten::_scaled_dot_product", "aten::_flash_attention",
                    "aten::_efficient_attention", "aten::mkldnn_convolution",
                    "aten::convolution_backward")  # fmt: skip


def library_kernel_split(fn, iters: int = 5) -> dict[str, float]:
    """Per call of `fn` (one forward + backward), the profiler's self CPU time (ms) in library
    kernels (LIBRARY_OPS: GEMM, fused attention, convolution) and in everything else.

    ``library_ms / (library_ms + other_ms)`` of eager autograd is the floor of the
    ours-vs-eager ratio for any backend that calls the same library kernels: it would have to
    make every other op (elementwise, reductions, copies, Python) free. The profiler adds its
    own cost to every op, most to eager's many small ones, so this floor is on the low side
    (the true one is higher). CPU only (on CUDA the CPU self time of an op is its launch, not
    its kernel)."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: allocator and lazy compilation outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    library = other = 0.0
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3 / iters
        if e.key in LIBRARY_OPS or e.key.startswith(LIBRARY_PREFIXES):
            library += ms
        else:
            other += ms
    return {"library_ms": library, "other_ms": other, "library_share": library / (library + other)}


def freeze_sets(prog, fractions):
    """Groups frozen for each target FLOP fraction: whole groups, back to front in forward order
    for a middle stage would do as well; we freeze front-to-back (the order that also truncates a
    first stage's backward), taking groups until their FLOP share reaches the target."""
    total = sum(prog.region_flops.values())
    out = {}
    for f in fractions:
        chosen, acc = [], 0
        for g in prog.group_order:
            if acc >= f * total - 1e-9 * total:
                break
            chosen.append(g)
            acc += prog.region_flops[g]
        out[f] = (frozenset(chosen), acc / total)
    return out


def run_stage(module, x, target_fn, reps, label, loss=False, inductor=True):
    module.train()
    params = list(module.parameters())
    needs_grad = x.is_floating_point()
    x_ex = x.detach().requires_grad_(needs_grad)
    kw = {}
    if loss:
        target = target_fn()
        kw = dict(loss_fn=lm_loss, example_target=target)
    t0 = time.perf_counter()
    prog = tfcompile.trace_stage(module, (x_ex,), **kw)
    trace_s = time.perf_counter() - t0
    # the same stage with inductor-compiled regions ("ind" rows); same module and parameters
    iprog = tfcompile.trace_stage(module, (x_ex,), backend="inductor", **kw) if inductor else None
    out_shape = None
    with torch.no_grad():
        out_shape = module(x).shape
    gout = torch.randn(out_shape)
    tgt = kw.get("example_target")

    def eager_once():
        for p in params:
            p.grad = None
        xi = x.detach().requires_grad_(needs_grad)
        out = module(xi)
        if loss:
            out = lm_loss(out, tgt)
        t = time.perf_counter()
        if loss:
            out.backward()
        else:
            out.backward(gout)
        return time.perf_counter() - t

    def ours_once(frozen=frozenset(), prog=prog):
        for p in params:
            p.grad = None
        prog.forward(0, x, target=tgt)
        t = time.perf_counter()
        if loss:
            prog.backward(0, frozen=frozen)
        else:
            prog.backward(0, gout, frozen=frozen)
        return time.perf_counter() - t

    fractions = [0.25, 0.5, 0.75, 1.0]
    sets = freeze_sets(prog, fractions)
    # interleave measurements so machine noise hits every configuration alike
    configs = {"eager": eager_once, "ours": ours_once}
    for f in fractions:
        configs[f"ours_{int(f * 100)}"] = lambda fr=sets[f][0]: ours_once(fr)
    if iprog is not None:
        configs["ind"] = lambda: ours_once(prog=iprog)
        for f in fractions:
            configs[f"ind_{int(f * 100)}"] = lambda fr=sets[f][0]: ours_once(fr, iprog)
    samples = {k: [] for k in configs}
    first_ms = {}
    for k, fn in configs.items():  # the first call compiles (inductor): timed separately
        t = time.perf_counter()
        fn()
        first_ms[k] = 1e3 * (time.perf_counter() - t)
        fn()
    region_ms = {g: [] for g in prog.group_order}
    for _ in range(reps):
        for k, fn in configs.items():
            samples[k].append(fn())
            if k == "ours":  # per-region times of the unfrozen backward just measured
                for g in prog.group_order:
                    region_ms[g].append(1e3 * prog.last_times[g])
    med = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    best = {k: 1e3 * min(v) for k, v in samples.items()}
    # paired ratio: each round measures every configuration back to back, so the median of the
    # per-round ratios cancels slow drifts of machine load
    paired = {
        k: statistics.median(a / b for a, b in zip(v, samples["eager"])) for k, v in samples.items()
    }
    region_med = {g: statistics.median(v) for g, v in region_ms.items()}

    # memory: one forward + backward each
    def eager_fb():
        for p in params:
            p.grad = None
        out = module(x.detach().requires_grad_(needs_grad))
        if loss:
            lm_loss(out, tgt).backward()
        else:
            out.backward(gout)

    def ours_fb():
        for p in params:
            p.grad = None
        prog.forward(0, x, target=tgt)
        prog.backward(0, *(() if loss else (gout,)))

    eager_fb()
    ours_fb()
    for p in params:
        p.grad = None
    mem = {"eager": _peak_bytes(eager_fb)}
    for p in params:
        p.grad = None
    mem["ours"] = _peak_bytes(ours_fb)
    if iprog is not None:
        for p in params:
            p.grad = None

        def ind_fb():
            for p in params:
                p.grad = None
            iprog.forward(0, x, target=tgt)
            iprog.backward(0, *(() if loss else (gout,)))

        mem["ind"] = _peak_bytes(ind_fb)
    # where the time of one forward + backward goes: library kernels vs everything else
    kernels = {"eager": library_kernel_split(eager_fb), "ours": library_kernel_split(ours_fb)}
    if iprog is not None:
        kernels["ind"] = library_kernel_split(ind_fb)

    rows = []
    base = med["ours"]
    bw_flops = prog.input_flops + sum(prog.region_flops.values())
    keys = ["eager", "ours"] + [f"ours_{int(f * 100)}" for f in fractions]
    if iprog is not None:
        keys += ["ind"] + [f"ind_{int(f * 100)}" for f in fractions]
    for k in keys:
        row = {
            "config": k,
            "median_ms": med[k],
            "vs_eager": med[k] / med["eager"],
            "best_ms": best[k],
            "best_vs_eager": best[k] / best["eager"],
            "paired_vs_eager": paired[k],
            "first_call_ms": first_ms[k],
        }
        if "_" in k:
            f = int(k.split("_")[1]) / 100
            frozen, flop_frac = sets[f]
            expected = sum(region_med[g] for g in frozen)
            # saving relative to the same backend unfrozen; "expected" is the frozen regions'
            # share of the eager-backend backward (region times of the inductor program are
            # not timed separately), so for "ind" rows saved/expected compares shares
            unfrozen = med[k.split("_")[0]]
            saved = unfrozen - med[k]
            expected = expected * unfrozen / base
            row.update(
                frozen=sorted(frozen),
                frozen_flop_fraction=flop_frac,
                frozen_share_of_backward_flops=sum(prog.region_flops[g] for g in frozen) / bw_flops,
                saved_ms=saved,
                saved_fraction_of_backward=saved / unfrozen,
                frozen_regions_ms=expected,
                frozen_regions_share=expected / unfrozen,
                saved_over_expected=saved / expected if expected else float("nan"),
            )
        rows.append(row)

    print(f"\n== {label}: groups {prog.group_order} (trace {trace_s:.1f} s)")
    print(
        "   region FLOPs: "
        + ", ".join(f"{g}={format_flops(v)}" for g, v in prog.region_flops.items())
    )
    print(
        f"   backward_input FLOPs {format_flops(prog.input_flops)}; region medians (ms): "
        + ", ".join(f"{g}={v:.1f}" for g, v in region_med.items())
    )
    print(
        f"{'config':10s} {'median ms':>10s} {'/eager':>7s} {'best ms':>8s} {'/eager':>7s} "
        f"{'paired':>7s} "
        f"{'frozen W FLOPs':>14s} {'of bw FLOPs':>11s} {'saved':>7s} {'regions share':>13s} "
        f"{'saved/expected':>14s}"
    )
    for r in rows:
        extra = ""
        if "saved_ms" in r:
            extra = (
                f" {r['frozen_flop_fraction']:>14.0%} {r['frozen_share_of_backward_flops']:>11.1%}"
                f" {r['saved_fraction_of_backward']:>7.1%} {r['frozen_regions_share']:>13.1%}"
                f" {r['saved_over_expected']:>14.2f}"
            )
        print(
            f"{r['config']:10s} {r['median_ms']:>10.1f} {r['vs_eager']:>7.3f} "
            f"{r['best_ms']:>8.1f} {r['best_vs_eager']:>7.3f} {r['paired_vs_eager']:>7.3f}{extra}"
        )
    print(
        f"peak memory of forward+backward: eager {mem['eager'] / 2**20:.1f} MiB, "
        f"ours {mem['ours'] / 2**20:.1f} MiB (ratio {mem['ours'] / max(mem['eager'], 1):.3f})"
        + (f", ours+inductor {mem['ind'] / 2**20:.1f} MiB" if "ind" in mem else "")
    )
    print(
        "profiled forward+backward (self CPU ms per call): "
        + "; ".join(
            f"{k} library kernels {v['library_ms']:.1f} + other {v['other_ms']:.1f}"
            for k, v in kernels.items()
        )
        + f". Floor of any backend calling the same kernels vs eager: "
        f"{kernels['eager']['library_share']:.3f}"
    )
    if iprog is not None:
        print(
            f"inductor: compile {iprog.compile_seconds:.1f} s in total; first call "
            f"{first_ms['ind']:.0f} ms unfrozen (compiles forward, backward_input, regions)"
        )
    return {
        "label": label,
        "groups": prog.group_order,
        "region_flops": {g: int(v) for g, v in prog.region_flops.items()},
        "region_ms": region_med,
        "rows": rows,
        "peak_bytes": mem,
        "kernel_split_ms": kernels,
        "trace_s": trace_s,
        "inductor_compile_s": iprog.compile_seconds if iprog is not None else None,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few reps (smoke run)")
    ap.add_argument("--no-inductor", action="store_true", help="skip the inductor rows")
    ap.add_argument("--out", default="benchmarks/results/bench_backward.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.dim, args.seq, args.reps, args.batch = 128, 32, 5, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1024,
        dim=args.dim,
        n_layers=args.blocks,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        max_seq_len=max(128, args.seq),
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dim {args.dim}, "
        f"{args.blocks} blocks, batch {args.batch} x seq {args.seq}, float32, {args.reps} reps"
    )
    results = {"config": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}
    x = torch.randn(args.batch, args.seq, args.dim)
    results["middle_stage"] = run_stage(
        Blocks(cfg, args.blocks), x, None, args.reps, "middle stage (activation input)",
        inductor=not args.no_inductor,
    )
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    results["first_stage"] = run_stage(
        Blocks(cfg, args.blocks, embed=True),
        tokens,
        None,
        args.reps,
        "first stage (token ids: frozen prefix truncates the backward)",
        inductor=not args.no_inductor,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
