"""The pipeline's stage functions (optim/stages.py) against their formulas in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modnorm.norms import Frobenius, Sign
from modnorm.optim.stages import (budget_stage, decay_factor, direction_stage, entrywise_alpha, momentum_stage, oriented_gradients, rule_lr,
                                  with_coupled_decay)
from modnorm.optim.update import RuleSpec, update_bucket

F64 = torch.float64
positive = st.floats(0.0, 10.0, allow_nan=False)


def _spec(**kw) -> RuleSpec:
    base = dict(momentum="adam_ema", beta=0.9, dampening=0.0, mode="sharp", weight_decay=0.0, coupled=False, lr_ratio=1.0, lr_decay=0.0)
    return RuleSpec(**{**base, **kw})


def test_every_stage_and_the_bucket_take_keywords_only():
    g = [torch.ones(2, dtype=F64)]
    with pytest.raises(TypeError):
        oriented_gradients(g, True, F64)  # type: ignore[misc]
    with pytest.raises(TypeError):
        rule_lr(0.1, 1.0, 0.0, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        update_bucket(_spec(), Frobenius(), None)  # type: ignore[misc]


def test_gradient_stages_orient_cast_and_add_coupled_decay():
    g32, w = [torch.tensor([1.0, -2.0])], [torch.tensor([3.0, 4.0], dtype=F64)]
    g = oriented_gradients(g32, maximize=True, state_dtype=F64)
    assert g[0].dtype == F64 and torch.equal(g[0], torch.tensor([-1.0, 2.0], dtype=F64))
    assert torch.equal(with_coupled_decay(g, views=w, weight_decay=0.5, state_dtype=F64)[0], torch.tensor([0.5, 4.0], dtype=F64))
    assert with_coupled_decay(g, views=w, weight_decay=0.0, state_dtype=F64) is g


def test_momentum_stage_is_adams_first_moment_and_its_correction():
    states = [{"exp_avg": torch.zeros(3, dtype=F64)}]
    gs = [torch.randn(3, dtype=F64) for _ in range(3)]
    for t, g in enumerate(gs, 1):
        d, c = momentum_stage(_spec(), states=states, grads=[g], step=t)
    m = sum(0.1 * 0.9 ** (3 - k) * gs[k - 1] for k in (1, 2, 3))
    torch.testing.assert_close(d[0], m, rtol=1e-14, atol=0)
    assert c == pytest.approx(1 / (1 - 0.9**3), rel=1e-15)
    assert momentum_stage(_spec(momentum_on="update"), states=states, grads=gs[:1], step=4) == (gs[:1], 1.0)


def test_direction_stage_scales_a_copy_and_applies_the_norm():
    d = [torch.tensor([[1.0, -2.0]], dtype=F64), torch.tensor([[0.5, 0.0]], dtype=F64)]
    X, U = direction_stage(Frobenius(ndim=2), d=d, c=2.0, mode="sharp")
    torch.testing.assert_close(U, 2 * torch.stack(d))  # Frobenius sharp is the identity
    assert torch.equal(d[0], torch.tensor([[1.0, -2.0]], dtype=F64))  # the buffers stay untouched
    X, U = direction_stage(Sign(ndim=2), d=d, c=2.0, mode="lmo", correct=False)
    torch.testing.assert_close(X, torch.stack(d))
    torch.testing.assert_close(U, torch.sign(torch.stack(d)))  # lmo of the sign norm, without c


@given(positive, positive, positive, st.integers(1, 1000))
def test_rule_lr_is_adagrads_decayed_ratio(lr, ratio, decay, t):
    assert rule_lr(lr, lr_ratio=ratio, lr_decay=decay, step=t) == pytest.approx(lr * ratio / (1 + (t - 1) * decay), rel=1e-12, abs=1e-300)


@given(st.lists(positive, min_size=1, max_size=4), positive, positive)
def test_budget_and_decay_stages_give_each_parameter_its_own_factor(scales, lr, wd):
    U = torch.randn(len(scales), 3, dtype=F64)
    U2, alpha = budget_stage(U, lr=lr, step_scales=scales)
    for i, s in enumerate(scales):
        torch.testing.assert_close(alpha * U2[i], -lr * s * U[i], rtol=1e-12, atol=1e-300)
    alphas = entrywise_alpha(lr=lr, c=2.0, step_scales=scales)
    for i, s in enumerate(scales):
        assert (alphas if isinstance(alphas, float) else alphas[i]) == pytest.approx(-lr * 2.0 * s, rel=1e-12, abs=1e-300)
    decays = decay_factor(lr=lr, weight_decay=wd, decay_budgets=scales)
    for i, b in enumerate(scales):
        assert (decays if isinstance(decays, float) else decays[i]) == pytest.approx(1 - lr * b * wd, rel=1e-12, abs=1e-12)
    assert decay_factor(lr=lr, weight_decay=wd, decay_budgets=None) == pytest.approx(1 - lr * wd, rel=1e-12, abs=1e-12)
