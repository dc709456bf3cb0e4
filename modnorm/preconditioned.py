"""Preconditioned norms over any base norm (Veprikov et al. 2025, Theorem 1).

- ``DNorm(base, D)``:   ‖W‖_D = ‖D ⊙ W‖,  D entrywise positive, broadcastable to W.
      dual(G) = ‖D⁻¹ ⊙ G‖*,   lmo(G) = D⁻¹ ⊙ lmo(D⁻¹ ⊙ G)
- ``LRNorm(base, L, R)``: ‖W‖_(L,R) = ‖L W R‖,  L (m×m), R (n×n) invertible.
      dual(G) = ‖L⁻ᵀ G R⁻ᵀ‖*,  lmo(G) = L⁻¹ · lmo(L⁻ᵀ G R⁻ᵀ) · R⁻¹

Nothing here knows which base norm it wraps: a user's ``Norm`` subclass works the same.
Examples: Frobenius base with D = (√V + ε)^½ gives Adam's direction through ``sharp``;
Spectral base with D = V^¼ gives MuAdam; L = Qᵀ_L, R = Q_R orthogonal rotates into an
eigenbasis (SOAP, SPlus).
- ``GramLRNorm(base, P_L, P_R)``: the ``LRNorm`` with symmetric L⁻¹ = P_L^½, R⁻¹ = P_R^½,
      given P_L = L⁻¹L⁻ᵀ, P_R = R⁻ᵀR⁻¹; with a Frobenius base sharp(G) = P_L G P_R
      (Shampoo: P = (A + εI)^{-p}, two products and no root).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .norm_base import upcast_into
from .norms import Frobenius, Norm

__all__ = ["DNorm", "LRNorm", "GramLRNorm"]


def _div(X: Tensor, D: Tensor) -> Tensor:
    """X ⊘ D entrywise, with 0 where D == 0; non-finite X stays non-finite (X·0 = NaN)."""
    return torch.where(D == 0, X * 0, X / D)


class DNorm(Norm):
    """‖W‖_D = ‖D ⊙ W‖ for a base norm and an entrywise-nonzero D (in practice positive).

    D has W's shape or broadcasts to it (e.g. one D for a whole batch, or a per-column D).
    ``positive=True`` promises D > 0 everywhere (e.g. D built with ε > 0) and skips the
    D == 0 handling below.
    Theorem 1 holds for any invertible entrywise scaling, so negative entries are exact
    too. Entries with D = 0 make ‖·‖_D degenerate; there D⁻¹ is taken as 0 (where an
    optimizer's D is 0 the gradient statistics, hence G, are 0 too). Non-finite G stays
    non-finite.
    """

    def __init__(self, base: Norm, D: Tensor, *, positive: bool = False) -> None:
        if not isinstance(base, Norm):
            raise TypeError(f"DNorm: base must be a modnorm.Norm, got {type(base).__name__}")
        if not isinstance(D, Tensor):
            raise TypeError(f"DNorm: D must be a torch.Tensor, got {type(D).__name__}")
        self.base, self.D = base, D
        self.ndim = base.ndim
        self.positive = positive  # the caller guarantees D > 0: plain division, no D == 0 handling

    def _inv(self, X: Tensor) -> Tensor:
        """D⁻¹ ⊙ X."""
        return X / self.D if self.positive else _div(X, self.D)

    def expected_shape(self) -> str:
        return self.base.expected_shape()

    def _check(self, X: Tensor) -> None:
        super()._check(X)
        try:
            ok = torch.broadcast_shapes(self.D.shape, X.shape) == X.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"DNorm: D of shape {tuple(self.D.shape)} does not broadcast to the tensor's shape {tuple(X.shape)}; pass D of shape {tuple(X.shape)}")

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return self.base.value(self.D * W)

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return self.base.dual(self._inv(G))

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._inv(self.base.lmo(self._inv(G)))

    def lmo_step(self, G: Tensor) -> Tensor:
        """``lmo`` for an optimizer's update (``Norm.lmo_step``): with D > 0 of G's dtype, D⁻¹ ⊙ G is
        formed in G itself and D⁻¹ ⊙ (the base's ``lmo_step``) in its (upcast) result: the same
        values as ``lmo`` without its two temporaries."""
        if not (self.positive and self.D.dtype == G.dtype and G.is_contiguous()):
            return self.lmo(G)
        self._check(G)
        O = self.base.lmo_step(G.div_(self.D))
        if O.dtype != G.dtype and O.is_floating_point() and torch.finfo(O.dtype).bits < torch.finfo(G.dtype).bits:
            return upcast_into(G, O).div_(self.D)  # narrower (``Norm.lmo_step``): upcast exactly, into the scratch G
        return O.div_(self.D) if O.dtype == G.dtype and O.is_contiguous() else O / self.D

    def sharp_step(self, G: Tensor) -> Tensor:
        """``sharp`` for an optimizer's update (``Norm.sharp_step``): with a Frobenius base and D > 0
        of G's dtype, (G ⊘ D) ⊘ D in G itself."""
        if self.positive and type(self.base) is Frobenius and self.D.dtype == G.dtype and G.is_contiguous():
            self._check(G)
            return G.div_(self.D).div_(self.D)
        return self.sharp(G)

    def sharp(self, G: Tensor) -> Tensor:
        self._check(G)
        # ‖·‖_D's sharp is D⁻¹ ⊙ sharp_base(D⁻¹ ⊙ G): one base evaluation instead of two.
        if self.positive and type(self.base) is Frobenius:  # sharp_base is the identity: (G / D) / D, one temporary
            return (G / self.D).div_(self.D)
        return self._inv(self.base.sharp(self._inv(G)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, D={tuple(self.D.shape)})"


class LRNorm(Norm):
    """‖W‖_(L,R) = ‖L W R‖ for a matrix base norm; ``None`` stands for the identity.

    Pass ``L``/``R`` (then inverses are applied with ``torch.linalg.solve``) or, when
    the preconditioner is built from an eigendecomposition, their inverses ``L_inv``/
    ``R_inv`` directly (cheaper, and exactly what Shampoo-type methods compute).
    Batched: L is (..., m, m), R is (..., n, n) for W of shape (..., m, n).
    """

    ndim = 2

    def __init__(
        self,
        base: Norm,
        L: Tensor | None = None,
        R: Tensor | None = None,
        *,
        L_inv: Tensor | None = None,
        R_inv: Tensor | None = None,
    ) -> None:
        if not isinstance(base, Norm):
            raise TypeError(f"LRNorm: base must be a modnorm.Norm, got {type(base).__name__}")
        if base.ndim != 2:
            raise ValueError(f"LRNorm: the base norm must act on matrices (ndim=2), got {base!r} with ndim={base.ndim}")
        if L is not None and L_inv is not None:
            raise ValueError("LRNorm: pass either L or L_inv, not both")
        if R is not None and R_inv is not None:
            raise ValueError("LRNorm: pass either R or R_inv, not both")
        for name, M in (("L", L), ("R", R), ("L_inv", L_inv), ("R_inv", R_inv)):
            if M is not None and (M.ndim < 2 or M.shape[-1] != M.shape[-2]):
                raise ValueError(f"LRNorm: {name} must be square (..., k, k), got shape {tuple(M.shape)}")
        self.base = base
        self.L, self.R, self.L_inv, self.R_inv = L, R, L_inv, R_inv

    def expected_shape(self) -> str:
        return "(..., m, n)"

    def _factors(self) -> tuple[tuple[str, Tensor | None, int], ...]:
        """(name, matrix, side) of each given factor; side 0 acts on rows, 1 on columns."""
        return (("L", self.L, 0), ("L_inv", self.L_inv, 0), ("R", self.R, 1), ("R_inv", self.R_inv, 1))

    def _check(self, X: Tensor) -> None:
        super()._check(X)
        for name, M, side in self._factors():
            k = X.shape[-2 + side]
            if M is None:
                continue
            if M.shape[-1] != k:
                what = ("rows", "columns")[side]
                raise ValueError(f"{type(self).__name__}: {name} is {tuple(M.shape[-2:])} but the tensor has {k} {what} (shape {tuple(X.shape)}); pass a {k}×{k} {name}")
            try:
                ok = torch.broadcast_shapes(M.shape[:-2], X.shape[:-2]) == X.shape[:-2]
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"{type(self).__name__}: {name}'s batch dims {tuple(M.shape[:-2])} do not broadcast to the tensor's batch dims {tuple(X.shape[:-2])}")

    # Each helper applies one factor; None = identity.
    def _left(self, X: Tensor) -> Tensor:
        """L X"""
        if self.L is not None:
            return self.L @ X
        if self.L_inv is not None:
            return torch.linalg.solve(self.L_inv, X)
        return X

    def _right(self, X: Tensor) -> Tensor:
        """X R"""
        if self.R is not None:
            return X @ self.R
        if self.R_inv is not None:
            return torch.linalg.solve(self.R_inv.mT, X.mT).mT
        return X

    def _left_inv(self, X: Tensor, transpose: bool) -> Tensor:
        """L⁻¹ X, or L⁻ᵀ X when ``transpose``."""
        if self.L_inv is not None:
            return (self.L_inv.mT if transpose else self.L_inv) @ X
        if self.L is not None:
            return torch.linalg.solve(self.L.mT if transpose else self.L, X)
        return X

    def _right_inv(self, X: Tensor, transpose: bool) -> Tensor:
        """X R⁻¹, or X R⁻ᵀ when ``transpose``."""
        if self.R_inv is not None:
            return X @ (self.R_inv.mT if transpose else self.R_inv)
        if self.R is not None:
            # X R⁻¹ = (R⁻ᵀ Xᵀ)ᵀ ; X R⁻ᵀ = (R⁻¹ Xᵀ)ᵀ
            return torch.linalg.solve(self.R if transpose else self.R.mT, X.mT).mT
        return X

    def _to_base(self, G: Tensor) -> Tensor:
        """L⁻ᵀ G R⁻ᵀ: the gradient seen by the base norm."""
        return self._right_inv(self._left_inv(G, transpose=True), transpose=True)

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return self.base.value(self._right(self._left(W)))

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return self.base.dual(self._to_base(G))

    def _through_base(self, G: Tensor, op: str) -> Tensor:
        """L⁻¹ · base.op(L⁻ᵀ G R⁻ᵀ) · R⁻¹, each intermediate released once the next exists."""
        X = self._left_inv(G, transpose=True)
        X = self._right_inv(X, transpose=True)
        X = getattr(self.base, op)(X)
        X = self._left_inv(X, transpose=False)
        return self._right_inv(X, transpose=False)

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._through_base(G, "lmo")

    def sharp(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._through_base(G, "sharp")

    def sharp_step(self, G: Tensor) -> Tensor:
        """``sharp`` for an optimizer's update (``Norm.sharp_step``): with L⁻¹, R⁻¹ given, the four
        products alternate between the scratch G and one more buffer (``matmul(out=)``, the same
        kernels), and the base's ``sharp_step`` works in place."""
        if self.L_inv is None or self.R_inv is None or self.L is not None or self.R is not None:
            return self.sharp(G)
        self._check(G)
        T = self._left_inv(G, transpose=True)  # L⁻ᵀ G
        X = _product(T, self.R_inv.mT, into=G)  # L⁻ᵀ G R⁻ᵀ, in G (no longer read)
        S = self.base.sharp_step(X)
        T = _product(self.L_inv, S, into=T)  # L⁻¹ S, in T
        return _product(T, self.R_inv, into=S if S.dtype == T.dtype else None)

    def __repr__(self) -> str:
        def shape(M: Tensor | None) -> str:
            return "I" if M is None else str(tuple(M.shape))

        left = shape(self.L) if self.L_inv is None else f"inv{shape(self.L_inv)}"
        right = shape(self.R) if self.R_inv is None else f"inv{shape(self.R_inv)}"
        return f"{type(self).__name__}({self.base!r}, L={left}, R={right})"


def _product(A: Tensor, B: Tensor, into: Tensor | None) -> Tensor:
    """A @ B, written into ``into`` when it is a contiguous tensor of the result's shape and dtype
    that is neither operand's storage (``matmul(out=)``: the same kernel), else a new tensor."""
    shape = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (A.shape[-2], B.shape[-1])
    if (into is None or into.shape != shape or into.dtype != torch.result_type(A, B) or not into.is_contiguous()
            or into.untyped_storage().data_ptr() in (A.untyped_storage().data_ptr(), B.untyped_storage().data_ptr())):
        return A @ B
    return torch.matmul(A, B, out=into)


def _sqrt_psd(P: Tensor) -> Tensor:
    """The symmetric PSD square root of a symmetric PSD P (batched; eigenvalues clamped at 0)."""
    lam, Q = torch.linalg.eigh(0.5 * (P + P.mT))
    return (Q * lam.clamp_min(0.0).sqrt().unsqueeze(-2)) @ Q.mT


class _RootOf:
    """A ``GramLRNorm`` attribute: the symmetric square root of its attribute ``square``, formed on first read."""

    def __init__(self, square: str) -> None:
        self.square = square

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: object, owner: type | None = None) -> Tensor | None:
        if obj is None:
            return self  # type: ignore[return-value]
        root, P = obj.__dict__.get(self.slot), getattr(obj, self.square)
        if root is None and P is not None:
            root = obj.__dict__[self.slot] = _sqrt_psd(P)
        return root

    def __set__(self, obj: object, value: Tensor | None) -> None:
        obj.__dict__[self.slot] = value


class GramLRNorm(LRNorm):
    """``LRNorm(base, L_inv=P_L^½, R_inv=P_R^½)`` given the symmetric PSD squares
    P_L = L⁻¹L⁻ᵀ (m×m) and P_R = R⁻ᵀR⁻¹ (n×n) of symmetric factors; ``None`` is the identity.

    With a Frobenius base the sharp is L⁻¹L⁻ᵀ G R⁻ᵀR⁻¹ = P_L G P_R: one product per side
    and no root (Shampoo's A^{-p} G B^{-p} from P = (A + εI)^{-p}). Everything else — values,
    duals, LMOs, other bases — uses ``L_inv``/``R_inv``, the symmetric square roots, formed on
    first use (one ``eigh`` per side).
    """

    def __init__(self, base: Norm, P_L: Tensor | None = None, P_R: Tensor | None = None) -> None:
        for name, M in (("P_L", P_L), ("P_R", P_R)):
            if M is not None and (M.ndim < 2 or M.shape[-1] != M.shape[-2]):
                raise ValueError(f"GramLRNorm: {name} must be square (..., k, k), got shape {tuple(M.shape)}")
        self.P_L, self.P_R = P_L, P_R
        super().__init__(base)

    # L⁻¹, R⁻¹ (read by LRNorm's methods and by code that rebuilds an LRNorm): the roots, formed on first use.
    L_inv = _RootOf("P_L")  # type: ignore[assignment]
    R_inv = _RootOf("P_R")  # type: ignore[assignment]

    def _factors(self) -> tuple[tuple[str, Tensor | None, int], ...]:
        return (("P_L", self.P_L, 0), ("P_R", self.P_R, 1))

    def sharp(self, G: Tensor) -> Tensor:
        if type(self.base) is not Frobenius:
            return super().sharp(G)
        self._check(G)
        X = G if self.P_L is None else self.P_L @ G
        if self.P_R is not None:
            X = X @ self.P_R
        return G.clone() if X is G else X

    def sharp_step(self, G: Tensor) -> Tensor:
        """``sharp`` for an optimizer's update (``Norm.sharp_step``): with a Frobenius base and both
        factors, P_L G P_R with the second product written into the scratch G."""
        if type(self.base) is not Frobenius or self.P_L is None or self.P_R is None:
            return self.sharp(G)
        self._check(G)
        return _product(self.P_L @ G, self.P_R, into=G)

    def __repr__(self) -> str:
        def shape(M: Tensor | None) -> str:
            return "I" if M is None else str(tuple(M.shape))

        return f"{type(self).__name__}({self.base!r}, P_L={shape(self.P_L)}, P_R={shape(self.P_R)})"
