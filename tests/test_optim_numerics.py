"""Numerical edge cases: float16 Newton–Schulz at any gradient scale, parameters on the
meta device, the skipped-step count in the state dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.polar import orthogonalize


@pytest.mark.parametrize("scale", [1e6, 1e5, 1e-6, 1e-9])
def test_float16_newton_schulz_is_scale_free(scale):
    """The polar factor does not depend on the scale of X: float16 iterations give float32's
    result (to float16 accuracy) even where X itself overflows or flushes to 0 in float16."""
    torch.manual_seed(0)
    X = torch.randn(3, 64, 32, dtype=torch.float64)
    ref = orthogonalize(X, dtype=torch.float64)
    got = orthogonalize((X * scale).float(), dtype=torch.float16)
    assert got.dtype == torch.float32 and got.isfinite().all()
    assert (got.double() - ref).abs().max() < 2e-3


@pytest.mark.parametrize("scale", [1e5, 1e-6])
def test_muon_float16_newton_schulz_steps_at_any_gradient_scale(scale):
    torch.manual_seed(0)
    w = torch.randn(16, 8, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    opt = modnorm.optimizer([w], "muon", ns_dtype="float16", lr=0.1)
    ref_opt = modnorm.optimizer([ref], "muon", ns_dtype="float32", lr=0.1)
    for _ in range(3):
        g = torch.randn(16, 8) * scale
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    assert torch.allclose(w, ref, atol=1e-3)


@pytest.mark.parametrize("preset", ["adamw", "muon", "shampoo"])
def test_meta_parameters_step(preset):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    opt = modnorm.optimizer(model, preset)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(int(s["step"]) == 1 for s in opt.state.values())


def test_skipped_steps_travel_with_the_state_dict():
    w = torch.randn(4, 3, requires_grad=True)
    opt = modnorm.optimizer([w], "adamw", nonfinite="skip")
    w.grad = torch.full((4, 3), float("nan"))
    opt.step()
    opt.step()
    opt2 = modnorm.optimizer([w], "adamw", nonfinite="skip")
    opt2.load_state_dict(opt.state_dict())
    assert opt.skipped_steps == opt2.skipped_steps == 2
