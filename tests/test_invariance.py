"""Theorem 2, numerically: invariant where predicted (round-off), clearly not invariant where not."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from modnorm.invariance import check_invariance, predicted_invariance

F64 = "float64"
ROUNDOFF = 1e-8  # float64 runs of 30 steps; an invariant method measures 1e-15 … 1e-10
BROKEN = 1e-3  # a method that is not invariant is off by far more


@lru_cache(maxsize=None)
def scale_report(preset: str, eps: float):
    """30-step scale checks shared by several tests (each costs two optimizer runs)."""
    return check_invariance(preset, "scale", eps=eps, ns_method="svd")


def test_muadam_sania_eps0_is_scale_invariant() -> None:
    r = scale_report("muadam_sania", 0.0)
    assert r.predicted is True
    assert r.mismatch < 1e-11, r


def test_muadam_is_not_scale_invariant() -> None:
    r = scale_report("muadam", 0.0)
    assert r.predicted is False
    assert 1e-2 < r.mismatch, r


def test_muadam_sania_eps_1e8_is_only_approximately_invariant() -> None:
    """ε = 1e-8 sits between round-off and MuAdam: the mismatch comes from entries with V̂ ≲ ε."""
    exact, approx, muadam = scale_report("muadam_sania", 0.0), scale_report("muadam_sania", 1e-8), scale_report("muadam", 0.0)
    assert approx.predicted is False
    assert 1e6 * exact.mismatch < approx.mismatch < muadam.mismatch


@pytest.mark.parametrize("side", ["left", "right"])
def test_one_sided_shampoo_power1_is_affine_invariant_on_its_side(side: str) -> None:
    hp = dict(power=1.0, eps=0.0, sides=side, root_dtype=F64)
    r = check_invariance("shampoo_one_sided", "affine", reparam_sides=side, steps=15, **hp)
    assert r.predicted is True and r.mismatch < ROUNDOFF, r
    other = "right" if side == "left" else "left"
    r = check_invariance("shampoo_one_sided", "affine", reparam_sides=other, steps=10, **hp)
    assert r.predicted is False and r.mismatch > BROKEN, r


@pytest.mark.parametrize(
    ("preset", "hp", "sides"),
    [
        ("shampoo_one_sided", dict(power=0.5, eps=0.0, root_dtype=F64), "left"),  # the usual A^{-1/2} G
        ("shampoo", dict(eps=0.0, root_dtype=F64), "both"),  # A^{-1/4} G B^{-1/4}
        ("shampoo", dict(eps=0.0, power=0.5, root_dtype=F64), "left"),
        ("kl_shampoo", dict(eps=0.0, power=1.0, root_dtype=F64), "both"),
        ("soap", dict(weight_decay=0.0, root_dtype=F64), "both"),
        ("splus", dict(precondition_frequency=1, root_dtype=F64), "both"),
        ("muadam_sania", dict(eps=0.0, ns_method="svd"), "both"),
        ("muon", dict(), "both"),
    ],
)
def test_not_predicted_affine_invariant_and_not(preset: str, hp: dict, sides: str) -> None:
    r = check_invariance(preset, "affine", reparam_sides=sides, steps=10, **hp)
    assert r.predicted is False
    assert r.mismatch > BROKEN, r


def test_regularized_shampoo_is_only_approximately_affine_invariant() -> None:
    r = check_invariance("shampoo_one_sided", "affine", reparam_sides="left", steps=15, power=1.0, eps=1e-8, root_dtype=F64)
    assert r.predicted is False
    assert ROUNDOFF / 100 < r.mismatch < BROKEN, r


def test_callable_preset_and_prediction_table() -> None:
    r = check_invariance(lambda ps: torch.optim.SGD(ps, lr=1e-2), "affine", steps=10)
    assert r.predicted is None and r.mismatch > BROKEN  # plain gradient descent is not affine invariant
    assert predicted_invariance("adam_sania", "scale", eps=0.0)[0] is True
    assert predicted_invariance("adamw", "scale", eps=0.0)[0] is False
    assert predicted_invariance("sgd", "scale", weight_decay=0.1)[0] is False


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="kind"):
        check_invariance("muon", "rotate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        check_invariance("muon", steps=0)
    with pytest.raises(ValueError, match="reparam_sides"):
        check_invariance("muon", "affine", reparam_sides="top")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown preset"):
        check_invariance("no_such_preset")
