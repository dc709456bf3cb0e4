"""sophia's Hessian estimates see the parameters of the step's start (none is updated before
all are estimated): results do not depend on parameter order or grouping; from_graph works on
multi-layer models; a resumed (torch.save or DCP) sophia keeps its own loss_fn; compile=True
keeps the Hessian."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import modnorm
from modnorm import load_checkpoint, save_checkpoint
from modnorm.optim.hessian import functional_loss

F64 = torch.float64


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 2, dtype=F64)
    return model, lambda out: ((out - y) ** 2).mean(), x


def train(model, opt, loss_of, x, steps, create_graph=False):
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model(x)).backward(create_graph=create_graph)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("preset", ["sophia", "sophia_spectral"])
def test_results_do_not_depend_on_order_or_grouping(preset):
    runs = []
    for layout in ("one group", "two groups", "reversed"):
        model, loss_of, x = mlp()
        named = list(model.named_parameters())
        params = {"one group": named, "reversed": named[::-1],
                  "two groups": [{"params": [p for _, p in named[:3]], "param_names": [n for n, _ in named[:3]]},
                                 {"params": [p for _, p in named[3:]], "param_names": [n for n, _ in named[3:]]}]}[layout]
        opt = modnorm.ModnormOptimizer(params, preset, lr=0.05, every=1, ns_method="svd",
                                       loss_fn=functional_loss(model, loss_of, x), loss_params=dict(named))
        runs.append(train(model, opt, loss_of, x, 3))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_from_graph_steps_a_multi_layer_model():
    model, loss_of, x = mlp()
    opt = modnorm.optimizer(model, "sophia", lr=0.05, every=1, from_graph=True)
    before = [p.detach().clone() for p in model.parameters()]
    after = train(model, opt, loss_of, x, 2, create_graph=True)
    assert all(not torch.equal(a, b) for a, b in zip(after, before))


def separable():
    """A loss with a diagonal Hessian: every Rademacher draw gives the exact diagonal, so a
    resumed run (with a fresh generator) continues exactly."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    a = torch.rand(3, 4, dtype=F64) + 0.5
    loss_params = lambda m: dict(m.named_parameters())  # noqa: E731
    loss = lambda p: (a * p["weight"] ** 4).sum() + (p["bias"] ** 4).sum()  # noqa: E731
    return model, loss, loss_params


def step(model, opt, loss, n):
    for _ in range(n):
        opt.zero_grad()
        loss(dict(model.named_parameters())).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_resumed_sophia_with_loss_fn_continues_exactly(tmp_path):
    model, loss, loss_params = separable()
    opt = modnorm.optimizer(model, "sophia", lr=0.05, every=2, loss_fn=loss, loss_params=loss_params(model))
    step(model, opt, loss, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # loss_fn and loss_params are not state
    buf.seek(0)
    model2, _, _ = separable()
    model2.load_state_dict(model.state_dict())
    opt2 = modnorm.optimizer(model2, "sophia", lr=0.05, every=2, loss_fn=loss, loss_params=loss_params(model2))
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["loss_params"]["weight"] is model2.weight
    # DCP too, with a local loss_fn
    save_checkpoint(tmp_path, model, opt)
    model3, _, _ = separable()
    opt3 = modnorm.optimizer(model3, "sophia", lr=0.05, every=2, loss_fn=loss, loss_params=loss_params(model3))
    load_checkpoint(tmp_path, model3, opt3)
    expected = step(model, opt, loss, 3)
    for resumed in (step(model2, opt2, loss, 3), step(model3, opt3, loss, 3)):
        for a, b in zip(resumed, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_sophia_keeps_the_hessian():
    results = []
    for compile in (False, {"backend": "aot_eager"}):
        model, loss, loss_params = separable()
        opt = modnorm.optimizer(model, "sophia", lr=0.05, every=2, loss_fn=loss, loss_params=loss_params(model), compile=compile)
        results.append((step(model, opt, loss, 3), [float(s["refreshes"]) for s in opt.state.values()]))
    (eager, eager_refreshes), (compiled, compiled_refreshes) = results
    assert eager_refreshes == compiled_refreshes == [2.0, 2.0]
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
