"""Preconditioned LMOs where D has zeros: dead units with ε = 0 must not blow up the weights."""

import pytest
import torch
from torch import nn

import modnorm


# SANIA's step scales like 1/|g| per entry at ε = 0 (its scale invariance), so it takes a smaller lr.
@pytest.mark.parametrize(("preset", "lr"), [("muadam", 1e-2), ("muadam_sania", 1e-5)])
@pytest.mark.parametrize("method", ["svd", "polar_express"])
def test_dead_relu_units_with_eps_zero_stay_finite(preset: str, lr: float, method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    with torch.no_grad():
        model[0].bias[:16].fill_(-50.0)  # half of the first hidden units never fire: zero gradient rows and columns
    opt = modnorm.optimizer(model, preset, lr=lr, eps=0.0, adamw_eps=0.0, ns_method=method)
    x, y = torch.randn(64, 10, dtype=torch.float64), torch.randint(0, 3, (64,))
    dead_in = model[2].weight[:, :16].detach().clone()
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert p.abs().max() < 100, name
    # Weights reading from dead units get zero gradient, hence D = 0 and no update at all.
    torch.testing.assert_close(model[2].weight[:, :16], dead_in, rtol=0, atol=0)
    # At ε = 0 the first step has D = |g|, so tiny gradient entries get large steps; descent is
    # asserted from the second step on.
    assert losses[-1] < losses[1]
