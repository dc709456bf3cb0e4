"""modnorm.testing.check_norm: passes on every shipped norm, catches deliberately broken ones."""

from __future__ import annotations

import sys

import pytest
import torch

from modnorm import RMS, ColNorm, DNorm, Frobenius, LRNorm, RowNorm, Sign, Spectral, SpectralConv
from modnorm.polar import singular_values
from modnorm.testing import LAWS, NormLawError, check_laws, check_norm

CORRECT = {
    "frobenius": (Frobenius(), [(4, 3), (2, 3, 5)]),
    "spectral_svd": (Spectral(method="svd"), [(4, 3), (3, 5), (2, 4, 4)]),
    "sign": (Sign(), [(3, 4)]),
    "colnorm": (ColNorm(), [(4, 3)]),
    "colnorm_embedding": (ColNorm(layout="embedding"), [(6, 3)]),
    "rownorm": (RowNorm(), [(3, 5)]),
    "rms": (RMS(), [(5,), (3, 4)]),
    "spectral_conv": (SpectralConv(method="svd"), [(4, 3, 3, 3)]),
}


@pytest.mark.parametrize("name", CORRECT)
def test_check_norm_passes_on_every_atom(name: str) -> None:
    norm, shapes = CORRECT[name]
    check_norm(norm, shapes=shapes, max_examples=8)


def test_check_norm_passes_on_approximate_spectral_with_loose_tolerance() -> None:
    check_norm(Spectral(method="polar_express", steps=12), shapes=[(6, 4)], max_examples=10, rtol=1e-2,
               laws=[law for law in LAWS if law != "scale_invariant"])


def _posdef(k: int, seed: int) -> torch.Tensor:
    A = torch.randn(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return A @ A.mT / k + 0.5 * torch.eye(k, dtype=torch.float64)


@pytest.mark.parametrize("base", [Frobenius(), Spectral(method="svd"), Sign(), ColNorm(), RowNorm()], ids=repr)
def test_check_norm_passes_on_wrappers(base) -> None:  # type: ignore[no-untyped-def]
    def d_norm(shape: tuple[int, ...]) -> DNorm:
        return DNorm(base, torch.rand(*shape[-2:], generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1)

    def lr_norm(shape: tuple[int, ...]) -> LRNorm:
        return LRNorm(base, _posdef(shape[-2], 2), _posdef(shape[-1], 3))

    check_norm(base, shapes=[(4, 3)], make_norm=d_norm, max_examples=4)
    check_norm(base, shapes=[(4, 3), (2, 3, 3)], make_norm=lr_norm, max_examples=4, rtol=1e-8)


# --- deliberately wrong norms -------------------------------------------------------------


class DoubledLMO(Spectral):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return 2 * super().lmo(G)


class TransposedLMO(Sign):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return super().lmo(G).mT


class WrongDual(ColNorm):
    def dual(self, G: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(G, dim=(-2, -1))


class TopSingularPair(Spectral):
    """Consistent dual and LMO, but for the wrong pair: rank-one u₁v₁ᵀ with dual σ_max."""

    def dual(self, G: torch.Tensor) -> torch.Tensor:
        return singular_values(G)[..., 0]

    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        if not bool(G.isfinite().all()):
            return G * torch.nan
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        return U[..., :1] @ Vh[..., :1, :] * (S[..., :1, None] > 0)


class NaNHidingLMO(RMS):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(super().lmo(G))


class NaNForZero(Frobenius):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return G / torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True)


class NotBatched(Frobenius):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return G / torch.linalg.vector_norm(G)  # one norm over the whole batch


class ScaleDependent(Frobenius):
    def lmo(self, G: torch.Tensor) -> torch.Tensor:
        return super().lmo(G) * torch.tanh(torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True))


@pytest.mark.parametrize(
    "norm, shapes, law",
    [
        (DoubledLMO(scale="none", method="svd"), [(4, 3)], "dual_attained"),
        (TransposedLMO(), [(3, 3)], "dual_attained"),
        (TransposedLMO(), [(3, 4)], "shapes"),
        (WrongDual(), [(4, 3)], "dual_attained"),
        (TopSingularPair(scale="none", method="svd"), [(4, 3)], "lmo_optimal"),
        (NaNHidingLMO(), [(5,)], "nonfinite"),
        (NaNForZero(), [(3, 2)], "zero"),
        (NotBatched(), [(2, 3, 2)], "dual_attained"),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, (list, str)) else str(x),
)
def test_check_norm_catches_wrong_norms(norm, shapes, law: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NormLawError) as info:
        check_norm(norm, shapes=shapes, max_examples=10)
    assert info.value.law == law
    message = str(info.value)
    assert f"law {law!r} violated" in message and type(norm).__name__ in message
    assert "G of shape" in message and "G = shape" in message  # counterexample with values
    assert isinstance(info.value, AssertionError)


def test_single_laws_can_be_checked_in_isolation() -> None:
    G = torch.randn(3, 4, dtype=torch.float64)
    check_laws(ScaleDependent(), G * 1e-3, laws=["lmo_feasible", "zero"])
    with pytest.raises(NormLawError, match="scale_invariant"):
        check_laws(ScaleDependent(), G, laws=["scale_invariant"])
    with pytest.raises(NormLawError, match="batched"):
        check_laws(NotBatched(), G, laws=["batched"])


def test_lmo_optimal_uses_extra_feasible_points() -> None:
    """A caller-supplied T that beats the LMO is reported with its values."""
    G = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    T = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # nuclear 2 > σ_max 3? ⟨G,T⟩ = 4 > 3
    with pytest.raises(NormLawError, match="a feasible T beats the LMO") as info:
        check_laws(TopSingularPair(scale="none", method="svd"), G, feasible=[T], laws=["lmo_optimal"])
    assert "⟨G, T⟩ = 4" in str(info.value)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown laws"):
        check_laws(Frobenius(), torch.ones(2, 2), laws=["triangle"])
    with pytest.raises(ValueError, match="shapes"):
        check_norm(Frobenius(), shapes=[])
    with pytest.raises(ValueError, match="fewer than 2 dims"):
        check_norm(Frobenius(), shapes=[(3,)])


def test_missing_hypothesis_gives_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(ImportError, match="pip install hypothesis"):
        check_norm(Frobenius(), shapes=[(2, 2)])
