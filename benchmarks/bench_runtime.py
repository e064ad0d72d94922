"""Runtime step time: tfcompile against torch.distributed.pipelining, freezing, prediction.

Same LLaMA-style model (tfcompile.models.llama, same seed), same 2-stage split (stage 0 =
tok_embeddings + layers[:L/2], stage 1 = layers[L/2:] + norm + output), same batches (the
stdlib byte corpus), same schedule (1F1B on 2 ranks; gloo on CPU, NCCL on a CUDA GPU when
there is one). Rows:

- tfcompile vs torch pipelining (PipelineStage + Schedule1F1B), step time and ratio;
- tfcompile with the last stage's weight-gradient work frozen in every microbatch vs nothing;
- the planner's simulated makespan from the measured profile vs the measured step time;
- (unless --no-compiled) tfcompile with inductor-compiled stage regions (``backend="inductor"``),
  nothing frozen and W frozen, and torch pipelining over ``torch.compile``'d stage modules
  (where torch refuses the combination, the refusal is recorded instead). Compile time and
  the first step (which compiles: both compile lazily) are reported apart from the steady
  medians.

Timing: one step = barrier, then the rank's step call, then (CUDA) synchronize; the step's
time is the slowest rank's. Gradients are dropped (p.grad = None) before every step, outside
the timed region; no optimizer step (the same for both systems). Blocks of steps alternate
between the systems (tfcompile, torch, tfcompile W-frozen, ...) so machine noise hits all of
them; medians are over every measured step after warmup. The first step's loss of both systems
is checked to agree (rtol 1e-5), and so are the first step's gradients.

Prints a table and writes JSON (default benchmarks/results/bench_runtime.json). Never asserts
on time. Usage:

    python benchmarks/bench_runtime.py [--steps 30] [--dim 256] [--layers 4] [--quick]

(it starts itself under torchrun with 2 processes; --worker is the per-rank entry point).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from tfcompile.train.launch import TIMED_OUT, torchrun
from tfcompile.train.run import RunConfig

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_runtime.json"
NPROC = 2
QUICK = {
    "steps": 6,
    "warmup": 2,
    "block": 2,
    "dim": 64,
    "layers": 2,
    "microbatches": 4,
    "batch": 8,
    "seq": 32,
}


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="measured steps per system")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps per system first")
    p.add_argument("--block", type=int, default=5, help="steps per interleaved block")
    # the model and batch knobs are RunConfig's (tfcompile.train.run), with this benchmark's sizes
    RunConfig.add_arguments(
        p,
        defaults=RunConfig(dim=256, seq=128, threads=1),
        only=("dim", "layers", "heads", "kv_heads", "microbatches", "batch", "seq", "seed",
              "threads"),
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny config (about a minute)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument(
        "--no-compiled", action="store_true", help="skip tfcompile+inductor and torch.compile"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        defaults = p.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    return args


# -- launcher ---------------------------------------------------------------------------------
def launch(args: argparse.Namespace, argv: list[str]) -> int:
    rc = torchrun(
        Path(__file__).resolve(),
        ["--worker", *argv],
        nproc=NPROC,
        timeout=args.timeout,
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(args.threads))},
    )
    if rc == TIMED_OUT:
        print(f"bench_runtime: gave up after {args.timeout:.0f} s", file=sys.stderr)
    elif rc == 0:
        print(f"results: {args.out}")
    return rc


# -- worker -----------------------------------------------------------------------------------
def log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[bench_runtime {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_model(args):
    from tfcompile.models.llama import byte_lm

    return byte_lm(args.dim, args.layers, args.heads, args.kv_heads, args.seq, args.seed)


def torch_stage_module(model, stage: int, cut: int) -> nn.Module:
    """The same split as tfcompile's split_points=[f"layers.{cut}"], as nn.Sequential."""
    if stage == 0:
        return nn.Sequential(model.tok_embeddings, *model.layers[:cut])
    return nn.Sequential(*model.layers[cut:], model.norm, model.output)


class TorchPP:
    """torch.distributed.pipelining: PipelineStage + Schedule1F1B over the same split."""

    def __init__(self, args, rank: int, world: int, device: torch.device, compiled=False):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B

        self.model = build_model(args)
        self.rank, self.world = rank, world
        self.module = torch_stage_module(self.model, rank, args.layers // 2).to(device)
        if compiled:  # the stage module's forward compiled; parameters stay the model's
            self.module = torch.compile(self.module)
        self.names = {id(p): n for n, p in self.model.named_parameters()}
        self.stage = PipelineStage(self.module, rank, world, device)
        self.schedule = Schedule1F1B(self.stage, args.microbatches, loss_fn=lm_loss)

    def step(self, x, y) -> float | None:
        if self.rank == 0:
            self.schedule.step(x, return_outputs=False)
            return None
        if self.rank == self.world - 1:
            losses: list = []
            self.schedule.step(target=y, losses=losses, return_outputs=False)
            return torch.stack([loss.detach() for loss in losses]).mean().item()
        self.schedule.step(return_outputs=False)
        return None

    def named_parameters(self):
        for p in self.module.parameters():
            yield self.names[id(p)], p


def timed_step(fn, device: torch.device) -> tuple[float, object]:
    dist.barrier()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def drop_grads(params) -> None:
    for p in params:
        p.grad = None


def grad_rel_err(pipe, peer) -> float:
    ours = dict(pipe.named_parameters())
    worst = 0.0
    for name, p in peer.named_parameters():
        a, b = ours[name].grad, p.grad
        if a is None or b is None:
            return float("inf")
        err = (a - b).norm().item() / max(b.norm().item(), 1e-30)
        worst = max(worst, err)
    return worst


def profile_of(pipe, steps: set[int]) -> dict:
    """Measured profile (ms) from the timer records of the given step indices, all ranks."""
    from tfcompile.runtime.timers import median_profile

    parts = [p for rec in pipe.timer.records for p in rec if p.step in steps]
    arrivals = [a for rec in pipe.timer.arrivals for a in rec if a.step in steps]
    gathered = pipe.all_gather_object((parts, arrivals))
    all_parts = [p for g in gathered for p in g[0]]
    all_arrivals = [a for g in gathered for a in g[1]]
    spans: dict[int, list[float]] = {}
    for p in all_parts:
        lo_hi = spans.setdefault(p.step, [p.start, p.end])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], p.start), max(lo_hi[1], p.end)
    span_ms = statistics.median(1e3 * (hi - lo) for lo, hi in spans.values())
    profile = median_profile(all_parts, all_arrivals, pipe.num_stages)
    return {
        **profile,
        "span_ms": span_ms,
        "replay_error_pct": replay_error(pipe, all_parts),
        "replay_error_b_as_iw_pct": replay_error(pipe, all_parts, b_as_i_then_w(pipe.schedule)),
    }


def b_as_i_then_w(schedule):
    """The schedule with every B(s, m) written as I(s, m) then W(s, m): how the runtime runs a
    B action (the input gradient is sent before the weight-gradient work starts)."""
    return schedule.with_split_backward()


def replay_error(pipe, parts, schedule=None) -> float:
    """Median over steps of (simulated - measured span) / measured span, where each step is
    simulated with its own measured per-action times (per microbatch): the error of the
    schedule model alone, without the aggregation of action times into per-stage medians."""
    from tfcompile.schedules.simulate import simulate

    S, M = pipe.num_stages, pipe.num_microbatches
    by_step: dict[int, list] = {}
    for p in parts:
        by_step.setdefault(p.step, []).append(p)
    errors = []
    for step_parts in by_step.values():
        table = [[{"F": 0.0, "I": 0.0, "W": 0.0} for _ in range(S)] for _ in range(M)]
        for p in step_parts:
            table[p.microbatch][p.stage][p.part] += 1e3 * p.seconds
        stages = [
            {k: statistics.median(table[m][s][k] for m in range(M)) for k in ("F", "I", "W")}
            for s in range(S)
        ]
        predicted = simulate(
            schedule or pipe.schedule,
            {"stages": stages, "comm": 0.0, "unit": "ms", "microbatches": table},
        ).makespan
        span = 1e3 * (max(p.end for p in step_parts) - min(p.start for p in step_parts))
        errors.append(100.0 * (predicted - span) / span)
    return statistics.median(errors)


def worker(args: argparse.Namespace) -> None:
    import tfcompile
    from tfcompile.datasets import stdlib_corpus
    from tfcompile.schedules.simulate import simulate

    torch.set_num_threads(args.threads)
    world = int(os.environ["WORLD_SIZE"])
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    M = args.microbatches
    mb = args.batch // M
    example = torch.zeros(mb, args.seq, dtype=torch.long)
    started = time.perf_counter()
    pipe = tfcompile.compile(
        build_model(args),
        schedule="1F1B",
        stages=world,
        microbatches=M,
        example_inputs=(example,),
        loss_fn=lm_loss,
        example_target=example,
        split_points=[f"layers.{args.layers // 2}"],
        device=device,
    )
    rank = pipe.rank
    compile_s = time.perf_counter() - started
    # keep every step's action times (the default window is 50 steps)
    pipe.timer.set_window(None)
    peer = TorchPP(args, rank, world, device)
    log(rank, f"tfcompile.compile took {compile_s:.1f} s; device {device}, {dist.get_backend()}")

    corpus = stdlib_corpus(max_bytes=2_000_000)
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [corpus.batch("train", args.batch, args.seq, gen) for _ in range(8)]
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    last = pipe.num_stages - 1
    frozen_w = {}
    if last in pipe.local_stages:
        groups = set(pipe.stage_groups(last))
        frozen_w = {(last, m): groups for m in range(M)}

    def run_tf(i: int, frozen=None):
        x, y = batches[i % len(batches)]
        drop_grads(pipe.parameters())
        return timed_step(lambda: pipe.step(x, y, frozen=frozen), device)

    def run_torch(i: int):
        x, y = batches[i % len(batches)]
        drop_grads(p for _, p in peer.named_parameters())
        return timed_step(lambda: peer.step(x, y), device)

    # correctness: first step of both on the same batch and the same initial weights
    _, loss_tf = run_tf(0)
    _, loss_torch = run_torch(0)
    gerr = max(pipe.all_gather_object(grad_rel_err(pipe, peer)))
    losses = [v for v in pipe.all_gather_object((loss_tf, loss_torch)) if v[0] is not None]
    loss_tf, loss_torch = losses[0]
    loss_ok = abs(loss_tf - loss_torch) <= 1e-5 * abs(loss_torch)
    check = {
        "loss_tfcompile": loss_tf,
        "loss_torch": loss_torch,
        "loss_rel_err": abs(loss_tf - loss_torch) / abs(loss_torch),
        "grad_rel_err": gerr,
        "passed": bool(loss_ok and gerr <= 1e-4),
    }
    log(
        rank,
        f"first-step loss: tfcompile {loss_tf:.6f}, torch pipelining {loss_torch:.6f} "
        f"(rel err {check['loss_rel_err']:.1e}); gradients rel err {gerr:.1e} -> "
        f"{'OK' if check['passed'] else 'MISMATCH'}",
    )

    systems = {
        "tfcompile": lambda i: run_tf(i),
        "torch": run_torch,
        "tfcompile_wfrozen": lambda i: run_tf(i, frozen_w),
    }
    compiled = {} if args.no_compiled else compiled_systems(args, rank, world, device, batches)
    for name, entry in compiled.items():
        if "run" in entry:
            systems[name] = entry.pop("run")
    times: dict[str, list[float]] = {k: [] for k in systems}
    tf_steps: dict[str, set[int]] = {"tfcompile": set(), "tfcompile_wfrozen": set()}
    ind_pipe = compiled.get("tfcompile_inductor", {}).get("pipe")
    for name, fn in systems.items():
        log(rank, f"warmup: {name} ({args.warmup} steps)")
        for i in range(args.warmup):
            fn(i)
    done = 0
    block_index = 0
    while done < args.steps:
        n = min(args.block, args.steps - done)
        for name, fn in systems.items():
            log(rank, f"block {block_index}: {name} steps {done}..{done + n - 1}")
            for i in range(done, done + n):
                if name in tf_steps:
                    tf_steps[name].add(pipe.step_index)
                if ind_pipe is not None and name.startswith("tfcompile_inductor"):
                    tf_steps.setdefault(name, set()).add(ind_pipe.step_index)
                seconds, _ = fn(i)
                times[name].append(seconds)
        done += n
        block_index += 1

    # per step, the slowest rank's time
    gathered = pipe.all_gather_object(times)
    step_ms = {
        name: [1e3 * max(g[name][i] for g in gathered) for i in range(len(times[name]))]
        for name in times
    }
    med = {name: statistics.median(v) for name, v in step_ms.items()}

    prof_none = profile_of(pipe, tf_steps["tfcompile"])
    prof_frozen = profile_of(pipe, tf_steps["tfcompile_wfrozen"])
    ratios = {(last, m): 1.0 for m in range(M)}
    planner_profile = {k: prof_none[k] for k in ("stages", "comm", "unit")}
    pred_none = simulate(pipe.schedule, planner_profile).makespan
    pred_frozen = simulate(pipe.schedule, planner_profile, ratios).makespan
    pred_frozen_measured = simulate(
        pipe.schedule, {k: prof_frozen[k] for k in ("stages", "comm", "unit")}
    ).makespan
    ind_profiles = {}
    if ind_pipe is not None:  # collective: every rank takes part
        for name in ("tfcompile_inductor", "tfcompile_inductor_wfrozen"):
            ind_profiles[name] = profile_of(ind_pipe, tf_steps.get(name, set()))
        ind_pipe.close()
    split_sched = b_as_i_then_w(pipe.schedule)
    pred_none_iw = simulate(split_sched, planner_profile).makespan
    pred_frozen_iw = simulate(split_sched, planner_profile, ratios).makespan
    pipe.close()
    if rank != 0:
        return

    def err(pred, measured):
        return 100.0 * (pred - measured) / measured

    result = {
        "config": {
            "schedule": "1F1B",
            "ranks": world,
            "device": str(device),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "torch": torch.__version__,
            "threads_per_rank": args.threads,
            "dim": args.dim,
            "layers": args.layers,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "microbatches": M,
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "warmup": args.warmup,
            "block": args.block,
            "split": f"stage 0 = tok_embeddings + layers[:{args.layers // 2}], "
            f"stage 1 = layers[{args.layers // 2}:] + norm + output",
            "optimizer_step": False,
            "timing": "barrier, step, (cuda sync); slowest rank per step; median over steps",
        },
        "check": check,
        "step_ms": step_ms,
        "median_ms": med,
        "ratio_tfcompile_vs_torch": med["tfcompile"] / med["torch"],
        "ratio_wfrozen_vs_none": med["tfcompile_wfrozen"] / med["tfcompile"],
        "profile_none": prof_none,
        "profile_wfrozen": prof_frozen,
        "compiled": compiled_summary(compiled, med, ind_profiles, M, last),
        "prediction": {
            "none": {
                "predicted_ms": pred_none,
                "measured_ms": med["tfcompile"],
                "measured_span_ms": prof_none["span_ms"],
                "error_pct": err(pred_none, med["tfcompile"]),
                "error_vs_span_pct": err(pred_none, prof_none["span_ms"]),
            },
            "wfrozen_from_unfrozen_profile": {
                "predicted_ms": pred_frozen,
                "measured_ms": med["tfcompile_wfrozen"],
                "measured_span_ms": prof_frozen["span_ms"],
                "error_pct": err(pred_frozen, med["tfcompile_wfrozen"]),
                "error_vs_span_pct": err(pred_frozen, prof_frozen["span_ms"]),
            },
            "none_b_as_iw": {
                "predicted_ms": pred_none_iw,
                "measured_ms": med["tfcompile"],
                "error_pct": err(pred_none_iw, med["tfcompile"]),
            },
            "wfrozen_b_as_iw": {
                "predicted_ms": pred_frozen_iw,
                "measured_ms": med["tfcompile_wfrozen"],
                "error_pct": err(pred_frozen_iw, med["tfcompile_wfrozen"]),
            },
            "wfrozen_from_frozen_profile": {
                "predicted_ms": pred_frozen_measured,
                "measured_ms": med["tfcompile_wfrozen"],
                "error_pct": err(pred_frozen_measured, med["tfcompile_wfrozen"]),
            },
        },
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def compiled_systems(args, rank: int, world: int, device, batches) -> dict[str, dict]:
    """tfcompile+inductor (nothing frozen, last stage's W frozen) and torch pipelining over
    torch.compile'd stage modules: per system its step function ("run"), compile time and
    first-step time, or the error where it cannot run (recorded, the benchmark goes on)."""
    import tfcompile

    M = args.microbatches
    example = torch.zeros(args.batch // M, args.seq, dtype=torch.long)
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    ipipe = tfcompile.compile(
        build_model(args), schedule="1F1B", stages=world, microbatches=M,
        example_inputs=(example,), loss_fn=lm_loss, example_target=example,
        split_points=[f"layers.{args.layers // 2}"], device=device, backend="inductor",
    )  # fmt: skip
    ipipe.timer.set_window(None)
    trace_s = time.perf_counter() - t0
    last = ipipe.num_stages - 1
    frozen_w = {}
    if last in ipipe.local_stages:
        frozen_w = {(last, m): set(ipipe.stage_groups(last)) for m in range(M)}

    def run_ind(i: int, frozen=None):
        x, y = batches[i % len(batches)]
        drop_grads(ipipe.parameters())
        return timed_step(lambda: ipipe.step(x, y, frozen=frozen), device)

    first_s, _ = run_ind(0)  # compiles the forward, backward_input and every region
    frozen_first_s, _ = run_ind(0, frozen_w)  # compiles nothing new (variant 0 is used)
    compile_s = sum(p.compile_seconds for p in ipipe.stage_programs.values())
    compile_s = max(ipipe.all_gather_object(compile_s))
    first_s = max(ipipe.all_gather_object(first_s))
    log(rank, f"tfcompile+inductor: compile {compile_s:.1f} s, first step {first_s:.1f} s")
    out["tfcompile_inductor"] = {
        "run": run_ind, "pipe": ipipe, "trace_s": trace_s, "compile_s": compile_s,
        "first_step_s": first_s,
    }  # fmt: skip
    out["tfcompile_inductor_wfrozen"] = {
        "run": lambda i: run_ind(i, frozen_w), "first_step_s": frozen_first_s,
    }  # fmt: skip
    try:
        peer = TorchPP(args, rank, world, device, compiled=True)

        def run_peer(i: int):
            x, y = batches[i % len(batches)]
            drop_grads(p for _, p in peer.named_parameters())
            return timed_step(lambda: peer.step(x, y), device)

        t = time.perf_counter()
        run_peer(0)  # torch.compile compiles on the first call
        first = max(ipipe.all_gather_object(time.perf_counter() - t))
        log(rank, f"torch pipelining + torch.compile: first step {first:.1f} s")
        out["torch_compile"] = {"run": run_peer, "first_step_s": first}
    except Exception as exc:  # noqa: BLE001 - torch refusing the combination is a result
        out["torch_compile"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        log(rank, f"torch pipelining + torch.compile refused: {out['torch_compile']['error']}")
    return out


def compiled_summary(compiled: dict, med: dict, profiles: dict, M: int, last: int) -> dict:
    """Ratios of the compiled systems (medians of steady steps) and the saving of freezing the
    last stage's W with inductor against that W's measured share."""
    if not compiled:
        return {}
    summary = {
        name: {k: v for k, v in entry.items() if k not in ("pipe", "run")}
        for name, entry in compiled.items()
    }
    ind = med.get("tfcompile_inductor")
    if ind is None:
        return summary
    summary["ratio_inductor_vs_torch"] = ind / med["torch"]
    summary["ratio_inductor_vs_tfcompile_eager"] = ind / med["tfcompile"]
    if "torch_compile" in med:
        summary["ratio_inductor_vs_torch_compile"] = ind / med["torch_compile"]
    saved = ind - med["tfcompile_inductor_wfrozen"]
    prof = profiles.get("tfcompile_inductor")
    if prof is not None:
        w_ms = M * prof["stages"][last]["W"]
        summary["freeze_saved_ms"] = saved
        summary["frozen_w_ms"] = w_ms
        summary["saved_over_frozen_w"] = saved / w_ms if w_ms else None
    for name, prof in profiles.items():  # per-action medians (ms) of the compiled pipeline
        summary[name]["profile"] = {k: prof[k] for k in ("stages", "comm", "span_ms")}
    return summary


def print_table(r: dict) -> None:
    c, med = r["config"], r["median_ms"]
    print()
    print(
        f"1F1B, {c['ranks']} ranks, {c['device']} ({c['backend']}), {c['threads_per_rank']} "
        f"thread(s)/rank; LLaMA dim {c['dim']} x {c['layers']} layers, batch {c['batch']} x "
        f"seq {c['seq']} in {c['microbatches']} microbatches; {c['steps']} steps each; "
        "no optimizer step"
    )
    rows = [
        ("torch.distributed.pipelining", "PipelineStage+Schedule1F1B", med["torch"], 1.0),
        ("tfcompile", "nothing frozen", med["tfcompile"], r["ratio_tfcompile_vs_torch"]),
        (
            "tfcompile",
            "stage 1 W frozen (vs none)",
            med["tfcompile_wfrozen"],
            r["ratio_wfrozen_vs_none"],
        ),
    ]
    print(f"{'system':<30} {'config':<28} {'median step ms':>15} {'ratio':>7}")
    for system, config, ms, ratio in rows:
        print(f"{system:<30} {config:<28} {ms:>15.2f} {ratio:>7.3f}")
    print()
    print(f"{'planner prediction':<44} {'predicted ms':>12} {'measured ms':>12} {'error %':>8}")
    labels = {
        "none": "nothing frozen (measured profile)",
        "wfrozen_from_unfrozen_profile": "W frozen (ratios 1.0, unfrozen profile)",
        "wfrozen_from_frozen_profile": "W frozen (profile of frozen steps)",
        "none_b_as_iw": "nothing frozen, B simulated as I then W",
        "wfrozen_b_as_iw": "W frozen, B simulated as I then W",
    }
    for key, label in labels.items():
        p = r["prediction"][key]
        print(
            f"{label:<44} {p['predicted_ms']:>12.2f} {p['measured_ms']:>12.2f} "
            f"{p['error_pct']:>+8.1f}"
        )
    p = r["prediction"]["none"]
    print(
        f"(first action to last action, all ranks: {p['measured_span_ms']:.2f} ms; prediction "
        f"error against it {p['error_vs_span_pct']:+.1f}%; each step replayed with its own "
        f"action times, comm 0: {r['profile_none']['replay_error_pct']:+.1f}%, with B as I "
        f"then W: {r['profile_none']['replay_error_b_as_iw_pct']:+.1f}%)"
    )
    comp = r.get("compiled") or {}
    if comp:
        print()
        print(f"{'compiled systems':<44} {'median ms':>10} {'first step s':>12} {'compile s':>9}")
        for name in ("tfcompile_inductor", "tfcompile_inductor_wfrozen", "torch_compile"):
            e = comp.get(name, {})
            if "error" in e:
                print(f"{name:<44} refused: {e['error'][:120]}")
                continue
            ms = med.get(name, float("nan"))
            first, cs = e.get("first_step_s", float("nan")), e.get("compile_s", float("nan"))
            print(f"{name:<44} {ms:>10.2f} {first:>12.2f} {cs:>9.2f}")
        for name in ("tfcompile_inductor", "tfcompile_inductor_wfrozen"):
            prof = comp.get(name, {}).get("profile")
            if prof:  # where the compiled step's time goes, per stage
                parts = "; ".join(
                    f"stage {s}: F {st['F']:.1f} I {st['I']:.1f} W {st['W']:.1f}"
                    for s, st in enumerate(prof["stages"])
                )
                print(f"  {name} action medians (ms): {parts}; span {prof['span_ms']:.1f}")
        for key in ("ratio_inductor_vs_torch", "ratio_inductor_vs_torch_compile",
                    "ratio_inductor_vs_tfcompile_eager", "saved_over_frozen_w"):  # fmt: skip
            if comp.get(key) is not None:
                print(f"{key:<44} {comp[key]:>10.3f}")
    ch = r["check"]
    print(
        f"first-step loss tfcompile {ch['loss_tfcompile']:.6f} vs torch {ch['loss_torch']:.6f}"
        f", grad rel err {ch['grad_rel_err']:.1e}: {'passed' if ch['passed'] else 'FAILED'}"
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return launch(args, argv)


if __name__ == "__main__":
    sys.exit(main())
