"""Hyperparameters are strict: finite numbers of the declared type, no loose conversion,
checked at construction and (lr, set by schedulers or users) at every step."""

from __future__ import annotations

import math

import pytest
import torch

import modnorm
from modnorm.optim.config import ConfigError

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("preset, field, value", [
    ("adamw", "lr", INF),
    ("adamw", "weight_decay", INF),
    ("muon", "adamw_lr_ratio", INF),
    ("shampoo", "power", INF),
    ("muon", "ns_coefficients", (NAN, 1.0, 1.0)),
    ("adamw", "lr", torch.tensor(INF)),
    ("soap", "lr", "0.1"),
    ("soap", "lr", True),
    ("splus", "lr", "0.1"),
    ("adamw", "lr", "0.1"),
    ("adamw", "maximize", "yes"),
    ("muon", "ns_steps", 5.0),
    ("sgd", "nesterov", 1),
])
def test_bad_hyperparameters_are_refused_naming_the_field(preset, field, value):
    w = torch.randn(3, 3, requires_grad=True)
    with pytest.raises(ConfigError, match=rf"{field}\b"):
        modnorm.optimizer([w], preset, **{field: value})


def test_rule_refuses_non_finite_numbers():
    with pytest.raises(ValueError, match="finite"):
        modnorm.optim.UpdateRule(weight_decay=INF)


def test_lists_and_ints_are_still_accepted():
    w = torch.randn(3, 3, requires_grad=True)
    opt = modnorm.optimizer([w], "adamw", betas=[0.9, 0.99], lr=1)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("bad", [NAN, -1.0, INF, "0.1", True, torch.tensor(NAN)])
def test_group_lr_changed_after_construction_is_checked_at_the_step(bad):
    w = torch.randn(3, 3, requires_grad=True)
    opt = modnorm.optimizer([w], "adamw")
    w.grad = torch.ones(3, 3)
    opt.step()
    opt.param_groups[0]["lr"] = bad
    before, state = w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()}
    with pytest.raises(ConfigError, match="param group 0: lr must be a finite number"):
        opt.step()
    assert torch.equal(w, before) and all(torch.equal(opt.state[w][k], v) for k, v in state.items())
