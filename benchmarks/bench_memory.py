"""Memory benchmark (issue 15): activation checkpointing, memory-aware freezing, bf16 bytes sent.

On one LLaMA stage of N blocks (activation input, CPU, float32 unless stated):

- activation memory kept after the forward (``StageProgram.activation_bytes``) and the median
  forward+backward step time for ``activation_checkpointing`` "none" / "full" / "selective",
  as ratios to "none" (goals: full <= 0.5x memory at <= 1.4x time, selective <= 0.75x at
  <= 1.1x), plus the peak bytes of one forward+backward measured as bench_backward does;
- memory-aware freezing: bytes kept between backward_input and backward_weight (the stash)
  against the fraction of groups frozen (a frozen group's stash is never kept);
- bytes sent per microbatch across a stage boundary (activation + gradient), bf16 vs fp32.

Prints tables and writes JSON to benchmarks/results/bench_memory.json. Never asserts on time.
``gpu_check_section(device, small)`` returns the AC and bf16 rows for the GPU check script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import tfcompile
from benchmarks.bench_backward import Blocks, _peak_bytes
from tfcompile.models.llama import LlamaConfig

POLICIES = ("none", "full", "selective")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn, reps: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _stage(cfg: LlamaConfig, blocks: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    return Blocks(cfg, blocks).to(device)


def ac_rows(cfg, blocks, batch, seq, reps, device, precision=None) -> list[dict]:
    """One row per AC policy: kept bytes, median F+B seconds, ratios to "none"."""
    x = torch.randn(batch, seq, cfg.dim, device=device, requires_grad=True)
    g = torch.randn(batch, seq, cfg.dim, device=device)
    rows = []
    for policy in POLICIES:
        module = _stage(cfg, blocks, device)
        prog = tfcompile.trace_stage(module, (x,), activation_checkpointing=policy,
                                     mixed_precision=precision).precompile()  # fmt: skip
        xin = x.detach().to(prog.traced.input_specs[0].dtype).requires_grad_()
        gin = g.to(prog.traced.tangent_specs[0].dtype)
        prog.forward(0, xin)
        kept = prog.activation_bytes()
        prog.release()

        def step(prog=prog, xin=xin, gin=gin):
            prog.forward(0, xin)
            prog.backward(0, gin)

        seconds = _median_s(step, reps, device)
        peak = _peak_bytes(step) if device.type == "cpu" else -1
        for p in module.parameters():
            p.grad = None
        rows.append({"policy": policy, "precision": precision or "fp32",
                     "activation_bytes": kept, "step_s": seconds, "peak_bytes": peak})
    base = rows[0]
    for r in rows:
        r["memory_ratio"] = r["activation_bytes"] / max(1, base["activation_bytes"])
        r["time_ratio"] = r["step_s"] / base["step_s"]
    return rows


def freeze_rows(cfg, blocks, batch, seq, device) -> list[dict]:
    """Bytes kept between backward_input and backward_weight against the frozen fraction
    (the first k groups frozen), for AC "none" and "full"."""
    x = torch.randn(batch, seq, cfg.dim, device=device, requires_grad=True)
    g = torch.randn(batch, seq, cfg.dim, device=device)
    rows = []
    for policy in ("none", "full"):
        prog = tfcompile.trace_stage(_stage(cfg, blocks, device), (x,),
                                     activation_checkpointing=policy)  # fmt: skip
        order = prog.group_order
        for k in range(len(order) + 1):
            frozen = frozenset(order[:k])
            prog.forward(0, x)
            after_forward = prog.activation_bytes()
            prog.backward_input(0, g, frozen=frozen)
            stash = prog.activation_bytes()
            prog.backward_weight(0, frozen=frozen)
            rows.append({"policy": policy, "freeze_ratio": k / len(order),
                         "after_forward_bytes": after_forward, "stash_bytes": stash})
    return rows


def _square_loss(out: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    return out.float().pow(2).mean()


def wire_rows(cfg, batch, seq, device) -> list[dict]:
    """Bytes crossing one stage boundary per microbatch (activation forward, its gradient
    back), read from the traced boundary of a 2-stage pipeline per precision."""
    rows = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Blocks(cfg, 2, embed=True)
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq))
        pipe = tfcompile.compile(model, "1F1B", microbatches=2, ranks=2,
                                 example_inputs=(tokens,), loss_fn=_square_loss,
                                 example_target=tokens, split_points=["layers.1"],
                                 mixed_precision=precision, device=device)  # fmt: skip
        act = pipe.stage_programs[1].traced.input_specs[0]
        grad = pipe.stage_programs[0].traced.tangent_specs[0]
        nbytes = sum(
            torch.Size(s.shape).numel() * torch.empty((), dtype=s.dtype).element_size()
            for s in (act, grad)
        )
        rows.append({"precision": precision, "dtype": str(act.dtype), "bytes_sent": nbytes})
        pipe.close()
    rows[1]["ratio_to_fp32"] = rows[1]["bytes_sent"] / rows[0]["bytes_sent"]
    return rows


# -- peak memory per rank against torch.distributed.pipelining (torchrun, 2 ranks) -------------
def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _torch_stages(model, num_stages: int) -> list[torch.nn.Module]:
    """The LLaMA cut into `num_stages` nn.Sequential stages with equal block counts (the split
    tfcompile makes with the same split points)."""
    per = len(model.layers) // num_stages
    out = []
    for s in range(num_stages):
        layers = list(model.layers[s * per : (s + 1) * per])
        first = [model.tok_embeddings] if s == 0 else []
        last = [model.norm, model.output] if s == num_stages - 1 else []
        out.append(torch.nn.Sequential(*first, *layers, *last))
    return out


def _peer_step(schedule_name: str, model, rank: int, world: int, microbatches: int):
    """A step function of torch.distributed.pipelining for `schedule_name` on this rank."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleZBVZeroBubble

    device = torch.device("cpu")
    if schedule_name == "1F1B":
        mods = _torch_stages(model, world)
        stage = PipelineStage(mods[rank], rank, world, device)
        sched = Schedule1F1B(stage, microbatches, loss_fn=_lm_loss)
        has_first, has_last = rank == 0, rank == world - 1
    else:  # ZBV: stages rank and 2*world-1-rank on this rank (a V)
        n = 2 * world
        mods = _torch_stages(model, n)
        mine = [rank, n - 1 - rank]
        stages = [PipelineStage(mods[s], s, n, device) for s in mine]
        sched = ScheduleZBVZeroBubble(stages, microbatches, loss_fn=_lm_loss)
        has_first = has_last = rank == 0

    def step(x, y):
        kwargs = {}
        if has_last:
            kwargs["target"] = y
            kwargs["losses"] = []
        args = (x,) if has_first else ()
        sched.step(*args, return_outputs=False, **kwargs)

    return step


def peer_worker(args) -> None:
    """Run under torchrun: per schedule, the peak bytes of one step (above the level before
    it, bench_backward's measure) of tfcompile and of torch.distributed.pipelining, with
    tfcompile's memory_stats; rank 0 writes the JSON rows."""
    import torch.distributed as dist

    from tfcompile.models.llama import byte_lm

    torch.set_num_threads(1)
    rows = []
    M, mb = args.microbatches, args.batch
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (M * mb, args.seq), generator=gen)
    y = torch.randint(0, 256, (M * mb, args.seq), generator=gen)
    for name in ("1F1B", "ZBV"):
        model = byte_lm(args.dim, args.blocks, 4, 2, args.seq, 0)
        world = 2
        stages = world * (2 if name == "ZBV" else 1)
        per = args.blocks // stages
        pipe = tfcompile.compile(
            model, name, stages=stages, microbatches=M, example_inputs=(x[:mb],),
            loss_fn=_lm_loss, example_target=y[:mb],
            split_points=[f"layers.{per * s}" for s in range(1, stages)],
        )  # fmt: skip
        rank = pipe.rank
        for _ in range(2):
            pipe.step(x, y)
        dist.barrier()
        ours = _peak_bytes(lambda pipe=pipe: pipe.step(x, y))
        stats = pipe.memory_stats()
        pipe.close()
        peer_model = byte_lm(args.dim, args.blocks, 4, 2, args.seq, 0)
        peer = _peer_step(name, peer_model, rank, world, M)
        for _ in range(2):
            peer(x, y)
        dist.barrier()
        theirs = _peak_bytes(lambda peer=peer: peer(x, y))
        rows.append({"schedule": name, "rank": rank, "tfcompile_peak_bytes": ours,
                     "torch_pipelining_peak_bytes": theirs,
                     "ratio": ours / max(1, theirs), "memory_stats": stats})  # fmt: skip
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    if dist.get_rank() == 0:
        Path(args.peer_out).write_text(json.dumps([r for rs in gathered for r in rs]))


def peer_rows(args) -> list[dict]:
    """Start :func:`peer_worker` on 2 CPU ranks and read its rows (empty if it failed)."""
    from tfcompile.train.launch import torchrun

    out = Path(args.out).with_suffix(".peer.json")
    argv = ["--worker", "--peer-out", str(out), "--dim", str(args.dim), "--blocks",
            str(args.blocks), "--batch", str(args.batch), "--seq", str(args.seq),
            "--microbatches", str(args.microbatches)]  # fmt: skip
    rc = torchrun(Path(__file__).resolve(), argv, nproc=2, timeout=args.timeout,
                  env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    if rc != 0 or not out.exists():
        print(f"peer memory run failed (exit {rc})")
        return []
    return json.loads(out.read_text())


def gpu_check_section(device: str, small: bool) -> list[dict]:
    """Rows for the GPU check script: AC policies (fp32) and bf16 (AC "none" and "full") on a
    LLaMA stage on `device`; each row has name, activation bytes, step seconds and ratios."""
    dev = torch.device(device)
    dim, blocks, seq, batch, reps = (128, 2, 64, 2, 5) if small else (512, 8, 256, 4, 10)
    cfg = LlamaConfig(vocab_size=1024, dim=dim, n_layers=blocks, n_heads=8, n_kv_heads=4,
                      max_seq_len=max(128, seq))  # fmt: skip
    rows = ac_rows(cfg, blocks, batch, seq, reps, dev)
    rows += [r for r in ac_rows(cfg, blocks, batch, seq, reps, dev, "bf16")
             if r["policy"] in ("none", "full")]  # fmt: skip
    for r in rows:
        r["name"] = f"memory/{r['precision']}/ac={r['policy']}"
    return rows


def _mib(b: int) -> str:
    return f"{b / 2**20:8.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: stable medians on a shared machine)")
    ap.add_argument("--microbatches", type=int, default=4, help="for the 2-rank peer run")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--quick", action="store_true", help="small sizes, few reps (smoke run)")
    ap.add_argument("--no-peer", action="store_true", help="skip the 2-rank peer run")
    ap.add_argument("--out", default="benchmarks/results/bench_memory.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        peer_worker(args)
        return
    if args.quick:
        args.dim, args.seq, args.reps, args.batch, args.blocks = 64, 32, 3, 2, 4
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    cfg = LlamaConfig(vocab_size=1024, dim=args.dim, n_layers=args.blocks, n_heads=8,
                      n_kv_heads=4, max_seq_len=max(128, args.seq))  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LLaMA stage of "
          f"{args.blocks} blocks, dim {args.dim}, batch {args.batch} x seq {args.seq}, "
          f"{args.reps} reps (medians)")  # fmt: skip
    results = {"config": vars(args), "torch": torch.__version__}
    rows = results["activation_checkpointing"] = ac_rows(
        cfg, args.blocks, args.batch, args.seq, args.reps, device
    )
    print("\npolicy     kept MiB  x none   step ms  x none   peak MiB")
    for r in rows:
        print(f"{r['policy']:<10} {_mib(r['activation_bytes'])}  {r['memory_ratio']:5.2f}  "
              f"{1e3 * r['step_s']:8.1f}  {r['time_ratio']:5.2f}  "
              f"{_mib(r['peak_bytes'])}")  # fmt: skip
    rows = results["freezing"] = freeze_rows(cfg, args.blocks, args.batch, args.seq, device)
    print("\npolicy  frozen  after F MiB  stash MiB")
    for r in rows:
        print(f"{r['policy']:<7} {r['freeze_ratio']:5.2f}  {_mib(r['after_forward_bytes'])}  "
              f"   {_mib(r['stash_bytes'])}")  # fmt: skip
    rows = results["bytes_sent"] = wire_rows(cfg, args.batch, args.seq, device)
    print("\nprecision  boundary dtype     bytes sent per microbatch")
    for r in rows:
        print(f"{r['precision']:<10} {r['dtype']:<18} {r['bytes_sent']}"
              + (f"  ({r['ratio_to_fp32']:.2f}x fp32)" if "ratio_to_fp32" in r else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_peer:
        rows = results["peak_per_rank"] = peer_rows(args)
        print("\nschedule rank  tfcompile MiB  torch pipelining MiB  ratio  recv buffers MiB")
        for r in rows:
            print(f"{r['schedule']:<8} {r['rank']:>4}  {_mib(r['tfcompile_peak_bytes'])}"
                  f"       {_mib(r['torch_pipelining_peak_bytes'])}         {r['ratio']:5.2f}"
                  f"  {_mib(r['memory_stats']['recv_buffer_bytes'])}")  # fmt: skip
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
