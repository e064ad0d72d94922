"""Run under torchrun (2 ranks, gloo) by tests/zoo/test_zoo_dist.py: a zoo model compiled
unchanged (default loss and target), two AdamW steps, compared on each rank with eager
training of a deep copy (CPU is deterministic). One JSON verdict per rank:
{case: {"err": worst relative parameter error (<= 1: equal at rtol 1e-5), "grad_err": ...,
"loss_err": ..., "error": exception text or None}}.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "exactness" / "workers"))

import worker_main  # noqa: E402 - the exactness workers' shared command line
from zoo_models import ZOO  # noqa: E402
from zoo_train import adamw, compile_case, eager_step, grads_error  # noqa: E402


def _relative_error(pipe, ref) -> float:
    refs = dict(ref.named_parameters())
    worst = 0.0
    for name, p in pipe.named_parameters():
        r = refs[name].detach()
        worst = max(worst, ((p.detach() - r).abs() / (1e-5 * r.abs() + 1e-7)).max().item())
    return worst


def _local_grads_error(pipe, ref) -> float:
    local = dict(pipe.named_parameters())

    class View:  # grads_error over this rank's parameters only
        def named_parameters(self):
            return iter(local.items())

    return grads_error(View(), ref)


def run_case(name: str) -> dict:
    case = ZOO[name]()
    ref = copy.deepcopy(case.model)
    pipe = compile_case(case, 2)
    m = pipe.schedule.num_microbatches
    opt, ropt = adamw(dict(pipe.named_parameters()).values()), adamw(ref.parameters())
    loss_err = grad_err = 0.0
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        ropt.zero_grad(set_to_none=True)
        loss = pipe.step(case.inputs, case.targets)
        want = eager_step(case, ref, m)
        if loss is not None:  # the last stage's rank reports the loss
            loss_err = max(loss_err, abs(loss - want) / abs(want))
        if step == 0:
            grad_err = _local_grads_error(pipe, ref)
        opt.step()
        ropt.step()
    local = {n for n, _ in pipe.named_parameters()}
    refs = dict(ref.named_buffers())
    buffer_err = max((  # BatchNorm running statistics of this rank's blocks, as eager's
        (b - refs[n]).abs().max().item() for n, b in case.model.named_buffers()
        if b.is_floating_point() and n.rsplit(".", 1)[0] in {p.rsplit(".", 1)[0] for p in local}
    ), default=0.0)
    return {"err": _relative_error(pipe, ref), "grad_err": grad_err, "loss_err": loss_err,
            "buffer_err": buffer_err}


def _case(name: str):
    def run() -> dict:  # no parameters: worker_main passes the schedule to those that take one
        return run_case(name)

    return run


CASES = {name: _case(name) for name in ZOO}

if __name__ == "__main__":
    worker_main.main(CASES)
