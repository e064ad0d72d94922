"""Min-cost flow by a small native network simplex (``_netsimplex.c``, loaded with ctypes).

The freeze planner's subproblem (see :mod:`tfcompile.planner.decompose`) is the dual of a
min-cost flow: one unit from the step's start to its end through the schedule DAG. A
general LP solver needs tens of thousands of dense pivots for it; a network simplex pivots on
a spanning tree in time proportional to a tree path.

The C file ships with the package and is compiled with the system C compiler on first use
into a per-user cache (``$XDG_CACHE_HOME/tfcompile`` or ``~/.cache/tfcompile``), keyed by
the source's hash. Without a compiler, :func:`available` is False and the planner uses the
HiGHS LP instead (exact, slower at scale). ``TFCOMPILE_NATIVE=0`` disables the native path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfcompile.errors import PlanError

INF_CAP = 1e18  # any capacity >= 1e17 is uncapacitated for the C code
POOL_SIZE = 8  # optimal bases kept for warm starts (about 1 MB each at ZBV 32x256)
REPAIR_FACTOR = 1.0  # a repaired start must be this much nearer optimal than the cold one
WARM_BUDGET = 1.0  # ... and may cost at most this times the costliest cold solve's work
_SOURCE = Path(__file__).with_name("_netsimplex.c")
_lib: ctypes.CDLL | None = None
_load_error: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "tfcompile"


def _compile(target: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(_SOURCE), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {res.stderr.strip()[:500]}")
        os.replace(out, target)  # atomic: concurrent ranks may compile at once


def _load() -> ctypes.CDLL | None:
    global _lib, _load_error
    if _lib is not None or _load_error is not None:
        return _lib
    if os.environ.get("TFCOMPILE_NATIVE", "1") == "0":
        _load_error = "disabled by TFCOMPILE_NATIVE=0"
        return None
    try:
        digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:16]
        name = f"netsimplex-{digest}.so"
        target = _cache_dir() / name
        if not target.exists():
            try:
                _compile(target)
            except PermissionError:  # read-only home: a per-user temporary directory
                target = Path(tempfile.gettempdir()) / f"tfcompile-{os.getuid()}" / name
                if not target.exists():
                    _compile(target)
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        _load_error = str(exc)
        return None
    f = lib.ns_solve
    dptr = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    iptr = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    bptr = np.ctypeslib.ndpointer(np.int8, flags="C_CONTIGUOUS")
    f.argtypes = [
        ctypes.c_int, ctypes.c_int, iptr, iptr, dptr, dptr, iptr, ctypes.c_double,
        ctypes.c_longlong, ctypes.c_int, iptr, iptr, bptr, dptr, iptr, bptr, dptr, dptr,
        ctypes.POINTER(ctypes.c_longlong), iptr, ctypes.c_double, ctypes.c_double,
        ctypes.POINTER(ctypes.c_double),
    ]  # fmt: skip
    f.restype = ctypes.c_int
    lptr = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
    g = lib.longest_path
    g.argtypes = [ctypes.c_int, lptr, lptr, lptr, dptr, ctypes.c_double, ctypes.c_void_p, dptr]
    g.restype = ctypes.c_double
    h = lib.topo_order
    h.argtypes = [ctypes.c_longlong, lptr, lptr, lptr]
    h.restype = ctypes.c_longlong
    _lib = lib
    return lib


def available() -> bool:
    """Whether the native solver could be compiled and loaded."""
    return _load() is not None


def unavailable_reason() -> str | None:
    _load()
    return _load_error


@dataclass
class FlowResult:
    flow: np.ndarray
    potential: np.ndarray  # reduced cost of arc j: cost + potential[src] - potential[dst]
    pivots: int


class UnitFlowNetwork:
    """A fixed network (arcs and costs) on which one unit is sent from node 0 to node
    ``num_nodes - 1`` for varying capacities (the arc order and sort are prepared once).

    ``solve(cap, warm=True)`` starts from the optimal bases of the last :data:`POOL_SIZE`
    solves (only capacities changed, so their potentials stay dual feasible):

    - a basis whose tree flows fit the new capacities is optimal as it stands (no pivot);
    - otherwise each is repaired to a feasible basis, and the start nearest to optimal (least
      reduced-cost violation, the cold start included) is taken. ``twin[j] = k`` declares the
      uncapacitated arc ``k`` parallel to capacitated arc ``j`` (same two nodes): the repair
      moves flow beyond a lowered capacity onto it.
    - A repaired start that costs more work than the costliest cold solve so far is dropped
      for the cold start, and this network stops repairing (on 1F1B, repaired trees make the
      pivots re-hang large subtrees: 0.23 s instead of 0.02 s for one round; on ZBV they
      save half the time of the later rounds).

    (Repairing by dual pivots instead was measured 2-5x slower than a cold start here.)
    ``starts`` counts the starts taken: cold, reused, repaired, abandoned (repair dropped).

    Requirements (checked): ``src < dst`` for every arc (nodes numbered topologically) and
    every node reachable from node 0 over uncapacitated arcs (capacity ``>= 1e17``): the
    cold start is their shortest-path tree with the unit on its path. Since no arc carries
    more than the unit, pass capacities ``>= 1`` as uncapacitated (faster start).
    """

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        cost: np.ndarray,
        num_nodes: int,
        twin: np.ndarray | None = None,
    ) -> None:
        if _load() is None:
            raise PlanError(f"native network simplex unavailable: {_load_error}")
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if len(src) and not np.all(src < dst):
            raise PlanError("network simplex: arcs must go from a lower to a higher node number")
        self.num_nodes = n = int(num_nodes)
        self.order = np.argsort(dst, kind="stable")
        self.src = np.ascontiguousarray(src[self.order], dtype=np.int32)
        self.dst = np.ascontiguousarray(dst[self.order], dtype=np.int32)
        self.cost = np.ascontiguousarray(np.asarray(cost, dtype=np.float64)[self.order])
        m = len(self.order)
        self.twin = np.full(m, -1, dtype=np.int32)  # sorted order; -2 marks a twin
        if twin is not None:
            twin = np.asarray(twin, dtype=np.int64)
            if twin.shape != (m,):
                raise PlanError(f"network simplex: twin needs one entry per arc ({m})")
            has = np.flatnonzero(twin >= 0)
            partner = twin[has]
            if np.any((src[has] != src[partner]) | (dst[has] != dst[partner])):
                raise PlanError("network simplex: a twin arc must join the same two nodes")
            if len(np.unique(partner)) != len(partner) or np.any(twin[partner] >= 0):
                raise PlanError("network simplex: twins must pair arcs one to one")
            pos = np.empty(m, dtype=np.int64)
            pos[self.order] = np.arange(m)  # constructor index -> sorted position
            self.twin[pos[has]] = pos[partner]
            self.twin[pos[partner]] = -2
        self.pivots = 0
        self.starts = {"cold": 0, "reused": 0, "repaired": 0, "abandoned": 0}
        self.cold_work = 0.0  # the costliest cold solve's work so far
        self.repairs_pay = True
        # optimal bases of the last solves in slots; pool_order: their slots, newest first
        self.pool_order: list[int] = []
        self.pool_pred = np.zeros((POOL_SIZE, n), dtype=np.int32)
        self.pool_state = np.zeros((POOL_SIZE, m), dtype=np.int8)
        self.pool_flow = np.zeros((POOL_SIZE, m))

    def solve(
        self,
        cap: np.ndarray,
        *,
        tol: float = 1e-11,
        max_pivots: int | None = None,
        warm: bool = False,
    ) -> FlowResult:
        """Min-cost unit flow for capacities ``cap`` (in the constructor's arc order).
        ``tol`` is the absolute reduced-cost tolerance; ``warm`` starts from the pool."""
        lib = _load()
        assert lib is not None
        n, m = self.num_nodes, len(self.order)
        cap_o = np.ascontiguousarray(np.asarray(cap, dtype=np.float64)[self.order])
        flow = np.zeros(m)
        pot = np.zeros(n)
        pred = np.zeros(n, dtype=np.int32)
        state = np.zeros(m, dtype=np.int8)
        pivots = ctypes.c_longlong(0)
        start = np.zeros(2, dtype=np.int32)
        work = ctypes.c_double(0.0)
        # typical solves take 0.5-3 pivots per node and arc; the limit guards against
        # cycling (see _netsimplex.c), after which the planner falls back to the LP
        limit = max_pivots if max_pivots is not None else 20 * (m + n) + 100_000
        budget = WARM_BUDGET * self.cold_work if self.repairs_pay else -1.0
        status = lib.ns_solve(
            n, m, self.src, self.dst, cap_o, self.cost, self.twin, float(tol), int(limit),
            len(self.pool_order) if warm else 0, np.array(self.pool_order + [0], np.int32),
            self.pool_pred, self.pool_state, self.pool_flow,
            pred, state, flow, pot, ctypes.byref(pivots), start, REPAIR_FACTOR, budget,
            ctypes.byref(work),
        )  # fmt: skip
        if status == -2:
            raise PlanError(
                "network simplex: a node is unreachable from the source over uncapacitated arcs"
            )
        if status == -4:
            raise MemoryError("network simplex: out of memory")
        if status != 0:
            raise PlanError(f"network simplex stopped at the pivot limit ({limit})")
        kind = ("cold", "reused", "repaired", "abandoned")[int(start[0])]
        self.starts[kind] += 1
        self.last_start = (kind, int(start[1]))  # and the pool index (newest first)
        if kind in ("cold", "abandoned"):
            self.cold_work = max(self.cold_work, work.value)
        if kind == "abandoned":
            self.repairs_pay = False
        capacity = len(self.pool_pred)
        if capacity:  # into a free slot, else over the oldest basis
            full = len(self.pool_order) == capacity
            slot = self.pool_order.pop() if full else len(self.pool_order)
            self.pool_pred[slot], self.pool_state[slot], self.pool_flow[slot] = pred, state, flow
            self.pool_order.insert(0, slot)
        self.pivots += int(pivots.value)
        out = np.empty(m)
        out[self.order] = flow
        return FlowResult(out, pot, int(pivots.value))


def unit_min_cost_flow(
    src: np.ndarray,
    dst: np.ndarray,
    cap: np.ndarray,
    cost: np.ndarray,
    num_nodes: int,
    *,
    tol: float = 1e-11,
) -> FlowResult:
    """One-off :class:`UnitFlowNetwork` solve."""
    return UnitFlowNetwork(src, dst, cost, num_nodes).solve(cap, tol=tol)


class Makespan:
    """ASAP makespan of one schedule DAG for many duration vectors (native; the planner's
    columns need one per candidate plan)."""

    def __init__(self, dag) -> None:  # a ScheduleDAG
        if _load() is None:
            raise PlanError(f"native network simplex unavailable: {_load_error}")
        self.n = dag.num_nodes
        self.topo = np.ascontiguousarray(dag.topo, dtype=np.int64)
        self.prog_pred = np.ascontiguousarray(dag.prog_pred, dtype=np.int64)
        self.data_pred = np.ascontiguousarray(dag.data_pred, dtype=np.int64)
        self.end = np.zeros(self.n)

    def __call__(self, dur: np.ndarray, comm: float) -> float:
        """The makespan."""
        assert _lib is not None
        d = np.ascontiguousarray(dur, dtype=np.float64)
        return float(_lib.longest_path(self.n, self.topo, self.prog_pred, self.data_pred, d,
                                       float(comm), None, self.end))  # fmt: skip


def topological_order(prog_pred: np.ndarray, data_pred: np.ndarray) -> np.ndarray | None:
    """Native twin of ``ScheduleDAG``'s Kahn order (same order; a schedule DAG of 49k
    actions takes 2 ms instead of 65 ms). None when the native library is unavailable."""
    lib = _load()
    if lib is None:
        return None
    pp = np.ascontiguousarray(prog_pred, dtype=np.int64)
    dp = np.ascontiguousarray(data_pred, dtype=np.int64)
    out = np.empty(len(pp), dtype=np.int64)
    k = int(lib.topo_order(len(pp), pp, dp, out))
    if k < 0:
        raise MemoryError("topological order: out of memory")
    return out[:k]
