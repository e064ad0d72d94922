"""Bad inputs and faults a demanding user tries (one process, tiny models): how each ends.

Every case says what should happen: ``error`` (refused) or ``work`` (runs, and its result is
checked). The outcome is one of

- clear: a tfcompile error (TFCompileError) whose message names what was expected
  (contains the case's ``match`` text);
- worked: a ``work`` case ran and its check passed;
- raw/misleading: a non-tfcompile exception (raw torch/Python), a tfcompile error that does
  not say what was expected, or an error for a case that should work;
- silently wrong: an ``error`` case that ran without complaint, or a ``work`` case whose check
  failed;
- hang: no answer within 60 s.

Prints a table and the counts and writes JSON to benchmarks/results/bad_inputs.json. Run it
against another checkout for a before/after comparison:
``PYTHONPATH=/path/to/checkout python benchmarks/bad_inputs.py --out before.json``.
Multi-rank faults are in tests/hardening/test_h8_fault_soak.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import tfcompile
from tfcompile import FreezeConfig
from tfcompile.errors import TFCompileError

CASES: list[tuple[str, str, str, Callable]] = []  # (name, expect, match, fn)


def case(name: str, expect: str = "error", match: str = ""):
    def register(fn):
        CASES.append((name, expect, match, fn))
        return fn

    return register


def mlp(**overrides):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4))
    args = dict(
        schedule="1F1B", stages=2, microbatches=2, example_inputs=(torch.zeros(2, 8),),
        loss_fn=nn.functional.mse_loss, example_target=torch.zeros(2, 4),
    )  # fmt: skip
    args.update(overrides)
    return tfcompile.compile(model, **args)


_PIPE: dict = {}


def shared():
    if "pipe" not in _PIPE:
        _PIPE["pipe"] = mlp()
    return _PIPE["pipe"]


X, Y = torch.randn(4, 8), torch.randn(4, 4)

# ---------------------------------------------------------------- compile() arguments
for _name, _kw, _match in [
    ("freeze as a dict", dict(freeze={"policy": "timely"}), "FreezeConfig"),
    ("freeze as a string", dict(freeze="timely"), "FreezeConfig"),
    ("integer-valued loss", dict(loss_fn=lambda o, t: (o - t).abs().sum().long()), "floating"),
    ("non-scalar loss", dict(loss_fn=lambda o, t: o - t), "scalar"),
    ("Python float loss", dict(loss_fn=lambda o, t: 1.0), "scalar"),
    ("timeout=-5", dict(timeout=-5), "timeout"),
    ("timeout=0.001", dict(timeout=0.001), "timeout"),
    ("timeout='10'", dict(timeout="10"), "timeout"),
    ("timeout=nan", dict(timeout=float("nan")), "timeout"),
    ("recv_lookahead=-1", dict(recv_lookahead=-1), "recv_lookahead"),
    ("microbatches=0", dict(microbatches=0), "microbatches"),
    ("microbatches=2.5", dict(microbatches=2.5), "microbatches"),
    ("stages=0", dict(stages=0), "stages"),
    ("unknown schedule", dict(schedule="nope"), "nope"),
    ("example_inputs as nested lists", dict(example_inputs=[[0.0] * 8] * 2), "example_inputs"),
    ("example_target as nested lists", dict(example_target=[[0.0] * 4] * 2), "example_target"),
    ("example_inputs=None", dict(example_inputs=None), "example_inputs"),
    ("split_points not in the model", dict(split_points=["nonexistent"]), "nonexistent"),
    ("groups='bogus'", dict(groups="bogus"), "bogus"),
]:
    case(f"compile: {_name}", "error", _match)(lambda kw=_kw: mlp(**kw))


@case("compile: model is a function", "error", "Module")
def _():
    tfcompile.compile(
        lambda x: x, schedule="1F1B", stages=2, microbatches=2,
        example_inputs=(torch.zeros(2, 8),), loss_fn=nn.functional.mse_loss,
        example_target=torch.zeros(2, 8),
    )  # fmt: skip


for _name, _kw, _match in [
    ("max_freeze_ratio=1.5", dict(max_freeze_ratio=1.5), "max_freeze_ratio"),
    ("max_freeze_ratio=nan", dict(max_freeze_ratio=float("nan")), "max_freeze_ratio"),
    ("policy='bogus'", dict(policy="bogus"), "bogus"),
    ("check_every=0", dict(check_every=0), "check_every"),
]:
    case(f"FreezeConfig: {_name}", "error", _match)(lambda kw=_kw: FreezeConfig(**kw))

# ---------------------------------------------------------------- Pipeline.step arguments
for _name, _args, _match in [
    ("targets of the wrong shape", (X, torch.randn(4, 5)), "shape"),
    ("float64 targets", (X, Y.double()), "dtype"),
    ("targets as a Python list", (X, Y.tolist()), "targets"),
    ("inputs as a Python list", (X.tolist(), Y), "inputs"),
    ("targets=None", (X, None), "targets"),
    ("batch not divisible by microbatches", (torch.randn(3, 8), torch.randn(3, 4)), "multiple"),
]:
    case(f"step: {_name}", "error", _match)(lambda a=_args: shared().step(*a))

for _name, _frozen, _match in [
    ("frozen= as a list", [(0, 0)], "frozen"),
    ("frozen= unknown group", {(0, 0): {"nope"}}, "nope"),
    ("frozen= key out of range", {(5, 0): {"0"}}, "outside"),
]:
    case(f"step: {_name}", "error", _match)(lambda f=_frozen: shared().step(X, Y, frozen=f))


@case("step: under torch.no_grad()", "error", "no_grad")
def _():
    with torch.no_grad():
        shared().step(X, Y)


@case("step: after model.eval()", "error", "eval")
def _():
    pipe = shared()
    pipe.model.eval()
    try:
        pipe.step(X, Y)
    finally:
        pipe.model.train()


@case("step: NaN in the inputs gives a NaN loss", "work")
def _():
    x = X.clone()
    x[0, 0] = float("nan")
    return math.isnan(shared().step(x, Y))


def ce_pipe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5))
    eager = copy.deepcopy(model)
    pipe = tfcompile.compile(
        model, schedule="1F1B", stages=2, microbatches=2, example_inputs=(torch.zeros(2, 8),),
        loss_fn=nn.functional.cross_entropy, example_target=torch.zeros(2, dtype=torch.long),
    )  # fmt: skip
    return pipe, eager


@case("step: the step after a failed one (class index out of range) works", "work")
def _():
    pipe, eager = ce_pipe()
    y = torch.tensor([0, 1, 2, 3])
    try:
        pipe.step(X, torch.tensor([0, 1, 2, 100]))
    except Exception:
        pass
    for p in pipe.parameters():
        p.grad = None
    loss = pipe.step(X, y)
    f = nn.functional.cross_entropy
    expected = (f(eager(X[:2]), y[:2]) + f(eager(X[2:]), y[2:])) / 2
    return abs(loss - expected.item()) < 1e-5


# ---------------------------------------------------------------- StageProgram arguments
def backward_input(grad):
    first = shared().stage_programs[0]
    first.release()
    first.forward(0, torch.randn(2, 8))
    try:
        return first.backward_input(0, grad)
    finally:
        first.release()


for _name, _grad, _match in [
    ("float64 grad_outputs", torch.randn(2, 8, dtype=torch.float64), "float32"),
    ("grad_outputs as a list", [[0.0] * 8] * 2, "tensor"),
    ("grad_outputs of the wrong shape", torch.randn(3, 8), "(2, 8)"),
]:
    case(f"program: {_name}", "error", _match)(lambda g=_grad: backward_input(g))


# ---------------------------------------------------------------- planner
def plan_ratio(name: str, scale: float) -> float:
    from tfcompile.planner import plan_freeze
    from tfcompile.schedules import build
    from tfcompile.schedules.profile import CostProfile

    prof = CostProfile.uniform(4, F=scale, I=scale, W=scale, comm=0.0)
    plan = plan_freeze(build(name, 4, 8), prof, max_freeze_ratio=0.9)
    return plan.makespan / plan.baseline_makespan


for _name, _scale in [("1F1B", 1e-12), ("1F1B", 1e-9), ("ZBV", 1e-9), ("ZBV", 1e12)]:
    case(f"planner: {_name} costs of {_scale:g} ms plan as at 1 ms", "work")(
        lambda n=_name, s=_scale: abs(plan_ratio(n, s) - plan_ratio(n, 1.0)) < 1e-6
    )


def plan_costs(stages):
    from tfcompile.planner import plan_freeze
    from tfcompile.schedules import build

    plan_freeze(build("1F1B", 2, 2), {"stages": stages})


for _name, _value in [("NaN", float("nan")), ("inf", float("inf")), ("negative", -1.0)]:
    case(f"planner: {_name} cost", "error", "finite")(
        lambda v=_value: plan_costs([{"F": 1, "I": 1, "W": v}, {"F": 1, "I": 1, "W": 1}])
    )


@case("planner: max_freeze_ratio=2", "error", "max_freeze_ratio")
def _():
    from tfcompile.planner import plan_freeze
    from tfcompile.schedules import build

    plan_freeze(build("1F1B", 2, 2), {"stages": [{"F": 1, "I": 1, "W": 1}] * 2}, 2.0)


@case("cli: plan --out names an existing file", "error", "not a folder")
def _():
    with tempfile.NamedTemporaryFile() as f:
        cmd = [sys.executable, "-m", "tfcompile.cli", "plan", "--schedule", "1F1B"]
        cmd += ["--stages", "2", "--microbatches", "4", "--no-render", "--out", f.name]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode == 2 and "tfcompile plan: error" in result.stderr:
        raise TFCompileError(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])


# ---------------------------------------------------------------- freezing policies
def policy_run(policy: str, bad_step: int | None, steps: int = 12, **config):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    pipe = tfcompile.compile(
        model, schedule="1F1B", stages=2, microbatches=2, example_inputs=(torch.zeros(2, 8),),
        loss_fn=nn.functional.mse_loss, example_target=torch.zeros(2, 8),
        freeze=FreezeConfig(policy=policy, total_steps=steps, **config),
    )  # fmt: skip
    opt = torch.optim.SGD(pipe.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        if step == bad_step:
            x[0, 0] = float("inf")
        opt.zero_grad(set_to_none=True)
        pipe.step(x, y)
        if all(torch.isfinite(p.grad).all() for p in pipe.parameters() if p.grad is not None):
            opt.step()
    return pipe


@case("freeze: AutoFreeze after one inf-gradient step does not freeze everything", "work")
def _():
    pipe = policy_run("autofreeze", 3, autofreeze_every=2)
    return len({g for gs in pipe.last_frozen.values() for g in gs}) < 6


@case("freeze: APF checks skip NaN parameters", "work")
def _():
    from tfcompile.freeze.policies import APF

    apf = APF(0.9, 0.05, 1, freezes=True)
    for step, v in enumerate([[1.0, 2.0], [1.1, 2.1], [1.2, 2.2]]):
        apf.check(step, {"g": [torch.tensor(v)]})
    before = apf.stability()["g"]
    apf.check(3, {"g": [torch.tensor([float("nan"), 2.0])]})
    return apf.stability()["g"] == before and not apf.frozen(3)


@case("freeze: a run resumed at the first w_min step plans a gain", "work")
def _():
    from tfcompile.train.checkpoint import load_checkpoint, save_checkpoint

    config = dict(
        warmup_steps=1, monitor_steps=2, ramp_steps=1, check_every=1, replan_every=0,
        max_freeze_ratio=0.9,
    )  # fmt: skip

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])
        return tfcompile.compile(
            model, schedule="1F1B", stages=2, microbatches=2,
            example_inputs=(torch.zeros(8, 64),), loss_fn=nn.functional.mse_loss,
            example_target=torch.zeros(8, 64),
            freeze=FreezeConfig(policy="timely", total_steps=8, **config),
        )  # fmt: skip

    pipe = build()
    x, y = torch.randn(16, 64), torch.randn(16, 64)
    while pipe.step_index < 3:  # warm-up 0, w_max 1-2; w_min starts at 3
        pipe.step(x, y)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(d, pipe, None)
        resumed = build()
        load_checkpoint(d, resumed, None)
    while resumed.step_index < 6:
        resumed.step(x, y)
    plan = resumed.freezer.plan
    return plan is not None and plan.makespan < 0.99 * plan.baseline_makespan


@case("checkpoint: a failed save leaves no .tmp file", "work")
def _():
    from tfcompile.train.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        try:
            save_checkpoint(d, shared(), None, extra={"bad": lambda: None})
        except Exception:
            pass
        return not list(Path(d).glob("*.tmp"))


# ---------------------------------------------------------------- running the cases
class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def classify(expect: str, match: str, fn: Callable) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        result = fn()
    except _Hang:
        return "hang", "no answer in 60 s"
    except TFCompileError as exc:
        text = f"{type(exc).__name__}: {exc}"
        if expect == "error" and match.lower() in str(exc).lower():
            return "clear", text
        return "raw/misleading", text
    except Exception as exc:  # noqa: BLE001 - what the user would see
        return "raw/misleading", f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
    if expect == "error":
        return "silently wrong", "ran without an error"
    if result is False:
        return "silently wrong", "ran, but the result is wrong"
    return "worked", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/bad_inputs.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rows = []
    for name, expect, match, fn in CASES:
        outcome, detail = classify(expect, match, fn)
        rows.append({"case": name, "expect": expect, "outcome": outcome, "detail": detail})
        print(f"{outcome:15s} {name}  {detail.splitlines()[0][:110] if detail else ''}")
    counts = Counter(r["outcome"] for r in rows)
    print(f"\n{len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"counts": dict(counts), "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
