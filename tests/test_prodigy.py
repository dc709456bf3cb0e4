"""The prodigy preset reproduces prodigyopt's Prodigy in float64 (30 steps, 1e-12), its D
stage resumes bitwise from a state_dict, a refused step changes nothing, bad settings are
refused with the parameter named."""

from __future__ import annotations

import io

import pytest
import torch
from prodigyopt import Prodigy

import modnorm
from modnorm.optim.config import ConfigError
from tests.state_snapshot import snapshot, unchanged
from tests.test_optim_peers import assert_close, loss_fn, make_params, run

pytestmark = pytest.mark.filterwarnings("ignore:modnorm.optimizer got parameters")


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# With decoupled decay the early D = N/Σ‖s‖₁ reads x₀ − x after steps of size ~d0: the last-bit
# difference between W(1 − aλ) (here, torch's AdamW) and W − aλW (prodigyopt) is amplified by that
# cancellation (4e-9 after 30 steps at d0 = 1e-6); d0 = 1e-3 keeps the comparison at rounding level.
@pytest.mark.parametrize("hp", [
    {},
    {"use_bias_correction": True, "growth_rate": float("inf")},
    {"safeguard_warmup": True},
    {"weight_decay": 0.1, "d0": 1e-3},
    {"weight_decay": 0.1, "d0": 1e-3, "use_bias_correction": True, "safeguard_warmup": True},
    {"weight_decay": 0.05, "decouple": False, "use_bias_correction": True},
    {"betas": (0.0, 0.99)},
    {"betas": (0.8, 0.99), "beta3": 0.9, "d_coef": 0.5, "growth_rate": 1.5, "eps": 1e-6, "slice_p": 3},
])
def test_prodigy_equals_prodigyopt(hp):
    init = make_params()
    ref = run(lambda ps: Prodigy(ps, lr=1.0, **hp), init)
    got = run(lambda ps: modnorm.optimizer(ps, "prodigy", lr=1.0, **hp), init)
    assert_close(got, ref, 1e-12)
    assert _max_diff(ref, init) > 1e-3  # the trajectories moved


def test_prodigy_maximize_equals_prodigyopt_on_the_negated_loss():
    init = make_params()
    ref = run(lambda ps: Prodigy(ps, lr=0.5), init)
    got = run(lambda ps: modnorm.optimizer(ps, "prodigy", lr=0.5, maximize=True), init, negate=True)
    assert_close(got, ref, 1e-12)


def test_prodigy_param_groups_equal_prodigyopt():
    init = make_params()

    def groups(ps):  # one lr (prodigyopt's rule), per-group weight decay and eps
        return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "eps": 1e-6}]

    ref = run(lambda ps: Prodigy(groups(ps), lr=0.7, d0=1e-3), init)
    got = run(lambda ps: modnorm.optimizer(groups(ps), "prodigy", lr=0.7, d0=1e-3), init)
    assert_close(got, ref, 1e-12)


def test_group_with_lr_zero_stays_and_does_not_enter_d():
    init = make_params()
    alone = run(lambda ps: modnorm.optimizer(ps[:3], "prodigy", lr=1.0), init)
    both = run(lambda ps: modnorm.optimizer([{"params": ps[:3]}, {"params": ps[3:], "lr": 0.0}], "prodigy", lr=1.0), init)
    assert all(torch.equal(a, b) for a, b in zip(alone[:3], both[:3]))
    assert all(torch.equal(a, b) for a, b in zip(both[3:], init[3:]))


def _train(opt, params, targets, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(params, targets).backward()
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_resumes_bitwise(dtype):
    init, targets = make_params(dtype), make_params(dtype, seed=1)
    a = [p.clone().requires_grad_() for p in init]
    opt_a = modnorm.optimizer(a, "prodigy", lr=1.0, weight_decay=0.01, use_bias_correction=True)
    _train(opt_a, a, targets, 20)
    b = [p.clone().requires_grad_() for p in init]
    opt_b = modnorm.optimizer(b, "prodigy", lr=1.0, weight_decay=0.01, use_bias_correction=True)
    _train(opt_b, b, targets, 8)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in b], "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c = [p.clone().requires_grad_() for p in saved["params"]]
    opt_c = modnorm.optimizer(c, "prodigy", lr=1.0, weight_decay=0.01, use_bias_correction=True)
    opt_c.load_state_dict(saved["opt"])
    assert opt_c.state[c[0]]["prodigy_d"].dtype == torch.float64
    _train(opt_c, c, targets, 12)
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    assert float(opt_c.state[c[0]]["prodigy_d"]) > 1e-6  # D moved away from d0


def test_refused_step_changes_nothing():
    params = [p.clone().requires_grad_() for p in make_params()]
    targets = make_params(seed=1)
    opt = modnorm.optimizer(params, "prodigy", lr=1.0)
    _train(opt, params, targets, 5)
    snap = snapshot(opt, params)
    opt.zero_grad()
    loss_fn(params, targets).backward()
    params[2].grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite gradient"):
        opt.step()
    assert unchanged(opt, params, snap)
    skip = modnorm.optimizer(params, "prodigy", lr=1.0, nonfinite="skip")
    skip.load_state_dict(opt.state_dict())
    snap = snapshot(skip, params)
    skip.step()
    assert unchanged(skip, params, snap) and skip.skipped_steps == 1


def test_d_is_read_from_the_newest_state():
    # a parameter without a gradient for some steps keeps an old D: the step takes the newest one
    init, targets = make_params(), make_params(seed=1)
    params = [p.clone().requires_grad_() for p in init]
    opt = modnorm.optimizer(params, "prodigy", lr=1.0)
    ref_params = [p.clone().requires_grad_() for p in init]
    ref_opt = Prodigy(ref_params, lr=1.0)
    for t in range(12):
        for ps, o in ((params, opt), (ref_params, ref_opt)):
            o.zero_grad()
            loss_fn(ps, targets).backward()
            if 3 <= t < 6:
                ps[0].grad = None
            o.step()
    assert_close(params, ref_params, 1e-12)
    assert float(opt.state[params[0]]["prodigy_d"]) == pytest.approx(ref_opt.param_groups[0]["d"], rel=1e-12)


@pytest.mark.parametrize("hp, field", [
    ({"d0": 0.0}, "d0"),
    ({"d_coef": -1.0}, "d_coef"),
    ({"growth_rate": 0.5}, "growth_rate"),
    ({"growth_rate": float("nan")}, "growth_rate"),
    ({"slice_p": 0}, "slice_p"),
    ({"beta3": 1.0}, "beta3"),
    ({"betas": (1.0, 0.999)}, "betas"),
    ({"eps": -1e-8}, "eps"),
    ({"step_size": "polyak"}, "step_size"),
    ({"fsdp_in_use": True}, "fsdp_in_use"),
])
def test_bad_hyperparameters_are_named(hp, field):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ConfigError, match=field):
        modnorm.optimizer([p], "prodigy", **hp)


def test_groups_must_agree_on_the_d_settings():
    ps = [torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)]
    opt = modnorm.optimizer([{"params": ps[:1]}, {"params": ps[1:], "d0": 1e-3}], "prodigy")
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(ConfigError, match="disagree on the step-size stage.*d0"):
        opt.step()
    assert not opt.state and all(torch.equal(p, torch.ones_like(p)) for p in ps)


def _prodigy_muon_reference(W, targets, lr, b1, b2, d0, steps):
    """Prodigy's D written out here, on a spectral direction: m ← β1 m + (1−β1)·D·g,
    W ← W − lr·D·U Vᵀ (U, V from the SVD of m), float64."""
    b3 = b2**0.5
    d, d_max, num = d0, d0, 0.0
    x0 = W.clone()
    s, m = torch.zeros_like(W), torch.zeros_like(W)
    for _ in range(steps):
        w = W.clone().requires_grad_()
        g = torch.autograd.grad(loss_fn([w], targets), w)[0]
        delta = (d / d0) * d * lr
        num = b3 * num + delta * float((g * (x0 - W)).sum())
        s = b3 * s + delta * g
        d_max = max(d_max, num / float(s.abs().sum()))
        d_new = d_max  # growth_rate = inf: D = min(D_max, ∞·D)
        m = b1 * m + (1 - b1) * d * g
        P, _, Qh = torch.linalg.svd(m, full_matrices=False)
        W = W - lr * d * (P @ Qh)
        d = d_new
    return W


def test_the_d_stage_composes_with_a_spectral_direction():
    from modnorm.optim import PRESETS, Recipe, UpdateRule, register_preset

    def recipe(h):
        return Recipe(default=UpdateRule(norm="spectral", scale="none", ns_method="svd", momentum="ema", beta=h.betas[0], mode="lmo"))

    with PRESETS.scoped():
        register_preset("test_prodigy_spectral", PRESETS["prodigy"].hyperparameters, recipe)
        (W,), (T,) = make_params(shapes=[(6, 4)]), make_params(shapes=[(6, 4)], seed=1)
        ref = _prodigy_muon_reference(W, [T], 0.5, 0.9, 0.99, 1e-3, 25)
        got = run(lambda ps: modnorm.optimizer(ps, "test_prodigy_spectral", lr=0.5, betas=(0.9, 0.99), d0=1e-3), [W], steps=25)
        assert (got[0] - ref).abs().max().item() < 1e-10
        assert (ref - W).abs().max().item() > 1e-2
