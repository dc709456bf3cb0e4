"""Atoms of modnorm.norms: the laws (hypothesis, float64) and independent float64 references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from modnorm import RMS, ColNorm, Frobenius, RowNorm, Sign, Spectral, SpectralConv
from modnorm.norms import spectral_scale
from modnorm.testing import check_laws

ATOMS = {
    "frobenius": (Frobenius(), 2),
    "frobenius3": (Frobenius(ndim=3), 3),
    "spectral": (Spectral(method="svd"), 2),
    "spectral_original": (Spectral(scale="original", method="svd"), 2),
    "sign": (Sign(), 2),
    "colnorm": (ColNorm(), 2),
    "colnorm_embedding": (ColNorm(layout="embedding"), 2),
    "rownorm": (RowNorm(), 2),
    "rownorm_embedding": (RowNorm(layout="embedding"), 2),
    "rms": (RMS(), 1),
    "spectral_conv": (SpectralConv(method="svd"), 4),
    "spectral_conv1d": (SpectralConv(kernel_dims=1, method="svd"), 3),
}

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


@st.composite
def gradients(draw: st.DrawFn, ndim: int) -> torch.Tensor:
    shape = draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim + 1))
    return torch.from_numpy(draw(arrays(np.float64, shape, elements=finite)))


@pytest.mark.parametrize("name", ATOMS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_laws_hold_for_every_atom(name: str, data: st.DataObject) -> None:
    norm, ndim = ATOMS[name]
    check_laws(norm, data.draw(gradients(ndim)), rtol=1e-9)


# --- independent references (numpy float64, written out here) -------------------------


def _np(G: torch.Tensor) -> np.ndarray:
    return G.detach().numpy().astype(np.float64)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SCALE_REFS = {
    "rms": lambda m, n: math.sqrt(m / n),
    "original": lambda m, n: math.sqrt(max(1.0, m / n)),
    "match_rms_adamw": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "none": lambda m, n: 1.0,
    2.5: lambda m, n: 2.5,
}


@pytest.mark.parametrize("scale", list(SCALE_REFS))
@pytest.mark.parametrize("shape", [(6, 6), (8, 3), (3, 8)])
def test_spectral_matches_svd_reference(scale: str | float, shape: tuple[int, int]) -> None:
    G = _rand(*shape, seed=1)
    U, S, Vt = np.linalg.svd(_np(G), full_matrices=False)
    s = SCALE_REFS[scale](*shape)
    norm = Spectral(scale=scale, method="svd")
    assert spectral_scale(scale, *shape) == pytest.approx(s, rel=1e-15)
    np.testing.assert_allclose(_np(norm.lmo(G)), s * U @ Vt, atol=1e-12)
    assert float(norm.dual(G)) == pytest.approx(s * S.sum(), rel=1e-12)
    assert float(norm.value(G)) == pytest.approx(S.max() / s, rel=1e-12)


def test_spectral_rank_deficient_lmo_is_partial_isometry() -> None:
    G = _rand(5, 1, seed=2) @ _rand(1, 4, seed=3)  # rank one
    u, v = _np(G)[:, :1], _np(G)[:1, :]
    ref = (u / np.linalg.norm(u)) @ (v / np.linalg.norm(v)) * np.sign(1.0)
    lmo = Spectral(scale="none", method="svd").lmo(G)
    np.testing.assert_allclose(_np(lmo), ref, atol=1e-12)


def test_spectral_newton_schulz_lmo_is_close_to_exact() -> None:
    G = _rand(4, 32, 16, seed=4)
    exact = Spectral(method="svd").lmo(G)
    approx = Spectral(method="polar_express").lmo(G)
    rel = torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact)
    assert float(rel.max()) < 1e-2


def test_sign_dual_by_vertex_enumeration() -> None:
    G = _rand(2, 3, seed=5)
    best = max(float((G * torch.tensor(s, dtype=G.dtype).reshape(2, 3)).sum()) for s in itertools.product((-1, 1), repeat=6))
    assert float(Sign().dual(G)) == pytest.approx(best, rel=1e-14)
    np.testing.assert_array_equal(_np(Sign().lmo(G)), np.sign(_np(G)))
    assert float(Sign().value(G)) == np.abs(_np(G)).max()


def _colwise_ref(W: np.ndarray) -> tuple[float, float, np.ndarray]:
    """ColNorm on a (d_out, d_in) array, column by column: value, dual, lmo."""
    d_out = W.shape[0]
    cols = [W[:, j] for j in range(W.shape[1])]
    value = max(np.sqrt(np.mean(c**2)) for c in cols)
    dual = sum(math.sqrt(d_out) * np.linalg.norm(c) for c in cols)
    lmo = np.stack([math.sqrt(d_out) * c / np.linalg.norm(c) if np.linalg.norm(c) > 0 else 0 * c for c in cols], axis=1)
    return value, dual, lmo


def test_colnorm_reference_and_embedding_layout() -> None:
    W = _rand(5, 4, seed=6)
    W[:, 2] = 0.0
    value, dual, lmo = _colwise_ref(_np(W))
    norm = ColNorm()
    assert float(norm.value(W)) == pytest.approx(value, rel=1e-13)
    assert float(norm.dual(W)) == pytest.approx(dual, rel=1e-13)
    np.testing.assert_allclose(_np(norm.lmo(W)), lmo, atol=1e-13)
    assert np.all(_np(norm.lmo(W))[:, 2] == 0)
    # nn.Embedding's (num_embeddings, dim): one row per token, the same formulas on rows.
    E = W.T.contiguous()
    emb = ColNorm(layout="embedding")
    assert float(emb.value(E)) == pytest.approx(value, rel=1e-13)
    assert float(emb.dual(E)) == pytest.approx(dual, rel=1e-13)
    np.testing.assert_allclose(_np(emb.lmo(E)), lmo.T, atol=1e-13)


def test_rownorm_reference() -> None:
    W = _rand(3, 6, seed=7)
    A = _np(W)
    d_in = A.shape[1]
    norm = RowNorm()
    assert float(norm.value(W)) == pytest.approx(max(math.sqrt(d_in) * np.linalg.norm(r) for r in A), rel=1e-13)
    assert float(norm.dual(W)) == pytest.approx(sum(np.linalg.norm(r) / math.sqrt(d_in) for r in A), rel=1e-13)
    ref = np.stack([r / (math.sqrt(d_in) * np.linalg.norm(r)) for r in A])
    np.testing.assert_allclose(_np(norm.lmo(W)), ref, atol=1e-13)
    np.testing.assert_allclose(_np(RowNorm(layout="embedding").lmo(W.T.contiguous())), ref.T, atol=1e-13)


def test_rms_and_frobenius_reference() -> None:
    g = _rand(3, 7, seed=8)
    A = _np(g)
    np.testing.assert_allclose(_np(RMS().value(g)), np.sqrt((A**2).mean(axis=-1)), rtol=1e-13)
    np.testing.assert_allclose(_np(RMS().dual(g)), np.sqrt(7) * np.linalg.norm(A, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(_np(RMS().lmo(g)), np.sqrt(7) * A / np.linalg.norm(A, axis=-1, keepdims=True), rtol=1e-13)
    assert float(Frobenius(ndim=2).dual(g)) == pytest.approx(np.linalg.norm(A), rel=1e-13)
    np.testing.assert_allclose(_np(Frobenius().sharp(g)), A)


def test_spectral_conv_per_position_reference() -> None:
    K = _rand(4, 3, 2, 3, seed=9)  # (d_out, d_in, kh, kw), 6 kernel positions
    A = _np(K)
    s = math.sqrt(4 / 3)
    lmo = np.zeros_like(A)
    dual, value = 0.0, 0.0
    for i, j in itertools.product(range(2), range(3)):
        U, S, Vt = np.linalg.svd(A[:, :, i, j], full_matrices=False)
        lmo[:, :, i, j] = s * U @ Vt / 6
        dual += s * S.sum() / 6
        value = max(value, 6 * S.max() / s)
    norm = SpectralConv(method="svd")
    np.testing.assert_allclose(_np(norm.lmo(K)), lmo, atol=1e-13)
    assert float(norm.dual(K)) == pytest.approx(dual, rel=1e-12)
    assert float(norm.value(K)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("name", ATOMS)
def test_low_precision_input_returns_its_dtype(name: str) -> None:
    norm, ndim = ATOMS[name]
    G = _rand(*([4] * ndim), seed=10).bfloat16()
    for out in (norm.lmo(G), norm.sharp(G), norm.value(G), norm.dual(G)):
        assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ATOMS)
def test_wrong_rank_names_norm_and_expected_shape(name: str) -> None:
    norm, ndim = ATOMS[name]
    X = torch.zeros([3] * (ndim - 1))
    for method in (norm.value, norm.dual, norm.lmo, norm.sharp):
        with pytest.raises(ValueError, match=type(norm).__name__) as info:
            method(X)
        assert norm.expected_shape() in str(info.value)


@pytest.mark.parametrize("name", ATOMS)
def test_empty_parameter_dims_and_bad_types_raise(name: str) -> None:
    norm, ndim = ATOMS[name]
    with pytest.raises(ValueError, match="non-empty"):
        norm.lmo(torch.zeros(*([2] * (ndim - 1)), 0))
    with pytest.raises(TypeError, match="floating"):
        norm.lmo(torch.zeros(*([2] * ndim), dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        norm.lmo(np.zeros([2] * ndim))


def test_empty_batch_is_fine() -> None:
    assert Spectral(method="svd").lmo(torch.zeros(0, 3, 2)).shape == (0, 3, 2)
    assert ColNorm().dual(torch.zeros(0, 3, 2)).shape == (0,)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Spectral(scale="rmss"), "scale"),
        (lambda: Spectral(scale=-1.0), "positive"),
        (lambda: Spectral(method="newton"), "method"),
        (lambda: Spectral(steps=0), "steps"),
        (lambda: Spectral(dtype=torch.int32), "dtype"),
        (lambda: Spectral(eps=0.0), "eps"),
        (lambda: ColNorm(layout="rows"), "layout"),
        (lambda: RowNorm(layout="conv"), "layout"),
        (lambda: SpectralConv(kernel_dims=4), "kernel_dims"),
        (lambda: Frobenius(ndim=0), "ndim"),
        (lambda: Sign(ndim=1.5), "ndim"),
    ],
)
def test_bad_constructor_arguments_raise(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        make()
