"""A step is all-or-nothing: it commits finite parameters and state, or changes nothing.

Regressions: a huge finite gradient no longer poisons the state for ever; a step that fails
in a later bucket leaves earlier buckets untouched; 0-size parameters; an ε that vanishes
in the state dtype is refused when the optimizer is built."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modnorm
from modnorm.optim import PRECONDITIONERS, PRESETS, Preconditioner, Recipe, UpdateRule, register_preconditioner
from modnorm.optim.config import ConfigError
from state_snapshot import snapshot, tiny_mlp, unchanged

PRESET_NAMES = sorted(p for p in PRESETS if not p.startswith("sophia"))
MATRIX_PRESETS = ["muon", "polargrad", "scion", "muadam", "muadam_sania", "shampoo", "shampoo_one_sided", "kl_shampoo", "soap", "splus"]


def all_finite(opt, params):
    tensors = list(params) + [v for p in params for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor)]
    return all(bool(t.isfinite().all()) for t in tensors)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_a_huge_finite_gradient_is_refused_and_training_goes_on(preset):
    """1e30 gradients overflow Adam's V (and Shampoo's factors): the step is refused with
    nothing changed, and the next ordinary step moves every parameter with finite state."""
    model, loss = tiny_mlp()
    opt = modnorm.optimizer(model, preset)
    params = list(model.parameters())
    loss().backward()
    opt.step()
    opt.zero_grad()
    loss().backward()
    for p in params:
        p.grad.mul_(1e30)
    snap = snapshot(opt, params)
    try:
        opt.step()
    except FloatingPointError as e:
        assert "nothing was updated" in str(e)
        assert unchanged(opt, params, snap)
    else:  # presets whose state holds no squares (sgd, signsgd, scion) take the step: finite
        assert all_finite(opt, params)
        return
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss().backward()
    opt.step()
    assert all_finite(opt, params)
    assert all(not torch.equal(p, b) for p, b in zip(params, before)), "a parameter stopped moving"


def test_huge_gradient_skip_counts_and_keeps_state():
    model, loss = tiny_mlp()
    opt = modnorm.optimizer(model, "adamw", nonfinite="skip")
    params = list(model.parameters())
    loss().backward()
    opt.step()
    loss().backward()
    model[0].weight.grad.fill_(1e30)
    snap = snapshot(opt, params)
    opt.step()
    assert opt.skipped_steps == 1 and unchanged(opt, params, snap)


class _FailsOnSecond(Preconditioner):
    """Raises in update_many (after earlier buckets were computed)."""

    name = "fails"

    def update_many(self, states, grads, step, ctx):
        raise RuntimeError("this preconditioner always fails")

    def norm(self, base, states, step):
        return base


def test_a_failure_in_a_later_bucket_leaves_earlier_buckets_untouched():
    with PRECONDITIONERS.scoped():
        register_preconditioner("fails_test", _FailsOnSecond)
        torch.manual_seed(0)
        a, b = torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)
        recipe = Recipe(default=UpdateRule(norm="frobenius", preconditioner="adam", momentum="adam_ema", beta=0.9, mode="sharp"),
                        roles={"vector": UpdateRule(norm="frobenius", preconditioner="fails_test", mode="sharp")})
        opt = modnorm.optimizer([("a", a), ("b", b)], recipe, lr=0.1)
        (a.sum() + b.sum()).backward()
        snap = snapshot(opt, [a, b])
        with pytest.raises(RuntimeError, match="always fails"):
            opt.step()
        assert unchanged(opt, [a, b], snap) and len(opt.state) == 0


@pytest.mark.parametrize("preset", ["adamw", "muon", "soap", "shampoo", "muadam"])
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0,)])
def test_zero_size_parameters_next_to_ordinary_ones(preset, shape):
    torch.manual_seed(0)
    empty, w = torch.zeros(*shape, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    opt = modnorm.optimizer([("empty", empty), ("w", w)], preset, lr=0.1)
    alone = modnorm.optimizer([("w", ref)], preset, lr=0.1)
    for _ in range(2):
        for o, params in ((opt, [empty, w]), (alone, [ref])):
            o.zero_grad()
            sum(p.sin().sum() for p in params).backward()
            o.step()
    assert torch.equal(w, ref)  # the empty parameter changes nothing for the others
    assert empty not in opt.state and empty.shape == shape


def test_eps_that_vanishes_in_the_state_dtype_is_refused_at_construction():
    w = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ConfigError, match=r"eps=1e-08 is too small for the dtype torch.float16.*eps ≥ 6.1e-05"):
        modnorm.optimizer([w], "adamw", state_dtype="float16")
    with pytest.raises(ConfigError, match="eps=1e-50 is too small for the dtype torch.float32"):
        modnorm.optimizer([w], "adamw", eps=1e-50, lr=0.0)
    with pytest.raises(ConfigError, match="eps=1e-30"):  # (A + εI)^-p with p = 2 reaches 1e120
        modnorm.optimizer([w], "shampoo", eps=1e-30, power=2.0)
    opt = modnorm.optimizer([w], "adamw", state_dtype="float16", eps=1e-4)  # representable: a zero row stays put
    w.grad = torch.zeros(4, 3)
    w.grad[0] = 1.0
    before = w.detach().clone()
    opt.step()
    assert w.isfinite().all() and torch.equal(w[1:], before[1:] * (1 - 1e-3 * 1e-2))


@pytest.mark.parametrize("preset", MATRIX_PRESETS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exponents=st.lists(st.integers(-30, 30), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_property_a_step_commits_finite_values_or_changes_nothing(preset, exponents, seed):
    """For finite gradients of any size 1e-30…1e30: every step either leaves parameters
    and state finite, or raises FloatingPointError with nothing changed."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(5, 4, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)
    opt = modnorm.optimizer([("w", w), ("b", b)], preset, lr=0.1)
    for e in exponents:
        w.grad = torch.randn(5, 4, generator=g) * 10.0**e
        b.grad = torch.randn(5, generator=g) * 10.0**e
        w.grad[0] = 0.0  # a zero row: 0/0 traps
        snap = snapshot(opt, [w, b])
        try:
            opt.step()
        except FloatingPointError:
            assert unchanged(opt, [w, b], snap)
        else:
            assert all_finite(opt, [w, b])


def test_step_check_benchmark_runs(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import step_check

    monkeypatch.setattr(sys, "argv", ["step_check.py", "--quick", "--out", str(tmp_path)])
    step_check.main()
    import json

    results = json.loads((tmp_path / "step_check.json").read_text())["results"]
    for name in ("modnorm.adamw", "modnorm.muon(ns float32)"):
        assert results[name]["step_ms"] > 0 and 0 < results[name]["check_fraction"] < 1
