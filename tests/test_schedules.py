"""LR schedules: lr after each step against closed forms written here, and against torch's own schedulers."""

from __future__ import annotations

import math

import pytest
import torch

import modnorm
from modnorm.demo.training import cosine_factor
from modnorm.optim.schedules import WSD, LinearCooldown, RefreshSpike


def lrs(make, steps, lr=0.1, **opt_hp):
    p = torch.zeros(3, 3, requires_grad=True)
    opt = modnorm.optimizer([p], opt_hp.pop("preset", "sgd"), lr=lr, **opt_hp)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])  # the lr this step uses
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return out


def test_wsd_closed_form():
    got = lrs(lambda o: WSD(o, total_steps=20, warmup_steps=4, decay_steps=5), 24)
    ref = [0.1 * (t + 1) / 4 if t < 4 else 0.1 if t < 15 else 0.1 * max(0.0, 1 - (t - 15) / 5) for t in range(24)]
    assert got == pytest.approx(ref, abs=1e-15)


def test_wsd_cosine_and_sqrt_shapes_end_at_min_ratio():
    for shape, f in (("cosine", lambda x: 0.5 * (1 + math.cos(math.pi * x))), ("sqrt", lambda x: 1 - math.sqrt(x))):
        got = lrs(lambda o: WSD(o, total_steps=10, decay_steps=4, shape=shape, min_ratio=0.1), 12)
        ref = [0.1 if t < 6 else 0.1 * (0.1 + 0.9 * f(min(1.0, (t - 6) / 4))) for t in range(12)]
        assert got == pytest.approx(ref, abs=1e-15)


def test_linear_cooldown_equals_torch_sequential():
    p = torch.zeros(2, requires_grad=True)
    ref_opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.SequentialLR(ref_opt, [
        torch.optim.lr_scheduler.ConstantLR(ref_opt, factor=1.0, total_iters=0),
        torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=1.0, end_factor=0.0, total_iters=6)], milestones=[5])
    ref_lrs = []
    for _ in range(14):
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs(lambda o: LinearCooldown(o, start=5, steps=6), 14) == pytest.approx(ref_lrs, abs=1e-15)


def test_refresh_spike_hits_the_refresh_steps_of_soap():
    got = lrs(lambda o: RefreshSpike(o, spike=3.0, duration=2, base=lambda t: cosine_factor(t, 30)), 30,
              preset="soap", precondition_frequency=10)
    ref = [0.1 * cosine_factor(t, 30) * (3.0 if t % 10 < 2 else 1.0) for t in range(30)]
    assert got == pytest.approx(ref, abs=1e-15)


def test_bad_arguments():
    p = torch.zeros(2, 2, requires_grad=True)
    opt = modnorm.optimizer([p], "sgd", lr=0.1)
    with pytest.raises(ValueError, match="decay_steps"):
        WSD(opt, total_steps=10, warmup_steps=8, decay_steps=5)
    with pytest.raises(ValueError, match="every"):
        RefreshSpike(opt, spike=2.0)
    with pytest.raises(ValueError, match="shape"):
        WSD(opt, total_steps=10, shape="exp")
