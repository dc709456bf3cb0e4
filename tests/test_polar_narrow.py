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


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 12), n=st.integers(2, 12), count=st.integers(1, 3), exponent=st.integers(-20, 20),
       scale=st.sampled_from(["rms", "none", "original", 3.0]), seed=st.integers(0, 2**16))
def test_lmo_parts_rebuild_lmo_step_bit_for_bit_and_release_the_input(m, n, count, exponent, scale, seed):
    """Law: (O, s) = lmo_parts(G) gives lmo_step(G) as O upcast · s (× 1 skipped), and G is released;
    with a positive D, ((O upcast · s) ⊘ D) of lmo_parts(D⁻¹ ⊙ G) is DNorm's lmo_step, which itself
    equals the plain ``lmo``."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(count, m, n, generator=g) * 10.0**exponent
    D = torch.rand(count, m, n, generator=g) + 0.1
    norm = Spectral(scale=scale, dtype=torch.bfloat16)
    assert norm.lmo_parts_dtype(G) == torch.bfloat16
    scratch = G.clone()
    O, s = norm.lmo_parts(scratch)
    assert O.dtype == torch.bfloat16 and scratch.numel() == 0  # released
    rebuilt = O.to(G.dtype)
    if s != 1.0:
        rebuilt.mul_(s)
    want = norm.lmo_step(G.clone())
    assert torch.equal(rebuilt, want.to(G.dtype))
    O, s = norm.lmo_parts(G.clone().div_(D))
    rebuilt = O.to(G.dtype)
    if s != 1.0:
        rebuilt.mul_(s)
    via_dnorm = DNorm(norm, D, positive=True).lmo_step(G.clone())
    assert torch.equal(rebuilt.div_(D), via_dnorm.to(G.dtype))
    assert torch.equal(via_dnorm.to(G.dtype), DNorm(norm, D, positive=True).lmo(G))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 12), n=st.integers(2, 12), count=st.integers(1, 3), exponent=st.integers(-30, 30),
       scale=st.sampled_from(["rms", "none", "original", 3.0]), seed=st.integers(0, 2**16))
def test_lmo_parts_of_the_input_narrowed_a_matrix_at_a_time_are_the_same_bits(m, n, count, exponent, scale, seed):
    """Law: with (dtype, cast) = parts_input(like), a batch cast a matrix at a time into that dtype gives
    lmo_parts bit for bit those of the float32 batch (at any scale; tiny and huge matrices included)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(count, m, n, generator=g) * 10.0**exponent
    norm = Spectral(scale=scale, dtype=torch.bfloat16)
    dtype, cast = norm.parts_input(G[0])
    X = torch.empty(G.shape, dtype=dtype)
    for i in range(count):
        cast(X[i], G[i])
    O, s = norm.lmo_parts(X)
    O_ref, s_ref = norm.lmo_parts(G.clone())
    assert s == s_ref and torch.equal(O, O_ref)


def test_lmo_parts_is_offered_only_for_a_narrower_polar():
    G = torch.randn(2, 6, 4)
    assert Spectral(dtype=torch.float32).lmo_parts_dtype(G) is None and Spectral(dtype=torch.float32).lmo_parts(G) is None
    assert Spectral(method="svd").lmo_parts_dtype(G) is None
    assert Spectral(dtype=torch.bfloat16).lmo_parts_dtype(G.double()) is None  # bf16 has not float64's range
    assert Frobenius().lmo_parts(G) is None and torch.equal(G, G)  # the default: nothing, G untouched
    assert Frobenius().parts_input(G[0]) is None and Spectral(dtype=torch.float32).parts_input(G[0]) is None
    assert Spectral(dtype=torch.float32).lmo_parts(G.bfloat16()) is None  # bf16 is not what a float32 polar narrows to
    assert G.numel() == 48


def test_orthogonalize_release_frees_the_input_and_changes_no_value():
    X = torch.randn(3, 8, 5)
    want = orthogonalize(X, dtype=torch.bfloat16, narrow=True)
    Y = X.clone()
    got = orthogonalize(Y, dtype=torch.bfloat16, narrow=True, overwrite=True, release=True)
    assert torch.equal(got, want) and Y.numel() == 0
    Z = X.clone()  # the iteration in X's own dtype works in X itself: nothing to release
    assert torch.equal(orthogonalize(Z, dtype=torch.float32, overwrite=True, release=True), orthogonalize(X, dtype=torch.float32))
    assert Z.shape == X.shape
