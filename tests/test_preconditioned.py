"""DNorm and LRNorm over every base (a user's norm included): laws, Theorem 1 against brute
force, and the optimizer identities of DESIGN §3 against float64 formulas written here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from modnorm import RMS, ColNorm, DNorm, Frobenius, LRNorm, Norm, RowNorm, Sign, Spectral, SpectralConv
from modnorm.preconditioned import GramLRNorm
from modnorm.testing import check_laws, inner


class Nuclear(Norm):
    """A user's norm, written only against the Norm base: ‖W‖ = Σσ; dual σ_max; lmo u₁v₁ᵀ."""

    ndim = 2

    def value(self, W: torch.Tensor) -> torch.Tensor:
        self._check(W)
        return torch.linalg.svdvals(W).sum(-1)

    def dual(self, G: torch.Tensor) -> torch.Tensor:
        self._check(G)
        return torch.linalg.svdvals(G).amax(-1) if G.isfinite().all() else G.sum((-2, -1)) * torch.nan

    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        self._check(G)
        if not G.isfinite().all():
            return G * torch.nan
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        return U[..., :, :1] @ Vh[..., :1, :] * (S[..., :1, None] > 0)


MATRIX_BASES = {
    "frobenius": Frobenius(),
    "spectral": Spectral(method="svd"),
    "sign": Sign(),
    "colnorm": ColNorm(),
    "rownorm": RowNorm(),
    "user_nuclear": Nuclear(),
}


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _spd(k: int, seed: int) -> torch.Tensor:
    A = _rand(k, k, seed=seed)
    return A @ A.mT / k + 0.3 * torch.eye(k, dtype=torch.float64)


def _np(X: torch.Tensor) -> np.ndarray:
    return X.detach().numpy()


def _mpow(A: np.ndarray, p: float) -> np.ndarray:
    w, Q = np.linalg.eigh(A)
    return (Q * w**p) @ Q.T


@pytest.mark.parametrize("name", MATRIX_BASES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), m=st.integers(1, 4), n=st.integers(1, 4), signed=st.booleans())
def test_dnorm_laws_over_every_base(name: str, seed: int, m: int, n: int, signed: bool) -> None:
    D = _rand(m, n, seed=seed).abs() + 0.1
    if signed:  # Theorem 1 holds for any invertible entrywise scaling
        D = D * torch.sign(_rand(m, n, seed=seed + 1))
    check_laws(DNorm(MATRIX_BASES[name], D), _rand(2, m, n, seed=seed + 2) * 10.0 ** (seed % 5 - 2), rtol=1e-9)


@pytest.mark.parametrize("name", MATRIX_BASES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), m=st.integers(1, 4), n=st.integers(1, 4), inverse=st.booleans())
def test_lrnorm_laws_over_every_base(name: str, seed: int, m: int, n: int, inverse: bool) -> None:
    # L symmetric positive definite, R a general invertible matrix
    L, R = _spd(m, seed), _rand(n, n, seed=seed + 1) + 3 * torch.eye(n, dtype=torch.float64)
    norm = LRNorm(MATRIX_BASES[name], L_inv=torch.linalg.inv(L), R_inv=torch.linalg.inv(R)) if inverse else LRNorm(MATRIX_BASES[name], L, R)
    check_laws(norm, _rand(2, m, n, seed=seed + 2), rtol=1e-8)


def test_wrappers_over_vector_and_conv_bases_and_nesting() -> None:
    check_laws(DNorm(RMS(), _rand(5, seed=1).abs() + 0.2), _rand(3, 5, seed=2), rtol=1e-10)
    check_laws(DNorm(SpectralConv(method="svd"), _rand(4, 3, 3, 3, seed=3).abs() + 0.2), _rand(4, 3, 3, 3, seed=4), rtol=1e-10)
    # SOAP's shape: an eigenbasis rotation around an entrywise D.
    Q_L, _ = torch.linalg.qr(_rand(4, 4, seed=5))
    Q_R, _ = torch.linalg.qr(_rand(3, 3, seed=6))
    soap = LRNorm(DNorm(Frobenius(), _rand(4, 3, seed=7).abs() + 0.2), L=Q_L.mT, R=Q_R)
    check_laws(soap, _rand(4, 3, seed=8), rtol=1e-10)
    # batched preconditioners: one (L, R) per matrix of the batch
    Ls = torch.stack([_spd(4, s) for s in range(3)])
    check_laws(LRNorm(Spectral(method="svd"), Ls, None), _rand(3, 4, 2, seed=9), rtol=1e-10)


# --- Theorem 1 against brute force ---------------------------------------------------------


def test_dnorm_sign_base_by_vertex_enumeration() -> None:
    """‖W‖_D = max|D ⊙ W|: the unit ball is the box |T_ij| ≤ 1/D_ij; its vertices are s/D."""
    G, D = _rand(2, 3, seed=11), _rand(2, 3, seed=12).abs() + 0.1
    vertices = [torch.tensor(s, dtype=G.dtype).reshape(2, 3) / D for s in itertools.product((-1, 1), repeat=6)]
    values = [float(inner(G, T, 2)) for T in vertices]
    norm = DNorm(Sign(), D)
    assert float(norm.dual(G)) == pytest.approx(max(values), rel=1e-13)
    torch.testing.assert_close(norm.lmo(G), vertices[int(np.argmax(values))], rtol=1e-13, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_lrnorm_sign_base_by_linear_program(seed: int) -> None:
    """max ⟨G, T⟩ subject to max|L T R| ≤ 1, solved as an LP over vec(T) by scipy (HiGHS)."""
    m, n = 3, 2
    L, R, G = _rand(m, m, seed=seed) + 3 * torch.eye(m, dtype=torch.float64), _spd(n, seed + 10), _rand(m, n, seed=seed + 20)
    A = np.kron(_np(L), _np(R).T)  # row-major vec: vec(L T R) = (L ⊗ Rᵀ) vec(T)
    res = linprog(-_np(G).ravel(), A_ub=np.vstack([A, -A]), b_ub=np.ones(2 * m * n), bounds=(None, None), method="highs")
    assert res.status == 0
    norm = LRNorm(Sign(), L, R)
    assert float(norm.dual(G)) == pytest.approx(-res.fun, rel=1e-9)
    np.testing.assert_allclose(_np(norm.lmo(G)).ravel(), res.x, atol=1e-9)


def test_lrnorm_frobenius_base_closed_form() -> None:
    """Frobenius base: lmo ∝ (LᵀL)⁻¹ G (R Rᵀ)⁻¹ (the two-sided quasi-Newton form), dual = ‖L⁻ᵀ G R⁻ᵀ‖_F."""
    L, R, G = _rand(4, 4, seed=30) + 4 * np.eye(4), _rand(3, 3, seed=31) + 3 * np.eye(3), _rand(4, 3, seed=32)
    L, R = torch.as_tensor(L), torch.as_tensor(R)
    Li, Ri = np.linalg.inv(_np(L)), np.linalg.inv(_np(R))
    direction = np.linalg.inv(_np(L).T @ _np(L)) @ _np(G) @ np.linalg.inv(_np(R) @ _np(R).T)
    dual = np.linalg.norm(Li.T @ _np(G) @ Ri.T)
    norm = LRNorm(Frobenius(), L, R)
    assert float(norm.dual(G)) == pytest.approx(dual, rel=1e-12)
    np.testing.assert_allclose(_np(norm.lmo(G)), direction / dual, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(norm.sharp(G)), direction, rtol=1e-10, atol=1e-12)


# --- DESIGN §3 identities ------------------------------------------------------------------


def test_adam_direction_through_sharp() -> None:
    M, V, eps = _rand(5, 4, seed=40), _rand(5, 4, seed=41) ** 2, 1e-8
    V[0, 0] = 0.0  # where √V + ε matters
    D = (V.sqrt() + eps) ** 0.5
    np.testing.assert_allclose(_np(DNorm(Frobenius(), D).sharp(M)), _np(M) / (np.sqrt(_np(V)) + eps), rtol=1e-12)


def test_adam_sania_direction_through_sharp() -> None:
    G, V = _rand(5, 4, seed=42), _rand(5, 4, seed=43) ** 2 + 0.01
    np.testing.assert_allclose(_np(DNorm(Frobenius(), V**0.5).sharp(G)), _np(G) / _np(V), rtol=1e-12)


def test_shampoo_direction_through_sharp() -> None:
    Gs = [_np(_rand(5, 3, seed=s)) for s in range(50, 56)]
    A = sum(g @ g.T for g in Gs) + 1e-3 * np.eye(5)
    B = sum(g.T @ g for g in Gs) + 1e-3 * np.eye(3)
    G = Gs[-1]
    norm = LRNorm(Frobenius(), torch.as_tensor(_mpow(A, 1 / 8)), torch.as_tensor(_mpow(B, 1 / 8)))
    np.testing.assert_allclose(_np(norm.sharp(torch.as_tensor(G))), _mpow(A, -1 / 4) @ G @ _mpow(B, -1 / 4), rtol=1e-9, atol=1e-12)
    one_sided = LRNorm(Frobenius(), torch.as_tensor(_mpow(A, 1 / 4)), None)
    np.testing.assert_allclose(_np(one_sided.sharp(torch.as_tensor(G))), _mpow(A, -1 / 2) @ G, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("base", [Frobenius(), Spectral(method="svd"), Sign(), Nuclear()], ids=repr)
def test_gram_lrnorm_is_the_lrnorm_of_the_symmetric_roots(base: Norm) -> None:
    """GramLRNorm(base, P_L, P_R) = LRNorm(base, L_inv=P_L^½, R_inv=P_R^½), roots by NumPy's eigh."""
    P_L, P_R = torch.stack([_spd(5, 1), _spd(5, 2)]), torch.stack([_spd(3, 3), _spd(3, 4)])
    roots = [torch.as_tensor(np.stack([_mpow(_np(P[i]), 0.5) for i in range(2)])) for P in (P_L, P_R)]
    want, got = LRNorm(base, L_inv=roots[0], R_inv=roots[1]), GramLRNorm(base, P_L, P_R)
    W, G = _rand(2, 5, 3, seed=6), _rand(2, 5, 3, seed=7)
    for op, X in (("value", W), ("dual", G), ("lmo", G), ("sharp", G)):
        torch.testing.assert_close(getattr(got, op)(X), getattr(want, op)(X), rtol=1e-9, atol=1e-12, msg=op)


def test_gram_lrnorm_frobenius_sharp_is_two_products_and_no_root(monkeypatch: pytest.MonkeyPatch) -> None:
    P_L, P_R, G = _spd(4, 3), _spd(3, 4), _rand(2, 4, 3, seed=5)

    def no_root(*args: object, **kwargs: object) -> None:
        raise AssertionError("a root was formed")

    monkeypatch.setattr(torch.linalg, "eigh", no_root)
    torch.testing.assert_close(GramLRNorm(Frobenius(), P_L, P_R).sharp(G), P_L @ G @ P_R, rtol=1e-12, atol=0)
    one_sided = GramLRNorm(Frobenius(), None, P_R)
    out = one_sided.sharp(G)
    torch.testing.assert_close(out, G @ P_R, rtol=1e-12, atol=0)
    assert "P_L=I" in repr(one_sided)
    same = GramLRNorm(Frobenius()).sharp(G)
    assert torch.equal(same, G) and same is not G
    with pytest.raises(ValueError, match="P_L must be square"):
        GramLRNorm(Frobenius(), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"GramLRNorm: P_R is \(3, 3\) but the tensor has 4 columns"):
        GramLRNorm(Frobenius(), None, P_R).sharp(torch.ones(2, 4, 4, dtype=torch.float64))


def test_muon_polargrad_and_signsgd() -> None:
    G = _rand(6, 4, seed=60)
    U, S, Vt = np.linalg.svd(_np(G), full_matrices=False)
    spectral = Spectral(scale="none", method="svd")
    np.testing.assert_allclose(_np(spectral.lmo(G)), U @ Vt, atol=1e-12)  # Muon
    np.testing.assert_allclose(_np(spectral.sharp(G)), S.sum() * U @ Vt, rtol=1e-12)  # PolarGrad
    np.testing.assert_array_equal(_np(Sign().lmo(G)), np.sign(_np(G)))  # signSGD


def test_muadam_is_spectral_base_with_d() -> None:
    """MuAdam's direction O ⊘ D with O = polar(M ⊘ D), D = V^¼ (Algorithm 1, no bias correction)."""
    M, V = _rand(4, 6, seed=70), _rand(4, 6, seed=71) ** 2 + 0.05
    D = _np(V) ** 0.25
    U, _, Vt = np.linalg.svd(_np(M) / D, full_matrices=False)
    s = np.sqrt(4 / 6)
    np.testing.assert_allclose(_np(DNorm(Spectral(method="svd"), torch.as_tensor(D)).lmo(M)), s * (U @ Vt) / D, atol=1e-12)


def test_zero_d_entries_give_finite_directions() -> None:
    G, D = _rand(3, 3, seed=80), _rand(3, 3, seed=81).abs() + 0.1
    G[1, 2], D[1, 2] = 0.0, 0.0
    out = DNorm(Frobenius(), D).lmo(G)
    assert bool(torch.isfinite(out).all()) and float(out[1, 2]) == 0.0


# --- bad input -----------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="DNorm: base"):
        DNorm("frobenius", torch.ones(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DNorm: D"):
        DNorm(Frobenius(), np.ones((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DNorm: D of shape \(3, 2\)"):
        DNorm(Frobenius(), torch.ones(3, 2)).lmo(torch.ones(2, 2))
    with pytest.raises(ValueError, match="does not broadcast"):
        DNorm(Frobenius(), torch.ones(4, 2, 2)).lmo(torch.ones(2, 2))
    with pytest.raises(ValueError, match="ndim=2"):
        LRNorm(RMS(), torch.eye(2))
    with pytest.raises(ValueError, match="either L or L_inv"):
        LRNorm(Frobenius(), torch.eye(2), L_inv=torch.eye(2))
    with pytest.raises(ValueError, match="square"):
        LRNorm(Frobenius(), torch.ones(2, 3))
    with pytest.raises(ValueError, match="3 rows"):
        LRNorm(Frobenius(), torch.eye(2)).lmo(torch.ones(3, 4))
    with pytest.raises(ValueError, match="batch dims"):
        LRNorm(Frobenius(), torch.eye(3).expand(5, 3, 3)).lmo(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"LRNorm.*\(\.\.\., m, n\)"):
        LRNorm(Frobenius(), torch.eye(3)).lmo(torch.ones(3))


def _orthogonal(b: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(b, k, k, generator=g)).Q


def test_sharp_step_equals_sharp_and_writes_into_its_scratch():
    """``sharp_step`` (an optimizer's scratch input): ``sharp``'s bits, the result in the input's
    storage, and the float64 formula L⁻¹ D⁻¹ ⊙ D⁻¹ ⊙ (L⁻ᵀ G R⁻ᵀ) R⁻¹ written out here (SOAP's norm)."""
    g = torch.Generator().manual_seed(11)
    G = torch.randn(3, 8, 5, generator=g)
    QL, QR, D = _orthogonal(3, 8, g), _orthogonal(3, 5, g), torch.rand(3, 8, 5, generator=g) + 0.5
    norm = LRNorm(DNorm(Frobenius(), D, positive=True), L_inv=QL, R_inv=QR.mT)
    want = norm.sharp(G)
    scratch = G.clone()
    got = norm.sharp_step(scratch)
    assert torch.equal(got, want) and got.data_ptr() == scratch.data_ptr()
    Gd, QLd, QRd, Dd = G.double(), QL.double(), QR.double(), D.double()
    ref = QLd @ (((QLd.mT @ Gd @ QRd) / Dd) / Dd) @ QRd.mT
    assert torch.allclose(got.double(), ref, atol=1e-5)
    P_L, P_R = QL @ QL.mT * 2.0, QR @ QR.mT * 3.0  # Shampoo's P_L G P_R
    gram = GramLRNorm(Frobenius(), P_L, P_R)
    scratch = G.clone()
    got = gram.sharp_step(scratch)
    assert torch.equal(got, gram.sharp(G)) and got.data_ptr() == scratch.data_ptr()
    assert torch.allclose(got.double(), P_L.double() @ Gd @ P_R.double(), atol=1e-5)
    solved = LRNorm(Frobenius(), L=QL.mT, R=QR)  # factors to solve with: sharp itself, the input untouched
    scratch = G.clone()
    assert torch.equal(solved.sharp_step(scratch), solved.sharp(G)) and torch.equal(scratch, G)
