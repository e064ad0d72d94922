"""Train a LLaMA-style byte-level language model with tfcompile pipeline parallelism.

Data: the Python standard library's own .py files (held-out files for validation).
Runs on several processes or one:

    torchrun --nproc-per-node 2 examples/train_llama.py --steps 200 --freeze timely
    python examples/train_llama.py --ranks 2 --steps 50          # all stages in one process
    ... --save ckpt --stop-at 30, then ... --resume ckpt          # checkpoint and resume
    ... --save 'ckpt/step{step}' --save-every 50                  # periodic checkpoints

Prints loss and tokens/s as it goes and writes, under --out: the step log (CSV) and its plots,
the measured-vs-predicted timeline (Chrome trace: open in https://ui.perfetto.dev), the
schedule DAG (DOT/SVG) and a Gantt picture of the planned step.

Every flag is a field of `tfcompile.train.run.RunConfig` (its help text is the field's doc);
the run itself is `tfcompile.train.run.run`.
"""

from __future__ import annotations

import argparse

from tfcompile.train.run import RunConfig, run


def parse_args(argv=None) -> RunConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    RunConfig.add_arguments(parser)
    return RunConfig.from_args(parser.parse_args(argv))


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
