"""The zoo presets reproduce their peers in float64: torch.optim.RMSprop and AdamW(amsgrad=True),
lion-pytorch's Lion, pytorch-optimizer's Lamb and LARS (budgets=False, 30 steps, 1e-9)."""

from __future__ import annotations

import pytest
import torch
from lion_pytorch import Lion
from pytorch_optimizer import LARS, Lamb

import modnorm
from tests.test_optim_peers import assert_close, make_params, run


def _compare(ref_factory, preset, hp, tol=1e-9, shapes=None, **extra):
    init = make_params() if shapes is None else make_params(shapes=shapes)
    neg = hp.get("maximize", False)
    ref = run(ref_factory, init, negate=neg)
    got = run(lambda ps: modnorm.optimizer(ps, preset, budgets=False, **hp, **extra), init, negate=neg)
    assert_close(got, ref, tol)
    still = [p.clone() for p in init]
    assert max((a - b).abs().max().item() for a, b in zip(ref, still)) > 1e-3  # the trajectories moved


@pytest.mark.parametrize("hp", [
    {},
    {"alpha": 0.9, "momentum": 0.8, "weight_decay": 0.05},
    {"centered": True, "momentum": 0.5, "eps": 1e-6},
    {"centered": True, "maximize": True},
])
def test_rmsprop_equals_torch(hp):
    _compare(lambda ps: torch.optim.RMSprop(ps, lr=0.01, **hp), "rmsprop", {"lr": 0.01, **hp})


@pytest.mark.parametrize("hp", [{}, {"betas": (0.8, 0.99), "weight_decay": 0.1, "eps": 1e-6}])
def test_amsgrad_equals_torch(hp):
    _compare(lambda ps: torch.optim.AdamW(ps, lr=0.02, amsgrad=True, **hp), "adamw", {"lr": 0.02, "amsgrad": True, **hp})


def test_amsgrad_differs_from_adam():
    init = make_params()
    a = run(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.05, amsgrad=True, budgets=False), init)
    b = run(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.05, budgets=False), init)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-4


@pytest.mark.parametrize("hp", [{}, {"betas": (0.95, 0.98), "weight_decay": 0.1}, {"betas": (0.0, 0.9)}])
def test_lion_equals_lion_pytorch(hp):
    _compare(lambda ps: Lion(ps, lr=0.003, **hp), "lion", {"lr": 0.003, **hp})


@pytest.mark.parametrize("hp", [{}, {"betas": (0.8, 0.99), "weight_decay": 0.05, "eps": 1e-8}])
def test_lamb_equals_pytorch_optimizer(hp):
    _compare(lambda ps: Lamb(ps, lr=0.01, foreach=False, **hp), "lamb", {"lr": 0.01, **hp})


def test_lamb_clamps_the_weight_norm():
    # a weight norm above the clamp (10) makes the trust ratio 10/‖U‖
    shapes = [(30, 30), (5,)]
    init = [p * 3 for p in make_params(shapes=shapes)]
    ref = run(lambda ps: Lamb(ps, lr=0.01, foreach=False), init)
    got = run(lambda ps: modnorm.optimizer(ps, "lamb", lr=0.01, budgets=False), init)
    assert init[0].norm() > 10
    assert_close(got, ref, 1e-9)


@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.05, "momentum": 0.8, "trust_coefficient": 0.02}, {"nesterov": True},
                                {"trust_coefficient": 1.0, "momentum": 0.5, "weight_decay": 0.1}])
def test_lars_equals_pytorch_optimizer(hp):
    _compare(lambda ps: LARS(ps, lr=0.02, foreach=False, **hp), "lars", {"lr": 0.02, **hp})


def test_trust_ratio_sets_the_relative_step():
    # lamb with ε = 0 and no clamp: every matrix moves by exactly lr·‖W‖/(1 − β1^t) in Frobenius norm
    p = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    opt = modnorm.optimizer([p], "lamb", lr=0.01, eps=0.0, trust_clamp=1e9, budgets=False)
    for t in range(1, 4):
        before = p.detach().clone()
        opt.zero_grad()
        (p.sin().sum() + (p**2).sum()).backward()
        opt.step()
        assert abs((p.detach() - before).norm().item() - 0.01 / (1 - 0.9**t) * before.norm().item()) < 1e-12


@pytest.mark.parametrize("hp", [{}, {"betas": (0.8, 0.99), "weight_decay": 0.05, "warmup_steps": 5, "r": 0.5, "weight_lr_power": 1.0}])
def test_adamw_schedulefree_equals_peer_in_train_and_eval(hp):
    from schedulefree import AdamWScheduleFree

    init = make_params()
    targets = make_params(seed=1)
    from tests.test_optim_peers import loss_fn

    def trajectory(make):
        params = [p.clone().requires_grad_() for p in init]
        opt = make(params)
        opt.train()
        evals = []
        for t in range(30):
            opt.zero_grad()
            loss_fn(params, targets).backward()
            opt.step()
            if t % 10 == 9:  # evaluate at the averaged point, then go on training
                opt.eval()
                evals.append([p.detach().clone() for p in params])
                opt.train()
        return [p.detach() for p in params], evals

    ref, ref_evals = trajectory(lambda ps: AdamWScheduleFree(ps, lr=0.02, foreach=False, **hp))
    got, got_evals = trajectory(lambda ps: modnorm.optimizer(ps, "adamw_schedulefree", lr=0.02, budgets=False, **hp))
    assert_close(got, ref, 1e-9)
    for a, b in zip(got_evals, ref_evals):
        assert_close(a, b, 1e-9)
    assert max((a - b).abs().max().item() for a, b in zip(got_evals[-1], got)) > 1e-4  # x ≠ y: eval() moved them
