"""KFAC/EKFAC/kfac_spectral: factors against float64 references written here (per-sample Jacobians,
explicit patch loops), the one-step least-squares solution, and training a 3-layer MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim.kfac_hooks import curvature_backward, remove_kfac_hooks

@pytest.fixture(autouse=True)
def float64():
    """Every test here in float64 (references to 1e-12), the default restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mlp(seed=0, widths=(5, 7, 4)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(widths[0], widths[1]), nn.Tanh(), nn.Linear(widths[1], widths[2]))


def kfac_opt(model, preset="kfac", **hp):
    hp = {"lr": 0.0, "momentum": 0.0, "stat_decay": 0.0, "damping": 1e-3, **hp}
    return modnorm.optimizer(model, preset, budgets=False, **hp)


def factor(opt, param, key):
    return opt.state[param][key]


def test_empirical_factors_match_reference():
    model = mlp()
    x, y = torch.randn(11, 5), torch.randint(0, 4, (11,))
    opt = kfac_opt(model)
    z1 = model[0](x)
    h = torch.tanh(z1)
    z2 = model[2](h)
    z1.retain_grad()
    z2.retain_grad()
    nn.functional.cross_entropy(z2, y).backward()  # the layers' hooks see this forward and backward
    opt.step()
    N = x.shape[0]
    for layer, a, z in ((model[0], x, z1), (model[2], h.detach(), z2)):
        A_ref = a.T @ a / N
        per_sample = N * z.grad  # gradient of the per-sample loss w.r.t. the layer output
        S_ref = per_sample.T @ per_sample / N
        assert torch.allclose(factor(opt, layer.weight, "kfac_A"), A_ref, atol=1e-12)
        assert torch.allclose(factor(opt, layer.weight, "kfac_S"), S_ref, atol=1e-12)
    remove_kfac_hooks(model)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_ggn_factors_match_per_sample_jacobians(loss):
    model = mlp(1)
    x = torch.randn(6, 5)
    opt = kfac_opt(model, fisher="ggn")
    out = model(x)
    curvature_backward(model, out, loss)
    out.sum().backward()  # the training gradient (any loss): ignored by the ggn statistics
    opt.step()
    N = x.shape[0]
    for layer, upto in ((model[0], 1), (model[2], 3)):
        S_ref = torch.zeros(layer.out_features, layer.out_features)
        for n in range(N):
            inp = x[n : n + 1] if upto == 1 else torch.tanh(model[0](x[n : n + 1]))
            z = layer(inp).detach()
            rest = (lambda v: model[2](torch.tanh(v))) if upto == 1 else (lambda v: v)
            J = torch.autograd.functional.jacobian(rest, z).reshape(4, layer.out_features)  # ∂f/∂z
            f = rest(z).reshape(-1)
            H = torch.eye(4) if loss == "mse" else torch.diag(f.softmax(0)) - torch.outer(f.softmax(0), f.softmax(0))
            S_ref += J.T @ H @ J / N
        assert torch.allclose(factor(opt, layer.weight, "kfac_S"), S_ref, atol=1e-12)
    remove_kfac_hooks(model)


def test_conv_factors_are_kfc():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 3 * 3, 2))
    x = torch.randn(4, 2, 5, 5)
    opt = kfac_opt(model)
    z = conv(x)
    z.retain_grad()
    model[2](model[1](z)).pow(2).mean().backward()
    g = z.grad.clone()
    opt.step()
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    patches = [xp[b, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1) for b in range(4) for i in range(3) for j in range(3)]
    a = torch.stack(patches)
    grows = torch.stack([g[b, :, i, j] for b in range(4) for i in range(3) for j in range(3)])
    assert torch.allclose(factor(opt, conv.weight, "kfac_A"), a.T @ a / a.shape[0], atol=1e-12)
    assert torch.allclose(factor(opt, conv.weight, "kfac_S"), 4 * grows.T @ grows, atol=1e-12)  # s = batch (KFC)
    assert conv.weight.grad is not None and opt.state[conv.weight]["step"] == 1
    remove_kfac_hooks(model)


@pytest.mark.parametrize("preset", ["kfac", "ekfac"])
def test_least_squares_in_one_step(preset):
    torch.manual_seed(3)
    layer = nn.Linear(6, 3, bias=False)
    model = nn.Sequential(layer)
    a, t = torch.randn(40, 6), torch.randn(40, 3)
    opt = modnorm.optimizer(model, preset, lr=1.0, damping=1e-12, momentum=0.0, stat_decay=0.0, weight_decay=0.0,
                            fisher="ggn", root_dtype="float64", budgets=False)
    out = model(a)
    curvature_backward(model, out, "mse")
    (0.5 * ((out - t) ** 2).sum(1).mean()).backward()
    opt.step()
    W_ls = torch.linalg.lstsq(a, t).solution.T
    assert (layer.weight.detach() - W_ls).abs().max() < 1e-8
    remove_kfac_hooks(model)


def test_ekfac_diagonal_is_the_per_sample_second_moment():
    model = mlp(4)
    x, y = torch.randn(9, 5), torch.randint(0, 4, (9,))
    opt = kfac_opt(model, "ekfac")
    z1 = model[0](x)
    z1.retain_grad()
    nn.functional.cross_entropy(model[2](torch.tanh(z1)), y).backward()
    g = z1.grad.clone()
    opt.step()
    st = opt.state[model[0].weight]
    per_sample = [torch.outer(9 * g[n], x[n]) for n in range(9)]  # ∇W of the n-th sample's loss
    rotated = torch.stack([st["kfac_QS"].T @ G @ st["kfac_QA"] for G in per_sample])
    assert torch.allclose(st["kfac_diag"], (rotated**2).mean(0), atol=1e-12)
    remove_kfac_hooks(model)


@pytest.mark.parametrize("preset,lr", [("kfac", 0.1), ("ekfac", 0.1), ("kfac_spectral", 0.1)])
def test_three_layer_mlp_trains(preset, lr):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(128, 8)
    y = (x[:, :3] * torch.tensor([1.0, -2.0, 0.5])).argmax(1)
    opt = modnorm.optimizer(model, preset, lr=lr, damping=0.1, update_freq=5)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())
    rows = {r["name"]: r["preconditioner"] for r in opt.describe_rows()}
    assert rows["0.weight"].startswith("kfac") and rows["0.bias"].startswith("adam")
    remove_kfac_hooks(model)


def test_bad_input_and_missing_statistics():
    model = mlp()
    p = list(model.parameters())
    with pytest.raises(modnorm.ConfigError, match="pass the model"), pytest.warns(UserWarning, match="not the model"):
        modnorm.optimizer(p, "kfac")
    with pytest.raises(modnorm.ConfigError, match="fisher"):
        modnorm.optimizer(model, "kfac", fisher="exact")
    opt = modnorm.optimizer(model, "kfac", fisher="ggn")
    model(torch.randn(3, 5)).sum().backward()
    with pytest.raises(RuntimeError, match="curvature_backward"):
        opt.step()
    with pytest.raises(ValueError, match="loss"):
        curvature_backward(model, model(torch.randn(3, 5)), "hinge")
    remove_kfac_hooks(model)
    model(torch.randn(3, 5)).sum().backward()
    assert not modnorm.optim.kfac_hooks._REGISTRY  # hooks gone: nothing is recorded any more
