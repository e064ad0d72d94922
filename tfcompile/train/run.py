"""`RunConfig` and `run(config)`: one training run of the byte-level LLaMA LM, end to end.

The config's fields are its documentation: each one's ``help`` is what ``--help`` prints, and
the command line of the example and the benchmarks is generated from them
(`RunConfig.add_arguments` / `RunConfig.from_args`), so a knob is declared once. `run` is the
generic half of a training script: build the pipeline, train (`tfcompile.train.loop.train`)
with the step log, checkpoint cadence and evaluation, then summarise what happened.

    python -m torch.distributed.run --nproc-per-node 2 examples/train_llama.py --freeze timely
    run(dataclasses.replace(RunConfig(), steps=40, freeze="timely", ranks=2))  # one process
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import statistics
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfcompile.compile_backend import BACKENDS
from tfcompile.errors import RuntimeConfigError
from tfcompile.freeze.config import (
    DEFAULT_REPLAN_EVERY,
    GRAD_MODES,
    PLANNED_POLICIES,
    POLICIES,
    FreezeConfig,
)
from tfcompile.train.checkpoint import load_checkpoint, save_checkpoint
from tfcompile.train.loop import TrainResult, train
from tfcompile.train.steplog import StepLog, merge_rank_logs, plot_rows


def _opt(default: Any, doc: str, **meta: Any) -> Any:
    """A field whose ``doc`` is its documentation (and its ``--help`` line)."""
    return field(default=default, metadata={"help": doc, **meta})


@dataclass
class RunConfig:
    """Everything one training run needs, with the examples' defaults.

    Lengths are in steps. The freezing knobs are the command line's: one phase unit
    (``warmup``) sets warm-up, monitoring and ramp lengths and the decision interval, as in
    the paper's 100-step units scaled down; `freeze_config` turns them into a `FreezeConfig`.
    A library caller who wants every `FreezeConfig` field sets ``freezing`` instead.
    """

    # -- model: the byte-level LLaMA LM of tfcompile.models.llama.byte_lm
    dim: int = _opt(128, "model width")
    layers: int = _opt(4, "transformer blocks")
    heads: int = _opt(4, "attention heads")
    kv_heads: int = _opt(2, "key/value heads (grouped-query attention)")
    seq: int = _opt(64, "sequence length (bytes)")
    data: str = _opt(
        "stdlib",
        "training text: stdlib (the standard library's sources), code (the same without "
        "pydoc_data: a pretraining domain) or docs (pydoc's English language reference: a "
        "fine-tuning domain disjoint from code)",
        choices=("stdlib", "code", "docs"),
    )
    init: str | None = _opt(
        None, "start from these model weights (a torch.save'd state_dict, e.g. a pretrained LM)"
    )
    # -- pipeline
    schedule: str = _opt("1F1B", "pipeline schedule (any name tfcompile.schedules.build knows)")
    ranks: int | None = _opt(
        None, "single-process: pipeline ranks (under torchrun the world size is used)"
    )
    stages: int | None = _opt(None, "pipeline stages (default: the schedule's for the ranks)")
    microbatches: int = _opt(4, "microbatches per step")
    batch: int = _opt(16, "sequences per step (split into the microbatches)")
    backend: str = _opt(
        "eager",
        "how stage graphs run: eager (op by op) or inductor (compiled on first use, cached)",
        choices=BACKENDS,
    )
    activation_checkpointing: str = _opt(
        "none", "forward values the backward recomputes: none, full (block inputs kept), "
        "selective (matmul outputs kept)", choices=("none", "full", "selective"),
    )  # fmt: skip
    mixed_precision: str = _opt(
        "fp32", "fp32, or bf16 (bf16 autocast traced in, bf16 between stages, fp32 weights)",
        choices=("fp32", "bf16"),
    )  # fmt: skip
    dp: int = _opt(
        1,
        "data-parallel pipeline replicas under torchrun (world = dp x pipeline ranks); "
        "--batch is the global batch, each replica trains on its share",
    )
    # -- optimisation
    steps: int = _opt(100, "training steps")
    lr: float = _opt(3e-3, "peak learning rate (AdamW; warm-up over a tenth, cosine decay)")
    seed: int = _opt(0, "seed of the model, the data order and the freezing policy")
    threads: int | None = _opt(
        None, "torch threads per process (default: the cores divided among the processes)"
    )
    # -- freezing (see tfcompile.freeze.config.FreezeConfig)
    freeze: str = _opt("none", "freezing policy: " + ", ".join(POLICIES), choices=POLICIES)
    max_freeze: float = _opt(
        FreezeConfig.max_freeze_ratio, "per-stage cap on the average freeze ratio"
    )
    prefix_freeze: bool = _opt(
        False, "timely freezes front to back on the token stage (its backward then truncates)"
    )
    wmin_microbatches: int = _opt(
        0,
        "freeze everything in only this many microbatches per step while measuring w_min "
        "(0: all microbatches, as in the paper)",
    )
    warmup: int | None = _opt(
        None, "freeze phase unit in steps: warm-up, ramp (default: a tenth of --steps)"
    )
    monitor: int | None = _opt(None, "steps per monitoring window (default: the phase unit)")
    check_every: int | None = _opt(
        None, "steps between freezing decisions (default: half the phase unit)"
    )
    grad: str = _opt(
        "drop",
        "gradient of partly frozen steps: drop (mean over all microbatches, the paper) or "
        "rescale (mean over those that contributed)",
        choices=GRAD_MODES,
    )
    plan: str | None = _opt(
        None,
        "pin this plan (plan.json of `tfcompile plan --out` or of an earlier run's --out): "
        "no monitoring, no LP, the same ratios every run",
    )
    freezing: FreezeConfig | None = _opt(
        None,
        "library callers: this FreezeConfig as is, instead of the knobs above",
        cli=False,
    )
    # -- evaluation and logging
    eval_every: int = _opt(0, "evaluate every N steps (0: only at the end)")
    val_batches: int = _opt(2, "validation batches (fixed: held-out files, fixed seed)")
    log_every: int = _opt(10, "print a progress line every N steps")
    # -- outputs
    out: str = _opt("out/llama", "output directory: step log, plots, traces, DAG, Gantt")
    no_dumps: bool = _opt(False, "skip the trace/DAG/Gantt dumps")
    no_plots: bool = _opt(False, "skip the step-log plots")
    tensorboard: str | None = _opt(None, "also log to this TensorBoard dir")
    # -- checkpoints
    save: str | None = _opt(
        None,
        "checkpoint directory (torch.distributed.checkpoint, all ranks); {step} is replaced "
        "by the number of steps done",
    )
    save_every: int = _opt(0, "checkpoint every N steps (0: only at the end, with --save)")
    resume: str | None = _opt(
        None, "checkpoint to resume from ({step}: the latest complete one), at any --dp"
    )
    stop_at: int | None = _opt(None, "stop after this step (simulates a crash)")

    def freeze_config(self) -> FreezeConfig | None:
        """The freezing controller's config, or None when nothing is frozen."""
        if self.freezing is not None:
            return self.freezing
        if self.freeze == "none":
            return None
        unit = self.warmup if self.warmup is not None else max(1, self.steps // 10)
        return FreezeConfig(
            policy=self.freeze,
            max_freeze_ratio=self.max_freeze,
            warmup_steps=unit,
            monitor_steps=self.monitor or unit,
            ramp_steps=unit,
            check_every=self.check_every or max(1, unit // 2),
            replan_every=DEFAULT_REPLAN_EVERY,
            grad=self.grad,
            seed=self.seed,
            total_steps=self.steps,
            autofreeze_every=unit,
            wmin_microbatches=self.wmin_microbatches,
            prefix_on_truncating_stages=self.prefix_freeze,
            plan=self.plan if self.freeze in PLANNED_POLICIES else None,
        )

    # -- the command line, generated from the fields -------------------------------------
    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        *,
        defaults: RunConfig | None = None,
        only: typing.Iterable[str] | None = None,
        suppress_defaults: bool = False,
    ) -> None:
        """Add one ``--flag`` per field (``kv_heads`` -> ``--kv-heads``) with its help text.

        ``defaults``: the values shown and used when a flag is absent (a script's own
        defaults; the dataclass's otherwise). ``only``: the fields to expose (a script that
        honours a subset). ``suppress_defaults``: absent flags leave no attribute, so
        ``from_args(ns, base=preset)`` keeps the preset's values.
        """
        defaults = defaults if defaults is not None else cls()
        hints = typing.get_type_hints(cls)
        names = None if only is None else set(only)
        if names is not None and not names <= cls.field_names():
            raise ValueError(f"unknown RunConfig field(s): {sorted(names - cls.field_names())}")
        group = parser.add_argument_group("run (tfcompile.train.run.RunConfig)")
        for f in dataclasses.fields(cls):
            if not f.metadata.get("cli", True) or (names is not None and f.name not in names):
                continue
            flag = "--" + f.name.replace("_", "-")
            default = argparse.SUPPRESS if suppress_defaults else getattr(defaults, f.name)
            kind = _scalar_type(hints[f.name])
            if kind is bool:
                group.add_argument(
                    flag, dest=f.name, action="store_true", default=default, help=f.metadata["help"]
                )
                continue
            shown = "" if default in (None, argparse.SUPPRESS) else " (default: %(default)s)"
            group.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=default,
                choices=f.metadata.get("choices"),
                help=f.metadata["help"] + shown,
            )

    @classmethod
    def from_args(
        cls,
        ns: argparse.Namespace,
        base: RunConfig | None = None,
        *,
        only: typing.Iterable[str] | None = None,
    ) -> RunConfig:
        """The config the parsed flags describe; fields without an attribute keep ``base``'s.

        Attributes that are not fields (a script's own flags) are ignored, and so are fields
        outside ``only`` when it is given (a script's own ``--out`` is not a run's).
        """
        names = cls.field_names() if only is None else cls.field_names() & set(only)
        given = {n: getattr(ns, n) for n in names if hasattr(ns, n)}
        return dataclasses.replace(base if base is not None else cls(), **given)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    # -- plain data (JSON), e.g. for torchrun workers -------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`; an unknown key is an error (a typo must not be ignored)."""
        unknown = set(data) - cls.field_names()
        if unknown:
            raise ValueError(f"unknown RunConfig field(s): {sorted(unknown)}")
        data = dict(data)
        if data.get("freezing") is not None:
            data["freezing"] = FreezeConfig(**data["freezing"])
        return cls(**data)

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _scalar_type(hint: Any) -> type:
    """``int | None`` -> ``int``: the type argparse converts a flag's string with."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no command-line type for {hint!r}")
        hint = args[0]
    if hint not in (int, float, str, bool):
        raise TypeError(f"no command-line type for {hint!r}")
    return hint


# -- the pieces of a run ------------------------------------------------------------------
def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-byte cross-entropy over every position."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


@functools.lru_cache(maxsize=3)
def corpus(data: str = "stdlib"):
    """A byte corpus by `RunConfig.data` name, cached: the benchmark runs several trainings
    in one process."""
    from tfcompile.datasets import docs_corpus, stdlib_corpus

    if data == "docs":
        return docs_corpus()
    if data == "code":
        return stdlib_corpus(exclude=("pydoc_data",))
    return stdlib_corpus()


def build_pipeline(config: RunConfig, world: int):
    """The model (seeded with ``config.seed``) compiled for this rank: (pipe, model)."""
    import tfcompile
    from tfcompile.models.llama import byte_lm

    model = byte_lm(
        config.dim, config.layers, config.heads, config.kv_heads, config.seq, config.seed
    )
    if config.batch % (config.dp * config.microbatches):
        raise RuntimeConfigError(
            f"--batch {config.batch} does not split into --dp {config.dp} x --microbatches "
            f"{config.microbatches} equal microbatches"
        )
    if config.init:
        model.load_state_dict(torch.load(config.init, map_location="cpu", weights_only=True))
    rows = config.batch // (config.dp * config.microbatches)
    example = torch.zeros(rows, config.seq, dtype=torch.long)
    pipe = tfcompile.compile(
        model,
        schedule=config.schedule,
        stages=config.stages,
        microbatches=config.microbatches,
        example_inputs=(example,),
        loss_fn=lm_loss,
        example_target=example,
        freeze=config.freeze_config(),
        ranks=config.ranks if world == 1 else None,
        backend=config.backend,
        activation_checkpointing=config.activation_checkpointing,
        mixed_precision=config.mixed_precision,
        dp=config.dp if config.dp > 1 else None,
    )
    return pipe, model


def _share(batch: tuple[torch.Tensor, ...], pipe) -> tuple[torch.Tensor, ...]:
    """This replica's rows of a global batch (all of it without data parallelism)."""
    rows = batch[0].shape[0] // pipe.dp_size
    return tuple(t[pipe.dp_rank * rows : (pipe.dp_rank + 1) * rows] for t in batch)


def lr_schedule(config: RunConfig):
    """Linear warm-up over the first tenth, cosine decay to the end."""
    warm, steps = max(1, config.steps // 10), config.steps
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))


def run(config: RunConfig) -> dict:
    """Train one run as ``config`` says, on this process's ranks; return `summarise`'s dict.

    Under torchrun each process runs its own stages (WORLD_SIZE > 1); alone, ``ranks``
    pipeline ranks run in this process. Writes the step log (and plots, dumps) under
    ``config.out``; saves at ``stop`` and every ``save_every`` steps when ``save`` is set.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    first_rank = int(os.environ.get("RANK", "0")) == 0  # prints the controller's news
    logging.basicConfig(level=logging.INFO if first_rank else logging.WARNING, format="%(message)s")
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = corpus(config.data)
    pipe, model = build_pipeline(config, world)
    speaker = pipe.num_stages - 1 in pipe.local_stages and pipe.dp_rank == 0
    if speaker:
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"LLaMA-style LM: {n_params / 1e6:.2f}M parameters, {model.cfg.n_layers} blocks; "
            f"corpus {len(data.train) / 1e6:.1f} MB train ({data.train_files} files), "
            f"{len(data.val) / 1e6:.2f} MB val ({data.val_files} held-out files)"
        )
        print(
            f"schedule {pipe.schedule.name}: {pipe.num_stages} stages on "
            f"{pipe.schedule.num_ranks} ranks, {config.microbatches} microbatches of "
            f"{config.batch // config.microbatches}"
        )
    # the data generator is checkpointed with the model: a resumed run sees the same batches
    gen = torch.Generator().manual_seed(config.seed + 1)
    val_gen = torch.Generator().manual_seed(12345)
    # every replica draws the global batch and trains on its share (pipe.dp_rank), so the data
    # position is the same on every rank and a checkpoint resumes at any --dp
    val = [
        _share(data.batch("val", config.batch, config.seq, val_gen), pipe)
        for _ in range(config.val_batches)
    ]
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=config.lr, weight_decay=0.0)
    start = 0
    if config.resume:
        load_checkpoint(config.resume, pipe, optimizer, extra={"data": gen})
        start = pipe.step_index
        if speaker:
            print(f"resumed from {config.resume} at step {start}")
    tokens = config.batch * config.seq
    stop = config.steps if config.stop_at is None else min(config.steps, config.stop_at)

    def on_step_end(step: int) -> None:
        done = step + 1
        if config.save and (done == stop or (config.save_every and done % config.save_every == 0)):
            path = config.save.replace("{step}", str(done))
            save_checkpoint(path, pipe, optimizer, extra={"data": gen})

    rank_tag = f"{pipe.rank}" + (f"_dp{pipe.dp_rank}" if pipe.dp_size > 1 else "")
    log_name = f"steps_rank{rank_tag}" + (f"_from{start}" if start else "") + ".csv"
    # one TensorBoard folder per rank: each rank logs its own stages' ratios (and the last
    # stage's the loss); point TensorBoard at the parent to see them together
    tensorboard = None
    if config.tensorboard is not None:
        tensorboard = Path(config.tensorboard) / f"rank{rank_tag}"
    with StepLog(out / log_name, items_per_step=tokens, tensorboard_dir=tensorboard) as steplog:
        result = train(
            pipe,
            optimizer,
            lambda step: _share(data.batch("train", config.batch, config.seq, gen), pipe),
            stop,
            items_per_step=tokens,
            item_name="tok",
            val_batches=val,
            eval_every=config.eval_every,
            log_every=config.log_every,
            steplog=steplog,
            lr_lambda=lr_schedule(config),
            start_step=start,
            on_step_end=on_step_end,
        )
        steplog.flush()
        merged = merge_rank_logs(pipe.all_gather_object, steplog.path)
        if pipe.rank == 0 and not config.no_plots:
            plot_rows(merged, out, prefix=Path(log_name).stem.replace(f"_rank{pipe.rank}", ""))
    summary = summarise(pipe, result, config, start, stop, tokens)
    if not config.no_dumps:
        write_dumps(pipe, out, measured_step_ms=_ms(summary.get("median_pipe_step_s")))
    if speaker:
        print(
            f"done: steps {start}-{stop - 1}, median step {1e3 * summary['median_step_s']:.1f} "
            f"ms (last {summary['tail_steps']} steps), {summary['tokens_per_s']:.0f} tok/s, "
            f"val loss {summary['val_loss']:.4f}; out: {out}/"
        )
    pipe.close()
    return summary


def write_dumps(pipe, out: Path, measured_step_ms: float | None = None) -> None:
    """Measured and predicted timelines, the DAG, the plan (plan.json, pinnable with
    ``--plan``) and the Gantt picture of the plan in force as the runtime executes it.

    The Gantt draws the plan's ratios snapped to whole groups (what the steady state runs);
    its title gives the plan's predicted step time for them (``Freezer.prediction``; the LP
    makespan for a pinned or restored plan) and ``measured_step_ms``, the median measured
    pipeline step of the steady window.
    """
    from tfcompile.freeze.pinned import PLAN_FILE, write_plan_file
    from tfcompile.schedules.export import dag_to_dot, gantt, render_dot
    from tfcompile.schedules.simulate import simulate

    pipe.write_trace(out / "timeline_measured.json")
    freezer = pipe.freezer
    measured = pipe.measured_profile()  # a collective: every rank takes part
    plan = freezer.plan if freezer is not None else None
    profile = freezer.profiles.get("planned") if plan is not None else None
    profile = profile if profile is not None else measured
    ratios = dict(plan.ratios) if plan is not None else None  # the LP's: plan.json pins them
    prediction = freezer.prediction if plan is not None else None
    # drawn: the ratios as they run (snapped to whole groups), with their predicted step
    shown = dict(prediction.ratios) if prediction is not None else ratios
    if pipe.rank != 0 or pipe.dp_rank != 0:
        return
    planned = simulate(pipe.schedule, profile, shown)
    baseline = simulate(pipe.schedule, profile)
    unit = planned.unit
    predicted = planned.makespan
    if prediction is not None:
        predicted = prediction.achievable
    elif plan is not None:
        predicted = float(plan.makespan)
    if plan is not None:
        write_plan_file(
            out / PLAN_FILE, pipe.schedule, ratios, plan.makespan, plan.baseline_makespan,
            unit=unit, status=str(getattr(plan, "status", "")), source="run",
        )  # fmt: skip
    dot = dag_to_dot(planned, title=f"{pipe.schedule.name}: planned step")
    (out / "dag.dot").write_text(dot)
    render_dot(dot, out / "dag.svg")
    what = "planned" if plan is not None else "unfrozen"
    title = f"{pipe.schedule.name}: {what} step {predicted:.1f} {unit} predicted"
    if plan is not None:
        title += f" (unfrozen {float(plan.baseline_makespan):.1f} {unit})"
    if measured_step_ms is not None:
        title += f"; measured {measured_step_ms:.1f} ms (steady median)"
    gantt(planned, out / "timeline.svg", title=title, baseline=baseline, costs=profile)
    pipe.schedule.to_csv(out / "schedule.csv")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else 1e3 * seconds


def summarise(
    pipe, result: TrainResult, config: RunConfig, start: int, stop: int, tokens: int
) -> dict:
    """What a run reports (the same on every rank: per-stage values are gathered).

    ``steady_from``: the first step of the freezing steady state (a quarter from the end
    without a planned policy); medians and mean ratios are taken over steps from there.
    """
    freezer = pipe.freezer
    cfg = freezer.config if freezer is not None else None
    if cfg is not None and cfg.uses_plan:
        steady_from = cfg.planning_steps + cfg.ramp_steps
    else:
        steady_from = stop - max(1, (stop - start) // 4)
    steady_from = min(max(steady_from, start), stop - 1)
    offset = steady_from - start
    steady = result.step_seconds[offset:]
    tail = len(steady)
    local_ratios = {
        s: statistics.fmean(r.get(s, 0.0) for r in result.ratios[offset:]) if tail else 0.0
        for s in pipe.local_stages
    }
    local_all = {
        s: statistics.fmean(r.get(s, 0.0) for r in result.ratios) if result.ratios else 0.0
        for s in pipe.local_stages
    }
    gathered = pipe.all_gather_object((local_ratios, local_all, result.spans, result.ratios))
    steady_ratio = {s: v for part in gathered for s, v in part[0].items()}
    run_ratio = {s: v for part in gathered for s, v in part[1].items()}
    # pipeline step time: first action start to last action end over all ranks (no optimizer)
    pipe_seconds = [
        max(spans[i][1] for spans in (part[2] for part in gathered))
        - min(spans[i][0] for spans in (part[2] for part in gathered))
        for i in range(len(result.spans))
    ]
    plan = None
    if freezer is not None and freezer.plan is not None:
        p, predicted = freezer.plan, freezer.prediction
        lp_gain = float(p.baseline_makespan) / float(p.makespan) if float(p.makespan) > 0 else None
        plan = {
            "makespan_ms": float(p.makespan),
            "baseline_makespan_ms": float(p.baseline_makespan),
            # what the steady state should measure: the plan snapped to whole groups
            "achievable_makespan_ms": None if predicted is None else predicted.achievable,
            "predicted_gain": predicted.gain if predicted is not None else lp_gain,
            "lp_gain": lp_gain,
            "stage_ratio": freezer.plan_stage_ratios,
            "replans": freezer.replans,
        }
    median = statistics.median(steady) if steady else float("nan")
    return {
        "schedule": pipe.schedule.name,
        "stages": pipe.num_stages,
        "ranks": pipe.schedule.num_ranks,
        "policy": config.freezing.policy if config.freezing is not None else config.freeze,
        "grad": config.freezing.grad if config.freezing is not None else config.grad,
        "steps": stop,
        "start_step": start,
        "steady_from": steady_from,
        "tail_steps": tail,
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "tokens_per_step": tokens,
        "val_loss": result.val[-1][2] if result.val else None,
        "val_curve": [list(v) for v in result.val],  # (step, training seconds, loss)
        "train_seconds": sum(result.step_seconds),
        "wall_seconds": result.wall_seconds,
        "step_seconds": list(result.step_seconds),
        "pipe_step_seconds": pipe_seconds,
        "median_pipe_step_s": statistics.median(pipe_seconds[offset:]) if tail else None,
        "losses": list(result.losses),
        "phases": list(result.phases),
        "steady_ratio": [steady_ratio[s] for s in sorted(steady_ratio)],
        "mean_ratio": statistics.fmean(steady_ratio.values()) if steady_ratio else 0.0,
        "run_ratio": [run_ratio[s] for s in sorted(run_ratio)],
        "plan": plan,
        # actual freeze ratio per step, one value per stage (all ranks)
        "ratios_per_step": [
            [
                next((part[3][i][s] for part in gathered if s in part[3][i]), 0.0)
                for s in range(pipe.num_stages)
            ]
            for i in range(len(result.ratios))
        ],
    }
