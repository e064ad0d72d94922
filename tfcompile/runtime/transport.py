"""Moving activations and gradients between stages.

A message is identified by (kind, src_stage, microbatch): kind "act" goes from stage s to s+1,
kind "grad" from stage s to s-1. Messages between stages on one rank never touch the network.

`LocalTransport` is a mailbox (single process). `DistTransport` uses torch.distributed
isend/irecv into receive buffers preallocated from traced shapes and reused across steps;
receives are posted ahead of the action that consumes them. Every wait polls for completion so
that it can give up on a deadline or when another rank has reported a failure through the
rendezvous store, instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tfcompile.errors import PipelineFailure

MessageKey = tuple[str, int, int]  # (kind, src_stage, microbatch)


def dest_stage(key: MessageKey) -> int:
    kind, src, _ = key
    return src + 1 if kind == "act" else src - 1


class LocalTransport:
    """All stages in one process: messages are handed over in a dict."""

    def __init__(self) -> None:
        self.box: dict[MessageKey, tuple] = {}

    def ready(self, key: MessageKey) -> bool:
        return key in self.box

    def put(self, key: MessageKey, tensors: tuple) -> None:
        self.box[key] = tensors

    def take(self, key: MessageKey) -> tuple:
        return self.box.pop(key)

    def begin_step(self, step: int) -> None:
        self.box.clear()

    def prefetch(self, upcoming: Sequence[MessageKey]) -> None:
        pass

    def finish_step(self) -> None:
        pass


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device | str = "cpu"


class FailureSignal:
    """Cross-rank failure reporting through a key in the rendezvous store."""

    def __init__(self, store: dist.Store | None, prefix: str) -> None:
        self.store = store
        self.key = f"{prefix}/failure"

    def report(self, rank: int, message: str) -> None:
        if self.store is not None:
            try:
                self.store.set(self.key, f"rank {rank}: {message}")
            except Exception:  # the store may be gone when the job is already tearing down
                pass

    def check(self) -> None:
        if self.store is None:
            return
        try:
            failed = self.store.check([self.key])
        except Exception:
            return
        if failed:
            message = self.store.get(self.key).decode(errors="replace")
            raise PipelineFailure(f"pipeline step aborted because {message}")


class DistTransport:
    """Point-to-point transport over torch.distributed for one rank."""

    def __init__(
        self,
        rank: int,
        stage_to_rank: Sequence[int],
        specs: dict[tuple[str, int], tuple[TensorSpec, ...]],
        device: torch.device,
        failure: FailureSignal,
        timeout: float,
        num_microbatches: int,
        on_arrival: Callable[[MessageKey], None] | None = None,
    ) -> None:
        self.rank = rank
        self.stage_to_rank = list(stage_to_rank)
        self.specs = specs  # (kind, src_stage) -> tensor specs of that message
        self.device = device
        self.failure = failure
        self.timeout = timeout
        self.num_microbatches = num_microbatches
        self.max_tensors = max((len(v) for v in specs.values()), default=1)
        self.on_arrival = on_arrival
        self.local: dict[MessageKey, tuple] = {}
        self.buffers: dict[MessageKey, tuple[torch.Tensor, ...]] = {}
        self.posted: dict[MessageKey, list] = {}
        self.sends: list[tuple] = []

    def _tag(self, key: MessageKey, index: int) -> int:
        kind, src, mb = key
        direction = 0 if kind == "act" else 1
        num_stages = len(self.stage_to_rank)
        return (
            (direction * num_stages + src) * self.num_microbatches + mb
        ) * self.max_tensors + index

    def _is_remote(self, key: MessageKey) -> bool:
        return self.stage_to_rank[key[1]] != self.stage_to_rank[dest_stage(key)]

    def begin_step(self, step: int) -> None:
        self.local.clear()

    def prefetch(self, upcoming: Sequence[MessageKey]) -> None:
        """Post receives for messages this rank will consume soon."""
        for key in upcoming:
            if key in self.posted or not self._is_remote(key):
                continue
            buffers = self.buffers.get(key)
            if buffers is None:
                specs = self.specs[(key[0], key[1])]
                buffers = tuple(
                    torch.empty(s.shape, dtype=s.dtype, device=self.device) for s in specs
                )
                self.buffers[key] = buffers
            src_rank = self.stage_to_rank[key[1]]
            self.posted[key] = [
                dist.irecv(buf, src=src_rank, tag=self._tag(key, i))
                for i, buf in enumerate(buffers)
            ]

    def ready(self, key: MessageKey) -> bool:
        return True  # a rank runs its program in order; take() waits

    def put(self, key: MessageKey, tensors: tuple) -> None:
        if not self._is_remote(key):
            self.local[key] = tensors
            return
        dst_rank = self.stage_to_rank[dest_stage(key)]
        for i, tensor in enumerate(tensors):
            tensor = tensor.contiguous()
            work = dist.isend(tensor, dst=dst_rank, tag=self._tag(key, i))
            self.sends.append((work, tensor, key))

    def take(self, key: MessageKey) -> tuple:
        if not self._is_remote(key):
            return self.local.pop(key)
        if key not in self.posted:
            self.prefetch([key])
        works = self.posted.pop(key)
        waited = False
        for work in works:
            waited |= self._wait(work, f"{key[0]} of stage {key[1]} microbatch {key[2]}")
        if waited and self.on_arrival is not None:
            self.on_arrival(key)
        return self.buffers[key]

    def _wait(self, work, what: str) -> bool:
        """Wait for `work`, checking the deadline and other ranks' failures. True if it waited."""
        if work.is_completed():
            work.wait()
            return False
        deadline = time.monotonic() + self.timeout
        next_check = time.monotonic() + 0.05
        pause = 0.0
        while not work.is_completed():
            now = time.monotonic()
            if now >= next_check:
                self.failure.check()
                next_check = now + 0.05
                if now >= deadline:
                    raise PipelineFailure(
                        f"rank {self.rank} waited {self.timeout:.0f} s for {what}; a peer rank is "
                        "stuck or dead. Raise the timeout (compile(..., timeout=...)) if steps "
                        "are legitimately this slow."
                    )
            time.sleep(pause)
            pause = min(2 * pause + 2e-5, 5e-4)
        work.wait()
        return True

    def finish_step(self) -> None:
        for work, _, key in self.sends:
            self._wait(work, f"the send of {key[0]} of stage {key[1]} microbatch {key[2]}")
        self.sends.clear()
