"""Newton–Schulz inputs narrowed by the caller (``narrow_into``, ``Norm.step_input``) and scratch
buffers (``overwrite``, ``iterate_batched(scratch=True)``, ``DNorm.lmo_step``): the same bits as
the plain calls, and torch.optim.Muon's routine on a bf16 input."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from modnorm import DNorm, Frobenius, Spectral, orthogonalize
from modnorm.optim.recipe import _CoefficientSpectral
from modnorm.polar import narrow_into
from modnorm.polar_products import iterate_batched

TORCH_MUON = ((3.4445, -4.775, 2.0315),)


def _narrowed(X: torch.Tensor) -> torch.Tensor:
    return narrow_into(torch.empty(X.shape, dtype=torch.bfloat16), X)


@settings(max_examples=25, deadline=None)
@given(exponents=st.lists(st.integers(-30, 30), min_size=1, max_size=4), m=st.integers(2, 12), n=st.integers(2, 12),
       seed=st.integers(0, 2**16))
def test_a_float32_batch_and_its_narrowed_cast_give_the_same_bits(exponents, m, n, seed):
    """Law: orthogonalize(narrow_into(X)) == orthogonalize(X) in bf16, per matrix at any scale
    (matrices inside and outside the plain-cast range mixed in one batch)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(len(exponents), m, n, generator=g) * torch.tensor([10.0**e for e in exponents]).view(-1, 1, 1)
    want = orthogonalize(X, dtype=torch.bfloat16, narrow=True)
    got = orthogonalize(_narrowed(X), dtype=torch.bfloat16, narrow=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    rows = torch.empty(X.shape, dtype=torch.bfloat16)
    for i in range(len(exponents)):  # one matrix at a time, as an optimizer stacks its direction
        narrow_into(rows[i], X[i])
    assert torch.equal(rows, _narrowed(X))


@pytest.mark.parametrize("shape", [(16, 16), (24, 8), (8, 24)])
def test_bf16_input_matches_torch_muon_routine(shape):
    """A bf16 matrix: the same bits as torch.optim.Muon's Newton–Schulz (bf16 norm, 5 steps)."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    G = torch.randn(*shape, generator=torch.Generator().manual_seed(7)).bfloat16()
    want = _zeropower_via_newtonschulz(G, TORCH_MUON[0], 5, 1e-7)
    got = orthogonalize(G, coefficients=TORCH_MUON, steps=5, dtype=torch.bfloat16, eps=1e-7)
    assert torch.equal(got, want)


def test_huge_bf16_input_falls_back_to_the_scaled_norm():
    """Squares that overflow float32 (entries ~1e30): the scaled norm, not inf; result unchanged by the scale."""
    G = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(8))
    small = orthogonalize(G.bfloat16(), dtype=torch.bfloat16)
    big = orthogonalize((G * 2.0**100).bfloat16(), dtype=torch.bfloat16)
    assert big.isfinite().all() and (big.float() - small.float()).abs().max() < 0.05  # the same matrix up to 2^100


@pytest.mark.parametrize("shape", [(3, 8, 20), (3, 20, 8), (2, 12, 12)])
def test_scratch_iteration_and_overwrite_give_the_same_bits(shape):
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(9))
    Y = (X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)).bfloat16()
    Y = Y.mT if shape[1] > shape[2] else Y  # the short side first, as the iteration runs (a transposed view)
    want = iterate_batched(Y, [(3.0, -3.0, 1.0)] * 4)
    assert torch.equal(iterate_batched(Y.clone(), [(3.0, -3.0, 1.0)] * 4, scratch=True), want)
    plain = orthogonalize(X.bfloat16(), dtype=torch.bfloat16)
    scratch = X.bfloat16()
    assert torch.equal(orthogonalize(scratch, dtype=torch.bfloat16, overwrite=True), plain)


def test_spectral_step_input():
    like = torch.zeros(8, 4)
    assert Spectral(scale="none", dtype=torch.bfloat16).step_input(like) == (torch.bfloat16, narrow_into)
    assert _CoefficientSpectral(TORCH_MUON, scale="none", steps=5, dtype=torch.bfloat16).step_input(like) is not None
    assert Spectral(scale="rms", dtype=torch.bfloat16).step_input(like) is None  # lmo_step returns float32 there
    assert Spectral(scale="none", dtype=torch.float32).step_input(like) is None
    assert Spectral(scale="none", method="svd").step_input(like) is None
    assert Spectral(scale="none", dtype=torch.float16).step_input(like) is None  # a smaller range: prescaled, not a cast
    assert Frobenius().step_input(like) is None


@pytest.mark.parametrize("base", [Spectral(scale="rms", dtype=torch.bfloat16), Spectral(scale="none", dtype=torch.bfloat16),
                                  Spectral(scale="rms", dtype=torch.float32), Frobenius()])
def test_dnorm_lmo_step_equals_lmo(base):
    """``DNorm.lmo_step`` (division in place in its scratch input and in the base's result) gives
    ``lmo``'s bits, as float32, and is D⁻¹ ⊙ base.lmo(D⁻¹ ⊙ G) written out here."""
    g = torch.Generator().manual_seed(10)
    G = torch.randn(3, 12, 8, generator=g)
    D = torch.rand(3, 12, 8, generator=g) + 0.5
    norm = DNorm(base, D, positive=True)
    want = norm.lmo(G)
    assert torch.equal(want, base.lmo(G / D) / D)
    step = norm.lmo_step(G.clone())
    assert step.dtype == torch.float32 and torch.equal(step, want)
    assert torch.equal(DNorm(base, D).lmo_step(G.clone()), DNorm(base, D).lmo(G))  # D > 0 not promised: lmo itself
