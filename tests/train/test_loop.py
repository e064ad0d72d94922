"""The training loop validates in eval mode (dropout off, running statistics) and gives every
submodule its own training flag back afterwards."""

import copy

import torch
from torch import nn

import tfcompile
from tfcompile.train.loop import eval_mode, train


def test_validation_runs_in_eval_mode_and_restores_each_flag():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)
    )
    model[1].eval()  # a user-frozen BatchNorm: stays in eval mode after validation
    X, Y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    pipe = tfcompile.compile(
        model, schedule="1F1B", microbatches=2, ranks=2, example_inputs=(X[:4],),
        loss_fn=nn.functional.cross_entropy, example_target=Y[:4], split_points=["3"],
    )  # fmt: skip
    opt = torch.optim.SGD(pipe.parameters(), lr=0.0)  # lr 0: the weights stay as they are
    result = train(
        pipe, opt, lambda step: (X, Y), steps=1, items_per_step=8, val_batches=[(X, Y)],
        verbose=False,
    )  # fmt: skip
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        want = sum(
            nn.functional.cross_entropy(ref(x), y) for x, y in zip(X.chunk(2), Y.chunk(2))
        ) / 2
    torch.testing.assert_close(torch.tensor(result.val[-1][2]), want, rtol=1e-5, atol=1e-6)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]


def test_eval_mode_restores_flags_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model[1].eval()
    try:
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise ValueError
    except ValueError:
        pass
    assert [m.training for m in model.modules()] == [True, True, False]
