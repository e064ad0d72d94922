"""Stage-compiler demo: trace a LLaMA-style first pipeline stage (token embedding + 4 decoder
blocks + LM head with loss), list its weight-gradient regions with their FLOPs, measure the
backward time saved when groups are frozen, check the gradients against eager autograd, and
write a graphviz dump under out/.

Run: make demo   (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import tfcompile
from tfcompile.models import Llama, LlamaConfig
from tfcompile.passes.flops import format_flops
from tfcompile.testing import lm_loss

OUT = Path("out")
REPS = 9


def measure(prog, tokens, target, configs: dict[str, frozenset]) -> tuple[dict, dict]:
    """Best-of-REPS backward ms per frozen set, measured round-robin so machine noise hits all
    configurations alike (the minimum is the robust estimate on a shared machine); also the best
    time of each region in the unfrozen runs."""
    times = {k: [] for k in configs}
    region = {g: [] for g in prog.group_order}
    for rep in range(REPS + 1):
        for k, frozen in configs.items():
            prog.forward(0, tokens, target=target)
            t = time.perf_counter()
            prog.backward(0, frozen=frozen)
            if rep:  # first round is warm-up
                times[k].append(time.perf_counter() - t)
                if not frozen:
                    for g in prog.group_order:
                        region[g].append(prog.last_times[g])
    med = lambda v: 1e3 * min(v)
    return {k: med(v) for k, v in times.items()}, {g: med(v) for g, v in region.items()}


def main():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, dim=256, n_layers=4, n_heads=8, n_kv_heads=2)
    model = Llama(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (4, 64))
    target = torch.randint(0, cfg.vocab_size, (4, 64))

    t0 = time.perf_counter()
    prog = tfcompile.trace_stage(model, (tokens,), loss_fn=lm_loss, example_target=target)
    print(
        f"traced {type(model).__name__} (dim {cfg.dim}, {cfg.n_layers} blocks) as one stage "
        f"in {time.perf_counter() - t0:.1f} s: {len(prog.group_order)} parameter groups"
    )

    # exactness against eager autograd
    lm_loss(model(tokens), target).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    prog.forward(0, tokens, target=target)
    prog.backward(0)
    err = max(
        ((p.grad - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-30)).item()
        for n, p in model.named_parameters()
    )
    print(f"max relative gradient error vs eager autograd (float32): {err:.1e}")

    order = prog.group_order
    configs = {"none": frozenset()}
    configs.update({f"alone {g}": frozenset([g]) for g in order})
    configs.update({f"prefix {k}": frozenset(order[:k]) for k in range(1, len(order) + 1)})
    ms, region_ms = measure(prog, tokens, target, configs)
    base = ms["none"]
    total = sum(prog.region_flops.values())
    print(
        f"\nbackward with nothing frozen: {base:.1f} ms (best of {REPS}); "
        f"backward_input {format_flops(prog.input_flops)}, regions {format_flops(total)}"
    )
    print(
        f"\n{'group':16s} {'W FLOPs':>12s} {'share':>6s} {'region ms':>9s} "
        f"{'saved ms (frozen alone)':>23s}"
    )
    for g in order:
        print(
            f"{g:16s} {format_flops(prog.region_flops[g]):>12s} "
            f"{prog.region_flops[g] / total:>6.1%} {region_ms[g]:>9.1f} "
            f"{base - ms[f'alone {g}']:>23.1f}"
        )

    print(
        "\nfront-to-back freezing (token-id input: the backward stops at the earliest "
        "unfrozen group)"
    )
    print(f"{'frozen prefix':42s} {'frozen W FLOPs':>14s} {'backward ms':>11s} {'saved':>7s}")
    for k in range(len(order) + 1):
        frozen = frozenset(order[:k])
        t = ms[f"prefix {k}"] if k else base
        share = sum(prog.region_flops[g] for g in frozen) / total
        label = ", ".join(order[:k]) or "(nothing)"
        if len(label) > 40:
            label = f"first {k} groups"
        print(f"{label:42s} {share:>14.0%} {t:>11.1f} {1 - t / base:>7.0%}")

    # graphviz: the whole stage (compact) and a single block in full detail
    OUT.mkdir(exist_ok=True)
    paths = tfcompile.dump_stage(prog, OUT / "llama_stage", compact=True)
    small_cfg = LlamaConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4, n_kv_heads=2)
    from tfcompile.models import LlamaBlock

    block = LlamaBlock(small_cfg)
    bprog = tfcompile.trace_stage(block, (torch.randn(2, 8, 32, requires_grad=True),))
    bpaths = tfcompile.dump_stage(bprog, OUT / "llama_block")
    for p in (paths, bpaths):
        print(
            f"wrote {p['dot']}"
            + (f" and {p['svg']}" if p["svg"] else " (install graphviz for SVG)")
        )


if __name__ == "__main__":
    main()
