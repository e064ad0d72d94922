"""Compiled stage regions: the backends a StageProgram runs its graphs through.

A :class:`~tfcompile.program.StageProgram` runs the forward graph, the ``backward_input``
variant it needs and the weight-gradient regions of the unfrozen groups through a backend
(``program.Backend``). ``"eager"`` calls the fx GraphModules op by op; ``"inductor"``
(:class:`InductorBackend`) compiles each of those graphs separately with inductor (C++/OpenMP on
CPU, Triton on CUDA), after retracing it under inductor's decomposition table. The regions stay
separate callables, so the split semantics do not change: a frozen group's region is never
called (so never compiled), a truncated ``backward_input`` variant is compiled only if a step
uses it, and ``region_calls`` and the per-action timers see the compiled callables.

Tracing for this backend uses torch.compile's partitioner (``InductorBackend.partition``,
``"min_cut"``): the forward saves fewer values and the compiled backward recomputes the cheap
elementwise ones, fused into kernels it runs anyway. A stage with recompute tags (activation
checkpointing, ``torch.utils.checkpoint`` regions) is partitioned by the default partitioner
instead, which carries out the tags as they are. The split into regions is the same pass
(a recomputed value lands in the one region that reads it, or in ``backward_input``).

Compilation is lazy (on a graph's first call, from the real arguments' shapes and strides),
cached in memory (one callable per graph and program) and on disk (inductor's FX graph cache
under :func:`cache_dir`, which torchrun workers and later runs share). Each compilation is timed
(``InductorBackend.compile_seconds``, ``StageProgram.compile_seconds``) and logged on the
``tfcompile.compile`` logger, one line per compiled graph with the stage's running total.

Numerics: fused kernels reorder floating-point reductions, so results equal the eager backend's
to rounding (fp32: about 1e-6 relative), not bit for bit. Random ops (dropout) draw from
inductor's generator, so a seed gives other masks than in eager mode (the backward stays
consistent with its own forward: the mask is a saved value).

CUDA graphs (``InductorBackend(cuda_graphs=True)``, CUDA only): each compiled graph is captured
once and replayed (shapes are static after tracing). Inputs are copied into the captured
buffers (parameters are captured in place), outputs are cloned out of them (saved values
outlive the next replay), so capture trades copies and one set of static buffers per graph
for launch overhead. A graph with a CPU tensor input, or none on the device, runs compiled but
uncaptured (:func:`capture_blocker`; ``InductorBackend.not_captured`` lists them).

Off by default, from ``benchmarks/gpu_check.py`` on one NVIDIA H200 (torch 2.11, fp32, TF32
off; medians of 20 round-robin forward+backward calls, two runs each): on the 4-block LLaMA
stage of dim 1024 with 4 x 512 tokens capture took 1.11x and 1.12x the time of plain inductor
(the copies outweigh the launches it saves); on a launch-bound stage (dim 256, 2 blocks,
2 x 128 tokens) 0.83x and 0.85x. In a single-process 1F1B pipeline (8 layers, 8 microbatches
of 4 x 512 tokens) a step took 173 ms with capture against 193 ms without (one run). Turn it on
for small stages, where kernel launches dominate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from tfcompile import _torch_compat as compat
from tfcompile.errors import RuntimeConfigError
from tfcompile.passes.split_weight_grad import Region
from tfcompile.program import PARTITIONS, Backend, EagerBackend, GraphFn

__all__ = ["BACKENDS", "InductorBackend", "cache_dir", "capture_blocker", "make_backend"]

BACKENDS = ("eager", "inductor")
log = logging.getLogger("tfcompile.compile")


def cache_dir() -> str:
    """The directory of inductor's on-disk cache tfcompile uses: ``TORCHINDUCTOR_CACHE_DIR``
    when set, else ``$XDG_CACHE_HOME/tfcompile/inductor`` (``~/.cache/tfcompile/inductor``).
    Setting it exports ``TORCHINDUCTOR_CACHE_DIR``, so torchrun workers started after it and
    compiles in this process share the cache."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "tfcompile", "inductor")
    return compat.inductor_cache_dir(path)


@dataclass
class InductorBackend:
    """Compiles each graph of a stage with inductor, lazily; see the module docstring.

    ``stage`` labels the log lines. ``cuda_graphs`` captures every compiled graph in a CUDA
    graph (CUDA only: refused with RuntimeConfigError for graphs on another device).
    ``partition`` is the AOTAutograd partitioner tracing uses for this backend: ``"min_cut"``
    by default, as torch.compile does for training. On the LLaMA stage of bench_backward (dim
    256, 2 blocks, batch 4 x 128, 1 CPU thread) it saves 52 forward values instead of 68 and
    one forward + backward takes 0.98x the time of the default partition (median of 30 paired
    rounds); ``"default"`` saves what eager autograd saves. Stages with recompute tags always
    use the default partitioner (see ``_torch_compat.aot_trace``). ``compile_seconds`` is the total
    compile time so far (seconds), ``compiled`` the seconds of each compiled graph by name
    (``forward``, ``input[k]``, a group's name). Unknown partitions raise RuntimeConfigError.
    ``not_captured`` names the graphs that ``cuda_graphs`` left uncaptured, and why
    (:func:`capture_blocker`).
    """

    stage: str = ""
    cuda_graphs: bool = False
    partition: str = "min_cut"
    compiled: dict[str, float] = field(default_factory=dict)
    not_captured: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise RuntimeConfigError(
                f"InductorBackend(partition={self.partition!r}): expected one of {PARTITIONS}"
            )

    @property
    def compile_seconds(self) -> float:
        return sum(self.compiled.values())

    def forward(self, gm: fx.GraphModule) -> GraphFn:
        return _LazyCompiled(self, "forward", gm)

    def region(self, region: Region) -> GraphFn:
        return _LazyCompiled(self, region.name, lambda *args: region.run(list(args)))

    def check_device(self, device: torch.device | str) -> None:
        """Refuse options the device cannot run (CUDA graphs off CUDA)."""
        if self.cuda_graphs and torch.device(device).type != "cuda":
            raise RuntimeConfigError(
                f"cuda_graphs=True captures compiled regions in CUDA graphs, but the stage runs "
                f"on {torch.device(device)}: use InductorBackend(cuda_graphs=False) there, or "
                "run the pipeline on a CUDA device"
            )

    def _compile(self, name: str, fn: Callable[..., Any], args: list) -> GraphFn:
        cache_dir()
        t0 = time.perf_counter()
        compiled = compat.inductor_compile(fn, args)
        if self.cuda_graphs:  # the device itself was checked when the stage was traced
            blocker = capture_blocker(args)
            if blocker is None:
                compiled = _CudaGraphed(compiled, args)
            else:
                self.not_captured[name] = blocker
                log.info("compile: stage %s: %s not captured in a CUDA graph: %s",
                         self.stage or "?", name, blocker)  # fmt: skip
        seconds = time.perf_counter() - t0
        self.compiled[name] = seconds
        log.info(
            "compile: stage %s: %s compiled by inductor in %.2f s (stage total %.2f s, %d graphs)",
            self.stage or "?", name, seconds, self.compile_seconds, len(self.compiled),
        )  # fmt: skip
        return compiled


class _LazyCompiled:
    """A graph's callable (boxed convention) that compiles itself on its first call."""

    def __init__(self, backend: InductorBackend, name: str, fn: Callable[..., Any]):
        self.backend, self.name, self.fn = backend, name, fn
        self.compiled: GraphFn | None = None

    def __call__(self, args: list):
        if self.compiled is None:
            self.compiled = self.backend._compile(self.name, self.fn, args)
        return self.compiled(args)


class _CudaGraphed:
    """One compiled graph captured in a CUDA graph and replayed on every call.

    Parameters are captured in place (the same tensors every call); every other input is
    copied into a static buffer before a replay, and the outputs are cloned after it (the
    caller keeps saved values across microbatches, and the next replay overwrites the static
    outputs)."""

    def __init__(self, fn: GraphFn, args: list):
        self.static = [
            a if isinstance(a, nn.Parameter) or not isinstance(a, torch.Tensor) else a.clone()
            for a in args
        ]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (allocations, autotuning)
            fn(list(self.static))
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = list(fn(list(self.static)))

    def __call__(self, args: list):
        for dst, src in zip(self.static, args):
            if isinstance(dst, torch.Tensor) and dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        args.clear()
        self.graph.replay()
        return [o.clone() if isinstance(o, torch.Tensor) else o for o in self.outputs]


def capture_blocker(args: list) -> str | None:
    """Why a compiled graph with these arguments must not be captured in a CUDA graph, or
    None. A CPU tensor input (a 0-dim scalar, say) reaches the kernels as a launch argument
    read on the host, so a capture would bake in its value at capture time and every replay
    would reuse it; such graphs run compiled but uncaptured, as torch.compile's CUDA graph
    trees skip graphs with CPU inputs. A graph with no tensor input at all (the
    ``backward_input`` variant of a first stage whose inputs take no gradient, seen on the
    H200) has nothing to replay on the device."""
    for k, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.device.type == "cpu":
            return f"input {k} is a CPU tensor (shape {tuple(a.shape)}, {a.dtype})"
    if not any(isinstance(a, torch.Tensor) for a in args):
        return "no tensor input on the device"
    return None


def make_backend(
    spec: str | Backend | None, *, device: torch.device | str | None = None, stage: str = ""
) -> Backend:
    """The backend for one stage's program from `spec`: ``"eager"`` (or None), ``"inductor"``,
    or an :class:`InductorBackend` whose options are copied (each program gets its own, so
    compile times are per stage). Refuses unknown names (RuntimeConfigError) and options the
    `device` cannot run (CUDA graphs on CPU)."""
    if spec is None or spec == "eager":
        return EagerBackend()
    if spec == "inductor":
        backend = InductorBackend(stage=stage)
    elif isinstance(spec, InductorBackend):
        backend = dataclasses.replace(spec, stage=spec.stage or stage, compiled={}, not_captured={})
    elif isinstance(spec, str):
        raise RuntimeConfigError(f"backend={spec!r}: expected one of {BACKENDS}")
    else:  # a user's own Backend (forward/region): used as given
        return spec
    if device is not None:
        backend.check_device(device)
    return backend
