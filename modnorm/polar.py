"""Orthogonalization: the polar factor ``polar(X) = U Vᵀ`` of ``X = U Σ Vᵀ``.

``orthogonalize`` works on tensors of shape ``(..., m, n)`` and treats every leading
index as an independent matrix, so same-shape matrices are orthogonalized in one batched
call. Iterative methods run on the short side (a tall matrix is transposed), start from
``X / max(‖X‖_F · safety, eps)`` so that a zero matrix maps to zero, and compute in
``dtype`` (bf16 on CUDA by default) before casting back to ``X``'s dtype.

Methods (each step is ``A = X Xᵀ; X ← a X + (b A + c A²) X``):

- ``"jordan"``: (3.4445, −4.7750, 2.0315) every step, 5 steps. Fast; singular values of
  the result land roughly in [0.7, 1.2] rather than at 1 (see docs/orthogonalization.md).
- ``"polar_express"``: the per-step optimal coefficients of Amsel et al. (2025), then the
  quintic Newton–Schulz (1.875, −1.25, 0.375); input scaled by 1/1.01 extra for safety.
- ``"cubic"``: the classical Newton–Schulz iteration (1.5, −0.5, 0). Converges to the
  exact polar factor for all σ ∈ (0, √3) but slowly for small σ: σ grows ×1.5 a step.
- ``"svd"``: the exact factor ``U 1[σ > tol] Vᵀ`` from ``torch.linalg.svd`` (float32 or
  higher); directions with zero singular value map to zero, like the iterations' limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["orthogonalize", "ns_coefficients", "METHODS", "DEFAULT_STEPS"]

Coefficients = tuple[float, float, float]
Method = Literal["jordan", "polar_express", "cubic", "svd"]

JORDAN: Coefficients = (3.4445, -4.7750, 2.0315)
POLAR_EXPRESS: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)
QUINTIC: Coefficients = (1.875, -1.25, 0.375)
CUBIC: Coefficients = (1.5, -0.5, 0.0)

METHODS: tuple[str, ...] = ("jordan", "polar_express", "cubic", "svd")
DEFAULT_STEPS: dict[str, int] = {"jordan": 5, "polar_express": 5, "cubic": 30, "svd": 0}
SAFETY: dict[str, float] = {"jordan": 1.0, "polar_express": 1.01, "cubic": 1.0}


def ns_coefficients(method: str, steps: int) -> list[Coefficients]:
    """The (a, b, c) used at each of ``steps`` Newton–Schulz iterations of ``method``."""
    if method == "jordan":
        return [JORDAN] * steps
    if method == "polar_express":
        head = list(POLAR_EXPRESS[:steps])
        return head + [QUINTIC] * (steps - len(head))
    if method == "cubic":
        return [CUBIC] * steps
    raise ValueError(f"orthogonalize: method={method!r} has no Newton–Schulz coefficients; choose one of {METHODS[:-1]}")


def _check(X: Tensor, method: str, steps: int | None) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"orthogonalize: X must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim < 2:
        raise ValueError(f"orthogonalize: X must have shape (..., m, n) with at least 2 dims, got shape {tuple(X.shape)}")
    if X.is_complex() or not X.is_floating_point():
        raise TypeError(f"orthogonalize: X must be a real floating-point tensor, got dtype {X.dtype}")
    if X.is_sparse:
        raise TypeError("orthogonalize: sparse tensors are not supported; call .to_dense() first")
    if method not in METHODS:
        raise ValueError(f"orthogonalize: unknown method={method!r}; choose one of {METHODS}")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"orthogonalize: steps must be a non-negative int, got {steps!r}")


def _svd_polar(X: Tensor) -> Tensor:
    work = X if X.dtype in (torch.float32, torch.float64) else X.float()
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    tol = S.amax(dim=-1, keepdim=True) * max(work.shape[-2:]) * torch.finfo(work.dtype).eps
    keep = (S > tol).to(work.dtype)
    # Non-finite input must stay non-finite: the mask would otherwise hide it.
    keep = keep + (S - S)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(X.dtype)


def _newton_schulz(X: Tensor, coefficients: Sequence[Coefficients], safety: float, eps: float, dtype: torch.dtype) -> Tensor:
    batch_shape = X.shape[:-2]
    Y = X.to(dtype).reshape(-1, *X.shape[-2:])
    tall = Y.shape[-2] > Y.shape[-1]
    if tall:
        Y = Y.mT
    scale = (Y.norm(dim=(-2, -1), keepdim=True) * safety).clamp_min(eps)
    Y = Y / scale
    for a, b, c in coefficients:
        A = Y @ Y.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c) if c != 0.0 else A * b
        Y = torch.baddbmm(Y, B, Y, beta=a, alpha=1.0)
    if tall:
        Y = Y.mT
    return Y.reshape(*batch_shape, *Y.shape[-2:]).to(X.dtype)


def orthogonalize(
    X: Tensor,
    method: Method | str = "polar_express",
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    eps: float = 1e-7,
    coefficients: Sequence[Coefficients] | None = None,
) -> Tensor:
    """Approximate ``U Vᵀ`` for every matrix in ``X`` of shape ``(..., m, n)``.

    Args:
        X: real floating tensor, at least 2-D; leading dims are a batch.
        method: "jordan", "polar_express", "cubic" or "svd" (exact).
        steps: Newton–Schulz iterations; ``None`` takes ``DEFAULT_STEPS[method]``.
        dtype: compute dtype of the iteration; ``None`` means bf16 on CUDA, else X's dtype.
        eps: floor of the normalizer ``‖X‖_F`` (torch.optim.Muon's convention), so zero gives zero.
        coefficients: explicit per-step (a, b, c); overrides ``method``'s schedule (and
            then ``steps`` defaults to its length), e.g. torch.optim.Muon's ``ns_coefficients``.

    Returns:
        A tensor of X's shape and dtype.
    """
    _check(X, method, steps)
    if method == "svd" and coefficients is None:
        return _svd_polar(X)
    if coefficients is None:
        n = DEFAULT_STEPS[method] if steps is None else steps
        schedule = ns_coefficients(method, n)
        safety = SAFETY[method]
    else:
        coefficients = [tuple(float(v) for v in abc) for abc in coefficients]
        if any(len(abc) != 3 for abc in coefficients):
            raise ValueError("orthogonalize: coefficients must be a sequence of (a, b, c) triples")
        n = len(coefficients) if steps is None else steps
        schedule = [coefficients[min(i, len(coefficients) - 1)] for i in range(n)]
        safety = 1.0
    if dtype is None:
        dtype = torch.bfloat16 if X.is_cuda else X.dtype
    if X.numel() == 0:
        return X.clone()
    return _newton_schulz(X, schedule, safety, eps, dtype)
