"""Numerically safe building blocks shared by the norms and the orthogonalization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def safe_div(X: Tensor, d: Tensor) -> Tensor:
    """X / d for a norm d ≥ 0 of X: 0 where d == 0 (X is then 0 too); non-finite X stays non-finite."""
    return X / d.clamp_min(torch.finfo(d.dtype).tiny)


def max_abs(X: Tensor, dim: int | Sequence[int]) -> Tensor:
    """max |X| over ``dim`` (kept), replaced by 1 where it is 0 or non-finite: a safe divisor."""
    m = X.abs().amax(dim=dim, keepdim=True)
    return torch.where((m > 0) & torch.isfinite(m), m, torch.ones((), dtype=m.dtype, device=m.device))


def vector_norm(X: Tensor, dim: int | Sequence[int], keepdim: bool = False) -> Tensor:
    """ℓ2 norm over ``dim`` without overflow or underflow: m·‖X/m‖ with m = max |X|.

    A plain ‖X‖₂ squares the entries, so 1e-200 (float64) or 1e-25 (float32) underflows to
    0 and 1e200 overflows to inf; the scaled form is exact up to rounding whenever the
    result is representable. NaN/inf entries give NaN/inf.
    """
    m = max_abs(X, dim)
    n = m * torch.linalg.vector_norm(X / m, dim=dim, keepdim=True)
    return n if keepdim else n.squeeze(dim)


def normalize(X: Tensor, dim: int | Sequence[int]) -> Tensor:
    """X / ‖X‖₂ over ``dim`` (0 for a zero slice), scaled first so tiny or huge X stay accurate."""
    Y = X / max_abs(X, dim)
    return safe_div(Y, torch.linalg.vector_norm(Y, dim=dim, keepdim=True))
