"""Min-cost flow by a small native network simplex (``_netsimplex.c``, loaded with ctypes).

The freeze planner's subproblem (see :mod:`tfcompile.schedule.decompose`) is the dual of a
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
        ctypes.c_int, ctypes.c_int, iptr, iptr, dptr, dptr, ctypes.c_double, ctypes.c_longlong,
        ctypes.c_int, iptr, bptr, dptr, dptr, ctypes.POINTER(ctypes.c_longlong),
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
    ``solve(cap, warm=True)`` first tries the previous optimal basis: with only capacities
    changed its potentials stay dual feasible, so if its tree flows are within the new bounds
    it is optimal as it stands (no pivot); otherwise the solve starts cold. (Repairing an
    infeasible basis by dual pivots was measured 2-5x slower than a cold start here.)

    Requirements (checked): ``src < dst`` for every arc (nodes numbered topologically) and
    every node reachable from node 0 over uncapacitated arcs (capacity ``>= 1e17``): the
    start is their shortest-path tree with the unit on its path. Since no arc carries more
    than the unit, pass capacities ``>= 1`` as uncapacitated (faster start).
    """

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        cost: np.ndarray,
        num_nodes: int,
    ) -> None:
        if _load() is None:
            raise PlanError(f"native network simplex unavailable: {_load_error}")
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        if len(src) and not np.all(src < dst):
            raise PlanError("network simplex: arcs must go from a lower to a higher node number")
        self.num_nodes = int(num_nodes)
        self.order = np.argsort(dst, kind="stable")
        self.src = np.ascontiguousarray(src[self.order], dtype=np.int32)
        self.dst = np.ascontiguousarray(dst[self.order], dtype=np.int32)
        self.cost = np.ascontiguousarray(np.asarray(cost, dtype=np.float64)[self.order])
        self.pivots = 0
        self.basis_pred = np.full(self.num_nodes, -1, dtype=np.int32)
        self.basis_state = np.zeros(len(self.order), dtype=np.int8)
        self.has_basis = False

    def solve(
        self,
        cap: np.ndarray,
        *,
        tol: float = 1e-11,
        max_pivots: int | None = None,
        warm: bool = False,
    ) -> FlowResult:
        """Min-cost unit flow for capacities ``cap`` (in the constructor's arc order).
        ``tol`` is the absolute reduced-cost tolerance."""
        lib = _load()
        assert lib is not None
        m = len(self.order)
        cap_o = np.ascontiguousarray(np.asarray(cap, dtype=np.float64)[self.order])
        flow = np.zeros(m)
        pot = np.zeros(self.num_nodes)
        pivots = ctypes.c_longlong(0)
        limit = max_pivots if max_pivots is not None else 200 * (m + self.num_nodes) + 1000
        status = lib.ns_solve(
            self.num_nodes, m, self.src, self.dst, cap_o, self.cost, float(tol), int(limit),
            int(warm and self.has_basis), self.basis_pred, self.basis_state, flow, pot,
            ctypes.byref(pivots),
        )  # fmt: skip
        if status == -2:
            raise PlanError(
                "network simplex: a node is unreachable from the source over uncapacitated arcs"
            )
        if status == -4:
            raise MemoryError("network simplex: out of memory")
        if status != 0:
            raise PlanError(f"network simplex stopped at the pivot limit ({limit})")
        self.has_basis = True
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
