"""torch.optim's generic optimizer checks (as in torch's test_optim / OptimizerInfo), run on every preset:
state_dict round trip with weights_only and exact continuation, deepcopy, hooks, no-grad no-op,
tensor lr, maximize, closures, lr schedulers, repr, per-group hyperparameters, named parameters."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import modnorm
from modnorm.optim import PRESETS

# sophia* need a Hessian source (loss_fn= or from_graph=True with create_graph backward);
# their conventions are tested in tests/test_hessian.py.
PRESET_NAMES = sorted(p for p in PRESETS if not p.startswith("sophia") and "model" not in PRESETS[p].hyperparameters.model_fields)  # those need a loss or the model
SHAPES = {"w1": (6, 4), "w2": (6, 4), "w3": (4, 6), "conv": (3, 2, 3, 3), "b": (5,), "s": ()}


def named_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.randn(s, generator=g, dtype=torch.float64).requires_grad_()) for n, s in SHAPES.items()]


def loss_of(params):
    return sum(((p - 0.3) ** 2).sum() + 0.1 * (p**4).sum() for p in params)


def train(opt, params, steps, sign=1.0):
    for _ in range(steps):
        opt.zero_grad()
        (sign * loss_of(params)).backward()
        opt.step()


def tensors(named):
    return [p for _, p in named]


def clone_named(named):
    return [(n, p.detach().clone().requires_grad_()) for n, p in named]


def same(a, b):
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b))


def make(preset, params, **kw):
    kw.setdefault("lr", 0.01)
    return modnorm.optimizer(params, preset, **kw)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_state_dict_weights_only_roundtrip_continues_identically(preset):
    named = named_params()
    opt = make(preset, named)
    train(opt, tensors(named), 4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    resumed_named = clone_named(named)
    train(opt, tensors(named), 4)

    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["param_groups"][0]["param_names"] == list(SHAPES)
    opt2 = make(preset, resumed_named)
    opt2.load_state_dict(loaded)
    train(opt2, tensors(resumed_named), 4)
    assert same(tensors(named), tensors(resumed_named))
    assert all(int(s["step"]) == 8 for s in opt2.state.values())


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_deepcopy_is_independent_and_equivalent(preset):
    named = named_params()
    opt = make(preset, named)
    train(opt, tensors(named), 2)
    opt.zero_grad()
    loss_of(tensors(named)).backward()
    twin = copy.deepcopy(opt)
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in tensors(named)]
    twin.step()
    assert same(tensors(named), before)  # stepping the copy leaves the original alone
    opt.step()
    assert same(tensors(named), twin_params)
    assert twin.describe() == opt.describe()


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_step_hooks_and_closure(preset):
    named = named_params()
    opt = make(preset, named)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = loss_of(tensors(named))
        loss.backward()
        calls.append("closure")
        return loss

    expected = loss_of(tensors(named)).item()
    loss = opt.step(closure)
    assert calls == ["pre", "closure", "post"]
    assert torch.is_tensor(loss) and loss.item() == expected
    h1.remove()
    h2.remove()
    opt.step(closure)
    assert calls == ["pre", "closure", "post", "closure"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_no_grad_is_a_noop_without_state(preset):
    named = named_params()
    opt = make(preset, named)
    before = [p.detach().clone() for p in tensors(named)]
    opt.step()
    assert same(tensors(named), before) and len(opt.state) == 0
    # only the parameters with a gradient move and get state
    loss_of(tensors(named)[:2]).backward()
    opt.step()
    assert set(opt.state) == set(tensors(named)[:2])
    assert same(tensors(named)[2:], before[2:]) and not same(tensors(named)[:2], before[:2])


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_tensor_lr_and_maximize(preset):
    a, b, c = named_params(), named_params(), named_params()
    train(make(preset, a, lr=0.01), tensors(a), 3)
    train(make(preset, b, lr=torch.tensor(0.01, dtype=torch.float64)), tensors(b), 3)
    train(make(preset, c, lr=0.01, maximize=True), tensors(c), 3, sign=-1.0)
    assert same(tensors(a), tensors(b)) and same(tensors(a), tensors(c))
    assert not same(tensors(a), tensors(named_params()))


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_lr_scheduler_drives_the_step(preset):
    a, b = named_params(), named_params()
    opt_a = make(preset, a, lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    opt_b = make(preset, b, lr=0.01)
    for t in range(3):
        for opt, named in ((opt_a, a), (opt_b, b)):
            opt.zero_grad()
            loss_of(tensors(named)).backward()
            opt.step()
        sched.step()
        opt_b.param_groups[0]["lr"] = 0.01 * 0.5 ** (t + 1)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(0.01 / 8)
    assert same(tensors(a), tensors(b))
    zero = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda t: 0.0)
    assert opt_a.param_groups[0]["lr"] == 0.0 and zero is not None
    if preset == "adamw_schedulefree":
        return  # at lr 0 the averaging still moves y towards z (weight ∝ the largest lr so far), as in schedulefree
    before = [p.detach().clone() for p in tensors(a)]
    train(opt_a, tensors(a), 1)
    assert same(tensors(a), before)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_per_group_hyperparameters_and_repr(preset):
    named = named_params()
    groups = [{"params": named[:3], "lr": 0.0}, {"params": named[3:]}]
    opt = make(preset, groups, lr=0.02)
    before = [p.detach().clone() for p in tensors(named)]
    train(opt, tensors(named), 2)
    assert same(tensors(named)[:3], before[:3])
    assert not same(tensors(named)[3:], before[3:])
    text = repr(opt)
    assert f"ModnormOptimizer[{preset}]" in text and "Parameter Group 1" in text and "lr: 0.02" in text


def test_add_param_group_later_and_validation():
    named = named_params()
    opt = make("adamw", named[:2])
    opt.add_param_group({"params": named[2:], "betas": (0.5, 0.6)})
    assert opt.param_groups[1]["betas"] == (0.5, 0.6) and opt.param_groups[1]["eps"] == 1e-8
    with pytest.raises(ValueError, match="betas"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "betas": (1.5, 0.9)})
    assert len(opt.param_groups) == 2
