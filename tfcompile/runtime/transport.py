"""Moving activations and gradients between stages.

A message is identified by (kind, src_stage, microbatch): kind "act" goes from stage s to s+1,
kind "grad" from stage s to s-1. Messages between stages on one rank never touch the network.

`LocalTransport` is a mailbox (single process). `DistTransport` uses torch.distributed
isend/irecv into receive buffers preallocated from traced shapes and reused across steps;
receives are posted ahead of the action that consumes them. Every wait has a deadline, and a
failure on one rank reaches the others through the rendezvous store (see FailureSignal), so no
rank hangs.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from tfcompile.errors import PipelineFailure
from tfcompile.runtime.recv_buffers import buffer_slots
from tfcompile.schedules.actions import Action, MessageKey  # (kind, src_stage, microbatch)
from tfcompile.tensor_spec import TensorSpec


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

    def plan(self, order: Sequence[Action], lookahead: int, num_stages: int) -> None:
        pass  # no receive buffers: tensors are handed over

    def buffer_bytes(self) -> int:
        return 0

    def prefetch(self, upcoming: Sequence[MessageKey]) -> None:
        pass

    def finish_step(self) -> None:
        pass


class FailureSignal:
    """Cross-rank failure reporting through a key in the rendezvous store.

    A rank that fails writes its error under the key before it exits. Its peers learn of it in
    two ways: a blocked receive from the dead process fails (gloo and NCCL see the closed
    connection), and the peer then reads the key to raise the original error; or a watchdog
    thread sees the key while this rank is blocked behind a live but stuck rank, and ends the
    process with the original error (a blocked torch.distributed wait cannot be interrupted).
    """

    GRACE_S = 2.0  # how long a blocked rank may keep waiting after a peer reported a failure
    POLL_S = 0.2
    EXIT_CODE = 17

    def __init__(self, store: dist.Store | None, prefix: str, watch_store=None) -> None:
        self.store = store
        self.watch_store = watch_store
        self.key = f"{prefix}/failure"
        self.blocked_since: float | None = None
        self.blocked_on = ""
        self.rank = -1
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()

    def report(self, rank: int, message: str) -> None:
        if self.store is None:
            return
        try:
            if not self.store.check([self.key]):  # keep the first (root-cause) failure
                self.store.set(self.key, f"rank {rank} failed: {message}")
        except Exception:  # the store may be gone when the job is already tearing down
            pass

    def message(self, wait_s: float = 0.0) -> str | None:
        """The reported failure, waiting up to `wait_s` for one to appear."""
        if self.store is None:
            return None
        try:
            if wait_s > 0:
                self.store.wait([self.key], datetime.timedelta(seconds=wait_s))
            if self.store.check([self.key]):
                return self.store.get(self.key).decode(errors="replace")
        except Exception:
            return None
        return None

    JOIN_S = 5.0  # how long stop() waits for the watchdog's store call in flight

    def start_watchdog(self, rank: int) -> None:
        if self.watch_store is None or self._watchdog is not None:
            return
        self.rank = rank
        self._watchdog = threading.Thread(
            target=self._watch, name="tfcompile-watchdog", daemon=True
        )
        self._watchdog.start()
        _WATCHING.add(self)

    def stop(self) -> None:
        """Stop the watchdog and wait for it (not from the watchdog thread itself)."""
        self._stop.set()
        thread = self._watchdog
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.JOIN_S)
        _WATCHING.discard(self)

    def _watch(self) -> None:
        while not self._stop.wait(self.POLL_S):
            try:
                failed = self.watch_store.check([self.key])
            except Exception:
                return
            if not failed:
                continue
            since = self.blocked_since
            if since is not None and time.monotonic() - since > self.GRACE_S:
                message = self.watch_store.get(self.key).decode(errors="replace")
                print(
                    f"[tfcompile] rank {self.rank} aborts while waiting for {self.blocked_on}: "
                    f"{message}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(self.EXIT_CODE)


_WATCHING: weakref.WeakSet[FailureSignal] = weakref.WeakSet()


@atexit.register
def _stop_watchdogs() -> None:
    """Stop every running watchdog before the interpreter finalizes, also for pipelines
    nobody closed. A daemon thread that returns from a store call (C++, GIL released) while
    the interpreter finalizes is ended with pthread_exit, whose unwinding through pybind11's
    noexcept frames calls std::terminate: "terminate called without an active exception" and
    SIGABRT in a process that had finished its work."""
    for signal in list(_WATCHING):
        signal.stop()


class DistTransport:
    """Point-to-point transport over torch.distributed for one rank."""

    WAITED_S = 1e-4  # a wait longer than this means the message had not arrived yet

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
        # receive buffers: (kind, src_stage, slot) -> tensors, slots from the schedule's
        # action list (see recv_buffers.py); `buffers` maps each posted message to its slot's
        self.pool: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.slots: dict[MessageKey, int] = {}
        self._planned: tuple | None = None
        self._pool_storages: set[int] = set()
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

    def plan(self, order: Sequence[Action], lookahead: int, num_stages: int) -> None:
        """Assign receive buffers for this action list (cached per list): each boundary gets
        as many as its messages are in flight at once (``recv_buffers.buffer_slots``)."""
        planned = (tuple(order), lookahead)
        if planned != self._planned:
            self.slots = buffer_slots(order, num_stages, lookahead, self._is_remote)
            self._planned = planned

    def buffer_bytes(self) -> int:
        """Bytes of the receive buffers allocated so far."""
        return sum(t.numel() * t.element_size() for ts in self.pool.values() for t in ts)

    def prefetch(self, upcoming: Sequence[MessageKey]) -> None:
        """Post receives for messages this rank will consume soon."""
        for key in upcoming:
            if key in self.posted or not self._is_remote(key):
                continue
            # a message outside the planned list (none today) gets a buffer of its own
            slot = self.slots.get(key, ("unplanned", key[2]))
            buffers = self.pool.get((key[0], key[1], slot))
            if buffers is None:
                specs = self.specs[(key[0], key[1])]
                buffers = tuple(
                    torch.empty(s.shape, dtype=s.dtype, device=self.device) for s in specs
                )
                self.pool[(key[0], key[1], slot)] = buffers
                self._pool_storages.update(t.untyped_storage().data_ptr() for t in buffers)
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
            if tensor.untyped_storage().data_ptr() in self._pool_storages:
                # a gradient that is a received tensor passed through: the buffer is received
                # into again before this send is waited for (finish_step)
                tensor = tensor.clone()
            tensor = tensor.contiguous()
            try:
                work = dist.isend(tensor, dst=dst_rank, tag=self._tag(key, i))
            except Exception as exc:
                self._send_failed(key, exc)
            self.sends.append((work, tensor, key))

    def _send_failed(self, key: MessageKey, exc: Exception) -> None:
        """A send that fails outright (gloo: the peer closed the connection) is a symptom: a
        peer failed or gave up on this rank (e.g. this rank was stuck past the timeout). Raise
        the published root cause, waiting briefly for it; else report this rank's view."""
        message = self.failure.message(wait_s=self.failure.GRACE_S)
        if message is not None:
            raise PipelineFailure(f"pipeline step aborted because {message}") from exc
        failure = PipelineFailure(
            f"rank {self.rank} could not send {key[0]} of stage {key[1]} microbatch {key[2]} "
            f"({type(exc).__name__}: {exc}). A peer rank is stuck or dead."
        )
        self.failure.report(self.rank, str(failure))
        raise failure from exc

    def take(self, key: MessageKey) -> tuple:
        """The tensors of message `key`. A remote message arrives in a receive buffer that a
        later message of its boundary receives into again once the consuming stage has finished
        this microbatch (recv_buffers.py): consumers use it until then and never keep it
        (StageProgram never adopts a tangent as a parameter's .grad)."""
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
        return self.buffers.pop(key)

    def _wait(self, work, what: str) -> bool:
        """Block until `work` is done; True if it was not done yet (the rank had to wait)."""
        started = time.perf_counter()
        self.failure.blocked_on = what
        self.failure.blocked_since = time.monotonic()
        try:
            work.wait(datetime.timedelta(seconds=self.timeout))
        except Exception as exc:
            # a timeout is itself the news (a peer is stuck): publish it at once, unless a
            # failure is already known; a closed connection is a symptom of a peer's failure,
            # whose published root cause may take a moment to arrive
            timed_out = time.perf_counter() - started >= 0.9 * self.timeout
            message = self.failure.message(wait_s=0.0 if timed_out else self.failure.GRACE_S)
            if message is not None:
                raise PipelineFailure(f"pipeline step aborted because {message}") from exc
            failure = PipelineFailure(
                f"rank {self.rank} gave up waiting for {what} ({type(exc).__name__}: {exc}). A "
                "peer rank is stuck or dead; if steps are legitimately this slow, raise "
                "compile(..., timeout=...)."
            )
            self.failure.report(self.rank, str(failure))
            raise failure from exc
        finally:
            self.failure.blocked_since = None
        return time.perf_counter() - started > self.WAITED_S

    def finish_step(self) -> None:
        for work, _, key in self.sends:
            self._wait(work, f"the send of {key[0]} of stage {key[1]} microbatch {key[2]}")
        self.sends.clear()
