"""modnorm.optimizer on a model with param groups, rules and defaults: geometry kept, errors that list every fix."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import modnorm


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))


def _rows(opt) -> dict[str, dict]:
    return {r["name"]: r for r in opt.describe_rows()}


def test_param_groups_keep_the_models_geometry_and_take_their_hyperparameters() -> None:
    model = _mlp()
    model[0].weight.requires_grad_(False)  # frozen: simply absent
    want_b, want_g = modnorm.budgets(model), modnorm.geometries(model)
    groups = [{"params": [model[1].weight, model[1].bias], "lr": 0.1}, {"params": list(model[3].named_parameters())}]
    opt = modnorm.optimizer(model, "sgd", param_groups=groups, lr=0.01, momentum=0.0, budgets=True)
    rows = _rows(opt)
    assert set(rows) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    for name, r in rows.items():
        assert r["budget"] == pytest.approx(want_b[name]) and r["role"] == want_g[name].role
    assert rows["3.weight"]["role"] == "head"
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    # the step follows each group's lr: plain SGD here, W ← W − lr·budget·g (sgd's base norm is Frobenius, sharp)
    x = torch.randint(0, 10, (5,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    for name, lr in (("1.bias", 0.1), ("3.bias", 0.01)):
        want = before[name].double() - lr * want_b[name] * grads[name].double()
        torch.testing.assert_close(model.get_parameter(name).detach().double(), want, rtol=1e-6, atol=1e-7)
    assert torch.equal(model[0].weight, before["0.weight"])


def test_param_group_errors_name_the_group() -> None:
    model = _mlp()
    with pytest.raises(modnorm.ConfigError, match=r"param_groups\[0\] holds Parameter that is not a parameter of the model"):
        modnorm.optimizer(model, "sgd", param_groups=[{"params": [nn.Parameter(torch.zeros(2))]}])
    with pytest.raises(modnorm.ConfigError, match=r"param_groups\[1\]: parameter '1.bias' is already"):
        modnorm.optimizer(model, "sgd", param_groups=[{"params": [model[1].bias]}, {"params": [model[1].bias]}])
    with pytest.raises(modnorm.ConfigError, match="need the model"):
        modnorm.optimizer(model.parameters(), "sgd", param_groups=[])


def test_bare_parameters_warn_that_geometry_is_lost() -> None:
    model = _mlp()
    with pytest.warns(UserWarning, match="got parameters, not the model"):
        modnorm.optimizer(filter(lambda p: p.requires_grad, model.parameters()), "muon")
    with pytest.warns(UserWarning, match="got parameters, not the model"):
        modnorm.optimizer(list(model.named_parameters()), "muon")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modnorm.optimizer([torch.zeros(2, 2, requires_grad=True)], "muon")  # plain tensors: nothing to lose


class Gated(nn.Module):
    """A user layer modnorm knows nothing about: two parameters."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(d))
        self.mix = nn.Parameter(torch.eye(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.mix.T) * self.gate


class Mix(nn.Module):
    """Another unknown layer: one matrix of unknown layout."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.eye(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(3, 4))  # a raw parameter read in the forward: a table by default
        self.a, self.g, self.m, self.b = nn.Linear(4, 4), Gated(4), Mix(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.m(self.g(self.a(x + self.pos))))


def test_geometry_error_lists_every_parameter_and_every_fix_works_as_written() -> None:
    model = Net()
    with pytest.raises(modnorm.GeometryError) as err:
        modnorm.optimizer(model, "muon")
    msg = str(err.value)
    for name in ("'g.mix'", "'m.w'"):  # every unknown matrix at once; vectors and raw tables have defaults
        assert name in msg
    assert "'pos'" not in msg and "'g.gate'" not in msg and "'gate':" in msg  # Gated's rule declares the whole layer
    lines = msg.splitlines()
    start = lines.index("  rules = modnorm.LayerRules()")
    code = "\n".join(line.strip() for line in lines[start:] if line.startswith("  rules"))
    namespace = {"modnorm": modnorm, "Gated": Gated, "Mix": Mix}
    exec(code, namespace)  # the suggested declarations, as printed
    opt = modnorm.optimizer(model, "muon", rules=namespace["rules"])
    assert set(_rows(opt)) == {n for n, _ in model.named_parameters()}
    default = re.search(r"default=(modnorm\.Geometry\(.*\))$", msg).group(1)
    opt = modnorm.optimizer(model, "muon", default=eval(default, {"modnorm": modnorm}))
    assert set(_rows(opt)) == {n for n, _ in model.named_parameters()}
