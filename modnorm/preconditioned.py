"""Preconditioned norms over any base norm (Veprikov et al. 2025, Theorem 1).

- ``DNorm(base, D)``:   ‖W‖_D = ‖D ⊙ W‖,  D entrywise positive, broadcastable to W.
      dual(G) = ‖D⁻¹ ⊙ G‖*,   lmo(G) = D⁻¹ ⊙ lmo(D⁻¹ ⊙ G)
- ``LRNorm(base, L, R)``: ‖W‖_(L,R) = ‖L W R‖,  L (m×m), R (n×n) invertible.
      dual(G) = ‖L⁻ᵀ G R⁻ᵀ‖*,  lmo(G) = L⁻¹ · lmo(L⁻ᵀ G R⁻ᵀ) · R⁻¹

Nothing here knows which base norm it wraps: a user's ``Norm`` subclass works the same.
Examples: Frobenius base with D = (√V + ε)^½ gives Adam's direction through ``sharp``;
Spectral base with D = V^¼ gives MuAdam; L = Qᵀ_L, R = Q_R orthogonal rotates into an
eigenbasis (SOAP, SPlus).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .norms import Norm

__all__ = ["DNorm", "LRNorm"]


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

    def sharp(self, G: Tensor) -> Tensor:
        self._check(G)
        # ‖·‖_D's sharp is D⁻¹ ⊙ sharp_base(D⁻¹ ⊙ G): one base evaluation instead of two.
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

    def _check(self, X: Tensor) -> None:
        super()._check(X)
        m, n = X.shape[-2:]
        for name, M, k in (("L", self.L, m), ("L_inv", self.L_inv, m), ("R", self.R, n), ("R_inv", self.R_inv, n)):
            if M is None:
                continue
            if M.shape[-1] != k:
                side = "rows" if name.startswith("L") else "columns"
                raise ValueError(f"LRNorm: {name} is {tuple(M.shape[-2:])} but the tensor has {k} {side} (shape {tuple(X.shape)}); pass a {k}×{k} {name}")
            try:
                ok = torch.broadcast_shapes(M.shape[:-2], X.shape[:-2]) == X.shape[:-2]
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"LRNorm: {name}'s batch dims {tuple(M.shape[:-2])} do not broadcast to the tensor's batch dims {tuple(X.shape[:-2])}")

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

    def _from_base(self, T: Tensor) -> Tensor:
        """L⁻¹ T R⁻¹: a base-space direction mapped back."""
        return self._right_inv(self._left_inv(T, transpose=False), transpose=False)

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return self.base.value(self._right(self._left(W)))

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return self.base.dual(self._to_base(G))

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._from_base(self.base.lmo(self._to_base(G)))

    def sharp(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._from_base(self.base.sharp(self._to_base(G)))

    def __repr__(self) -> str:
        def shape(M: Tensor | None) -> str:
            return "I" if M is None else str(tuple(M.shape))

        left = shape(self.L) if self.L_inv is None else f"inv{shape(self.L_inv)}"
        right = shape(self.R) if self.R_inv is None else f"inv{shape(self.R_inv)}"
        return f"{type(self).__name__}({self.base!r}, L={left}, R={right})"
