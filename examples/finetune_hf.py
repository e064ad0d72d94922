"""Train a transformers Llama-family model with tfcompile pipeline parallelism and TimelyFreeze.

The model is ``transformers.LlamaForCausalLM`` built from a config (nothing is downloaded) and
handed to ``tfcompile.compile`` unchanged: its adapter (tfcompile/adapters/hf_causal_lm.py)
gives the blocks (``model.embed_tokens``, ``model.layers.i``, ``model.norm``, ``lm_head``), the
freezing groups named as in the model, and transformers' own next-token loss. Data: byte-level
windows of the Python standard library's .py files (tfcompile.datasets.stdlib_corpus).

    torchrun --nproc-per-node 2 examples/finetune_hf.py --steps 40
    python examples/finetune_hf.py --ranks 2 --steps 20            # all stages in one process

Prints loss, tokens/s, the freezing phase and the frozen share of each step's groups.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# the dev extras' torchvision (timm's) may not load beside the CPU torch, and transformers
# imports it: tests/zoo/timm_compat.py makes that import work (see its docstring)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))
import timm_compat  # noqa: E402,F401,I001 - before transformers

import torch  # noqa: E402
import transformers  # noqa: E402

import tfcompile  # noqa: E402
from tfcompile.datasets import stdlib_corpus  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--hidden", type=int, default=64, help="hidden size")
    p.add_argument("--seq", type=int, default=64, help="tokens (bytes) per sequence")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--schedule", default="1F1B")
    p.add_argument("--ranks", type=int, default=None,
                   help="pipeline ranks when run without torchrun (all in this process)")
    p.add_argument("--freeze", default="timely", help="FreezeConfig policy (timely, none, ...)")
    p.add_argument("--phase-steps", type=int, default=6,
                   help="warm-up, monitoring and ramp steps of TimelyFreeze (each)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_model(args) -> transformers.LlamaForCausalLM:
    """A byte-level Llama (vocabulary 256) from a config, eager attention, tied embeddings."""
    torch.manual_seed(args.seed)
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=args.seq, tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(cfg)


def main(argv=None) -> list[float]:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    data = stdlib_corpus(max_bytes=2_000_000)
    model = build_model(args)
    mb = args.batch // args.microbatches
    example = torch.zeros(mb, args.seq, dtype=torch.long)
    freeze = None
    if args.freeze != "none":
        freeze = tfcompile.FreezeConfig(
            policy=args.freeze, warmup_steps=args.phase_steps, monitor_steps=args.phase_steps,
            ramp_steps=args.phase_steps, check_every=2, total_steps=args.steps)
    # no loss_fn and no example_target: the adapter's next-token loss, targets = input ids
    pipe = tfcompile.compile(model, args.schedule, microbatches=args.microbatches,
                             example_inputs=(example,), ranks=args.ranks, freeze=freeze)
    speaker = pipe.has_last_stage
    if speaker:
        groups = [g for s in pipe.local_stages for g in pipe.stage_groups(s)]
        print(f"LlamaForCausalLM {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
              f"parameters, {pipe.num_stages} stages on {pipe.schedule.num_ranks} ranks; "
              f"groups here: {groups}")
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    losses = []
    for step in range(args.steps):
        ids, _ = data.batch("train", args.batch, args.seq, gen)  # labels = ids (transformers)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = pipe.step(ids, ids)
        optimizer.step()
        dt = time.perf_counter() - t0
        if speaker:
            losses.append(loss)
            fr = pipe.freezer
            phase = fr.phase if fr is not None else "off"
            ratios = dict(fr.actual_ratios) if fr is not None else {}
            mean = sum(ratios.values()) / len(ratios) if ratios else 0.0
            print(f"step {step:4d}  loss {loss:.4f}  {args.batch * args.seq / dt:8.0f} tok/s  "
                  f"phase {phase:<10} frozen {mean:.2f}", flush=True)
    pipe.close()
    return losses


if __name__ == "__main__":
    main()
