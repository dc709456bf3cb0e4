"""Configuration: validated hyperparameters with clear errors, and a JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modnorm
from modnorm import ConfigError
from modnorm.optim import OptimizerConfig
from modnorm.optim import PRESETS

# sophia* need a Hessian source (loss_fn= or from_graph=True); they are tested with it in tests/test_hessian.py.
PRESET_NAMES = sorted(p for p in PRESETS if not p.startswith("sophia") and "model" not in PRESETS[p].hyperparameters.model_fields)  # those need a loss or the model


def params():
    return [torch.zeros(3, 2, requires_grad=True), torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize("preset,field,value,allowed", [
    ("adamw", "lr", -1.0, "lr ≥ 0"),
    ("adamw", "betas", (0.9, 1.0), "0 ≤ β < 1"),
    ("adamw", "betas", (-0.1, 0.9), "0 ≤ β < 1"),
    ("adamw", "eps", -1e-8, "eps ≥ 0"),
    ("adamw", "weight_decay", -0.1, "weight_decay ≥ 0"),
    ("muon", "momentum", 1.0, "0 ≤ momentum < 1"),
    ("muon", "ns_steps", 0, "1 ≤ ns_steps"),
    ("muon", "adjust_lr_fn", "bogus", "adjust_lr_fn one of"),
    ("muadam", "ns_method", "bogus", "ns_method one of"),
    ("sgd", "momentum", -0.5, "0 ≤ momentum < 1"),
])
def test_out_of_range_names_field_and_range(preset, field, value, allowed):
    p = params()
    before = [x.detach().clone() for x in p]
    with pytest.raises(ConfigError) as err:
        modnorm.optimizer(p, preset, **{field: value})
    msg = str(err.value)
    assert field in msg and allowed in msg and preset in msg
    assert all(torch.equal(a, b) for a, b in zip(p, before))


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError) as err:
        modnorm.optimizer(params(), "adamx")
    assert "adamx" in str(err.value) and all(name in str(err.value) for name in PRESETS)


def test_unknown_hyperparameter_is_named_with_valid_ones():
    with pytest.raises(ConfigError) as err:
        modnorm.optimizer(params(), "adamw", beta1=0.9)
    msg = str(err.value)
    assert "beta1" in msg and "betas" in msg and "weight_decay" in msg


def test_sgd_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="nesterov"):
        modnorm.optimizer(params(), "sgd", nesterov=True)


def test_tensor_lr_must_be_one_element():
    with pytest.raises(ConfigError, match="1 element"):
        modnorm.optimizer(params(), "adamw", lr=torch.tensor([0.1, 0.2]))


def test_bad_group_override_names_the_group():
    groups = [{"params": params()}, {"params": [torch.zeros(2, requires_grad=True)], "eps": -1.0}]
    with pytest.raises(ConfigError, match="param group 1"):
        modnorm.optimizer(groups, "adamw")


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_json_round_trip_gives_the_same_optimizer(preset):
    cfg = OptimizerConfig(preset=preset, hyperparameters={"lr": 0.003}, budgets=False)
    text = cfg.model_dump_json()
    back = OptimizerConfig.model_validate_json(text)
    assert back == cfg and json.loads(text)["hyperparameters"]["lr"] == 0.003
    a, b = params(), params()
    opt_a = modnorm.optimizer(a, config=text)
    opt_b = modnorm.optimizer(b, preset, lr=0.003)
    assert opt_a.param_groups[0].keys() == opt_b.param_groups[0].keys()
    assert {k: v for k, v in opt_a.param_groups[0].items() if k != "params"} == {k: v for k, v in opt_b.param_groups[0].items() if k != "params"}
    for opt, ps in ((opt_a, a), (opt_b, b)):
        sum((p - 1).pow(2).sum() for p in ps).backward()
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_config_rejects_bad_values_and_mixing():
    with pytest.raises(ValueError, match="lr ≥ 0"):  # pydantic wraps the ConfigError: still a ValueError
        OptimizerConfig(preset="muon", hyperparameters={"lr": -1})
    with pytest.raises(ValueError, match="known presets"):
        OptimizerConfig(preset="nope")
    with pytest.raises(ConfigError, match="either config"):
        modnorm.optimizer(params(), "muon", config=OptimizerConfig(), lr=0.1)


@settings(max_examples=25, deadline=None)
@given(b1=st.floats(-2, 2), b2=st.floats(-2, 2), eps=st.floats(-1, 1), lr=st.floats(-1, 1))
def test_adamw_validation_property(b1, b2, eps, lr):
    valid = 0 <= b1 < 1 and 0 <= b2 < 1 and eps >= 0 and lr >= 0
    try:
        OptimizerConfig(preset="adamw", hyperparameters={"betas": (b1, b2), "eps": eps, "lr": lr})
    except ValueError:
        assert not valid
    else:
        assert valid


def test_bad_hyperparameter_set_between_steps_fails_before_any_update():
    a, b = params(), params()
    opt = modnorm.optimizer([{"params": a}, {"params": b}], "adamw", lr=0.1)
    sum((p - 1).pow(2).sum() for p in a + b).backward()
    opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(ConfigError, match="param group 1"):
        opt.step()
    assert all(torch.equal(p, torch.zeros_like(p)) for p in a + b) and len(opt.state) == 0


@pytest.mark.parametrize("preset, field, dtype", [("muon", "ns_dtype", torch.bfloat16), ("muadam", "ns_dtype", torch.float32),
                                                  ("soap", "root_dtype", torch.float64)])
def test_dtype_options_take_torch_dtypes(preset, field, dtype):
    """A torch.dtype for a dtype option is its name: the same optimizer, the same steps bit for bit."""
    def run(value):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = modnorm.optimizer(net, preset, lr=1e-2, **{field: value})
        for _ in range(3):
            opt.zero_grad()
            net(torch.randn(16, 6)).square().mean().backward()
            opt.step()
        return opt, [p.detach().clone() for p in net.parameters()]

    opt, by_dtype = run(dtype)
    _, by_name = run(str(dtype).removeprefix("torch."))
    assert opt.param_groups[0][field] == str(dtype).removeprefix("torch.")
    assert all(torch.equal(a, b) for a, b in zip(by_dtype, by_name))
    with pytest.raises(ConfigError, match=field):
        modnorm.optimizer(torch.nn.Linear(4, 4), preset, lr=1e-2, **{field: torch.int32})
