"""Orthogonalization: the polar factor ``polar(X) = U Vᵀ`` of ``X = U Σ Vᵀ`` (reduced SVD).

``orthogonalize`` works on tensors of shape ``(..., m, n)`` and treats every leading
index as an independent matrix, so same-shape matrices are orthogonalized in one batched
call (no Python loop over matrices). Iterative methods run on the short side (a tall
matrix is transposed so the Gram matrix is min(m, n)²), start from
``X₀ = X / max(‖X‖_F · safety, eps)`` so that a zero matrix maps to zero, compute in
``dtype`` and cast back to ``X``'s dtype. Each step applies an odd quintic to the
singular values::

    A = X Xᵀ;   X ← a X + (b A + c A²) X        (σ ↦ a σ + b σ³ + c σ⁵)

Methods and their measured accuracy (``python benchmarks/polar_accuracy.py --threads 1``,
docs/orthogonalization.md): worst max |σ−1| of the output over gradient-like matrices
(singular values log-uniform in [1/κ, 1]; 128×128, 512×128, 128×512), float64 compute:

- ``"jordan"`` (default 5 steps): (3.4445, −4.7750, 2.0315) every step (Keller Jordan's
  Muon, torch.optim.Muon). Does not converge: singular values that have arrived oscillate
  in [0.682, 1.134] (max |σ−1| = 0.318 for κ ≤ 1e2 at 5 steps); at 5 steps small σ still
  climbing can overshoot to 1.202, and σ ≲ 1e-3·‖X‖_F have not arrived (κ = 1e4: 0.98).
- ``"polar_express"`` (default 8 steps): the per-step minimax-optimal quintics of Amsel
  et al. 2025 (Algorithm 1: ℓ = 1e-3, degree 5), then (1.875, −1.25, 0.375) forever.
  Safety factor 1.01 in both places of the paper's reference code: the input is divided
  by 1.01·‖X‖_F and the first seven polynomials are applied as p(x/1.01). κ ≤ 1e2:
  0.13 at 5 steps, 2.5e-3 at 6, 4.7e-6 at 7, 2e-15 at 8 (float32: 3.5e-7; bf16: 5e-3
  from 6 steps on, fp16: 5e-4 from 7 on — hence ``default_steps``: 6 steps when computing
  in bf16, 7 in fp16). κ = 1e4: 0.77 at 8 steps, 0.31 at 10.
- ``"cubic"`` (default 30 steps): the classical Newton–Schulz iteration (1.5, −0.5, 0).
  Converges to the exact factor for every σ ∈ (0, √3), slowly (small σ grow ×1.5 per
  step): 2e-15 from 20 steps for κ ≤ 1e2, from 30 steps for κ = 1e4.
- ``"svd"``: the exact factor ``U 1[σ > tol] Vᵀ`` from ``torch.linalg.svd`` (float32 or
  float64; tol = σ_max·max(m, n)·machine eps): directions with numerically zero
  singular value map to zero, like the iterations' limit. Max |σ−1| ≈ 2e-15 (float64),
  2e-6 (float32). The reference for tests; on CPU it costs about as much as 5 Jordan
  steps for matrices up to 512×128.

Non-finite input gives non-finite output for every method (never a silently finite one).

``products`` chooses how the products of a batch run — one 3-D call per product over the
batch ("batched", the default) or the iteration matrix by matrix with 2-D products
("loop"); ``"auto"`` measures which is faster per call shape (``modnorm.polar_products``).
The two differ in rounding only (the dtype's floor), not in the polynomial applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ._numerics import vector_norm
from .polar_dtype import auto_dtype
from .polar_products import DEFAULT_CHOICES, FORMS, Coefficients, ProductChoices, iterate_batched, iterate_loop, product_key

__all__ = [
    "orthogonalize",
    "check_options",
    "check_products",
    "default_steps",
    "ns_coefficients",
    "singular_values",
    "METHODS",
    "DEFAULT_STEPS",
    "JORDAN",
    "POLAR_EXPRESS",
    "POLAR_EXPRESS_SAFETY",
    "CUBIC",
]

Method = Literal["jordan", "polar_express", "cubic", "svd"]

JORDAN: Coefficients = (3.4445, -4.7750, 2.0315)
# Amsel, Persson, Musco, Gower (2025), "The Polar Express", Algorithm 1 (ℓ = 1e-3, u = 1,
# degree 5); the last entry is the limit the optimal polynomials reach numerically.
POLAR_EXPRESS: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_SAFETY: float = 1.01
CUBIC: Coefficients = (1.5, -0.5, 0.0)

METHODS: tuple[str, ...] = ("jordan", "polar_express", "cubic", "svd")
DEFAULT_STEPS: dict[str, int] = {"jordan": 5, "polar_express": 8, "cubic": 30, "svd": 0}
# Fewer steps where the compute dtype's rounding floor is reached earlier (measured, module docstring).
_LOW_PRECISION_STEPS: dict[tuple[str, torch.dtype], int] = {("polar_express", torch.bfloat16): 6, ("polar_express", torch.float16): 7}
# Extra factor on ‖X‖_F in the input normalization.
_INPUT_SAFETY: dict[str, float] = {"jordan": 1.0, "polar_express": POLAR_EXPRESS_SAFETY, "cubic": 1.0}


def _with_safety(abc: Coefficients, s: float) -> Coefficients:
    """Coefficients of x ↦ p(x/s) for p(x) = a x + b x³ + c x⁵."""
    a, b, c = abc
    return (a / s, b / s**3, c / s**5)


_POLAR_EXPRESS_SAFE: tuple[Coefficients, ...] = tuple(_with_safety(abc, POLAR_EXPRESS_SAFETY) for abc in POLAR_EXPRESS[:-1])


def ns_coefficients(method: str, steps: int) -> list[Coefficients]:
    """The (a, b, c) used at each of ``steps`` iterations of ``method`` (safety factors included)."""
    if method == "jordan":
        return [JORDAN] * steps
    if method == "polar_express":
        return (list(_POLAR_EXPRESS_SAFE) + [POLAR_EXPRESS[-1]] * steps)[:steps]
    if method == "cubic":
        return [CUBIC] * steps
    raise ValueError(f"ns_coefficients: method={method!r} has no Newton–Schulz coefficients; choose one of {METHODS[:-1]}")


def default_steps(method: str, dtype: torch.dtype) -> int:
    """Steps of ``method`` when computing in ``dtype``: ``DEFAULT_STEPS``, except Polar Express in
    bf16 (6) and fp16 (7), which reach their rounding floor there (more steps do not help)."""
    return _LOW_PRECISION_STEPS.get((method, dtype), DEFAULT_STEPS[method])


def check_options(owner: str, method: str, steps: int | None, dtype: torch.dtype | str | None, eps: float) -> None:
    """Validate the polar-factor options shared by ``orthogonalize`` and ``Spectral``; errors name ``owner``."""
    if method not in METHODS:
        raise ValueError(f"{owner}: unknown method={method!r}; choose one of {METHODS}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{owner}: steps must be a positive int or None (the method's default, {DEFAULT_STEPS}), got {steps!r}")
    if dtype is not None and dtype != "auto" and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"{owner}: dtype must be a floating torch.dtype such as torch.bfloat16, \"auto\" or None, got {dtype!r}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{owner}: eps must be a positive float, got {eps!r}")


def check_products(owner: str, products: object) -> None:
    """Validate a ``products`` option (``FORMS``, "auto", None or a ``ProductChoices``); errors name ``owner``."""
    if products is not None and products != "auto" and products not in FORMS and not isinstance(products, ProductChoices):
        raise ValueError(f"{owner}: products must be one of {FORMS}, \"auto\" or None (batched), got {products!r}")


def _check(X: Tensor, method: str, steps: int | None, dtype: torch.dtype | str | None, eps: float) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"orthogonalize: X must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim < 2:
        raise ValueError(f"orthogonalize: X must have shape (..., m, n) with at least 2 dims, got shape {tuple(X.shape)}")
    if X.is_complex() or not X.is_floating_point():
        raise TypeError(f"orthogonalize: X must be a real floating-point tensor, got dtype {X.dtype}")
    if X.is_sparse:
        raise TypeError("orthogonalize: sparse tensors are not supported; call .to_dense() first")
    check_options("orthogonalize", method, steps, dtype, eps)


def _split_nonfinite(X: Tensor) -> tuple[Tensor, Tensor]:
    """(X with non-finite entries zeroed, mask (..., 1, 1) of matrices that had any)."""
    finite = torch.isfinite(X)
    bad = ~finite.all(dim=(-2, -1), keepdim=True)
    return torch.where(finite, X, torch.zeros((), dtype=X.dtype, device=X.device)), bad


def _svd_dtype(X: Tensor, dtype: torch.dtype | str | None) -> torch.dtype:
    want = X.dtype if dtype is None or dtype == "auto" else dtype
    return want if want in (torch.float32, torch.float64) else torch.float32


def singular_values(X: Tensor, dtype: torch.dtype | str | None = None) -> Tensor:
    """Singular values (..., min(m, n)) of every matrix in ``X``, in X's dtype.

    Computed in float32/float64 (LAPACK has no low-precision SVD); a matrix with a
    non-finite entry gets NaN singular values instead of LAPACK's convergence error.
    """
    work, bad = _split_nonfinite(X.to(_svd_dtype(X, dtype)))
    S = torch.linalg.svdvals(work)
    return S.masked_fill(bad.squeeze(-1), float("nan")).to(X.dtype)


def _svd_polar(X: Tensor, dtype: torch.dtype | str | None) -> Tensor:
    work, bad = _split_nonfinite(X.to(_svd_dtype(X, dtype)))
    U, S, Vh = torch.linalg.svd(work, full_matrices=False)
    tol = S.amax(dim=-1, keepdim=True) * max(work.shape[-2:]) * torch.finfo(work.dtype).eps
    keep = (S > tol).to(work.dtype)
    O = (U * keep.unsqueeze(-2)) @ Vh
    return O.masked_fill(bad, float("nan")).to(X.dtype)


def _power_of_two_scale(Y: Tensor) -> Tensor:
    """2^-k per matrix with max |2^-k Y| in [0.5, 1) (1 for a zero or non-finite matrix)."""
    peak = Y.abs().amax(dim=(-2, -1), keepdim=True)
    scale = torch.ldexp(torch.ones_like(peak), -torch.frexp(peak).exponent)
    return torch.where((peak > 0) & peak.isfinite(), scale, torch.ones_like(peak))


def _form(products: str | ProductChoices | None, Y: Tensor) -> str:
    """"batched" or "loop" for the (count, n, m) batch Y (n ≤ m) in its compute dtype."""
    if products is None or isinstance(products, str) and products != "auto":
        return products or "batched"
    table = DEFAULT_CHOICES if products == "auto" else products
    b, n, m = Y.shape
    if torch.compiler.is_compiling():  # never probe while tracing: a recorded choice, else batched
        return table.choices.get(product_key(Y.device, Y.dtype, b, n, m), "batched")
    return table.resolve(Y.device, Y.dtype, b, n, m)


_SAFE_NORM: tuple[float, float] = (2.0**-60, 2.0**60)
"""Frobenius norms for which a same-range cast (float32 → bf16) can neither overflow nor flush an entry that matters."""


def same_range(dtype: torch.dtype, source: torch.dtype) -> bool:
    """Whether ``dtype`` has (at least) the exponent range of ``source`` (bf16 and float32)."""
    return math.frexp(torch.finfo(dtype).max)[1] >= math.frexp(torch.finfo(source).max)[1]


def compute_dtype(device: torch.device, x_dtype: torch.dtype, short_side: int, dtype: torch.dtype | str | None) -> torch.dtype:
    """The iteration's dtype for an input of ``x_dtype`` on ``device`` (``orthogonalize``'s ``dtype`` option)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else x_dtype
    if dtype == "auto":
        return auto_dtype(device, x_dtype, short_side)
    return dtype  # type: ignore[return-value]


def narrow_into(out: Tensor, X: Tensor) -> Tensor:
    """``out`` ← X, matrix by matrix, in out's narrower dtype, such that the cast neither overflows
    nor flushes to 0: each matrix is scaled by 2^-k first (max |2^-k X| in [0.5, 1); exact, so the
    normalized input is unchanged) — except on a CPU, when the cast keeps the exponent range
    (float32 → bf16) and the matrix's ‖X‖_F is in ``_SAFE_NORM``: a plain cast (2^-k commutes
    with the rounding there). One matrix (m, n) or a batch (..., m, n); returns ``out``."""
    if X.device.type == "cpu" and same_range(out.dtype, X.dtype) and not torch.compiler.is_compiling():  # a host check
        nrm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
        safe = (nrm >= _SAFE_NORM[0]) & (nrm <= _SAFE_NORM[1])  # False for NaN/inf too
        if bool(safe.all()):
            return out.copy_(X)
        return torch.mul(X, torch.where(safe, torch.ones_like(nrm), _power_of_two_scale(X)), out=out)  # × 1 is exact
    return torch.mul(X, _power_of_two_scale(X), out=out)


def _to_compute(X: Tensor, dtype: torch.dtype) -> Tensor:
    """X as a contiguous (count, m, n) batch in ``dtype``: a plain cast into a dtype of no smaller
    range, else ``narrow_into`` (no float32 temporaries where a plain cast is safe)."""
    m, n = X.shape[-2:]
    if torch.finfo(dtype).max >= torch.finfo(X.dtype).max:
        return X.to(dtype).reshape(-1, m, n)
    return narrow_into(torch.empty(X.shape, dtype=dtype, device=X.device), X).reshape(-1, m, n)


_ROUNDED_NORM: tuple[float, float] = (2.0**-62, 2.0**62)
"""Where a bf16 batch's Frobenius norm with float32 accumulation is accurate (its squares stay float32 normals)."""


def _rounded_norm(Y: Tensor) -> Tensor:
    """‖Y‖_F per matrix of a bf16 batch, as float32: torch.optim.Muon's (float32 accumulation, rounded
    to bf16) where it lies in ``_ROUNDED_NORM``, which holds for every batch ``narrow_into`` makes
    from float32, so such a batch gives the bits of its float32 source; elsewhere (squares that
    overflow or underflow) the scaled norm ``m·‖Y/m‖``."""
    fast = torch.linalg.vector_norm(Y, dim=(-2, -1), keepdim=True).float()
    ok = (fast >= _ROUNDED_NORM[0]) & (fast <= _ROUNDED_NORM[1])
    if Y.device.type == "cpu" and not torch.compiler.is_compiling() and bool(ok.all()):  # a host check
        return fast
    return torch.where(ok, fast, vector_norm(Y, dim=(-2, -1), keepdim=True).float())


def _newton_schulz(X: Tensor, coefficients: Sequence[Coefficients], safety: float, eps: float, dtype: torch.dtype,
                   products: str | ProductChoices | None = None, narrow: bool = False, overwrite: bool = False,
                   release: bool = False) -> Tensor:
    """Run the quintic iteration on the short side of every matrix of X, batched or matrix by matrix;
    ``narrow``: return the compute dtype when it is narrower than X's (not cast back); ``overwrite``:
    X is the caller's scratch; ``release``: X's storage is released once copied (``orthogonalize``)."""
    m, n = X.shape[-2:]
    out_shape, out_dtype = X.shape, X.dtype
    Y = _to_compute(X, dtype)
    own = overwrite or dtype != X.dtype  # Y is _to_compute's copy, or X itself may be overwritten
    if release and Y.untyped_storage().data_ptr() != X.untyped_storage().data_ptr():
        X.set_()  # the iteration reads only its copy
    if m > n:
        Y = Y.mT
    if torch.finfo(dtype).max < torch.finfo(X.dtype).max:  # narrowed by _to_compute: |Y| < 1 or a safe norm, no prescaling
        norm = torch.linalg.vector_norm(Y, dim=(-2, -1), keepdim=True).float()  # float32 accumulation, as torch.optim.Muon
    elif torch.finfo(dtype).bits < 32 and same_range(dtype, torch.float32):
        norm = _rounded_norm(Y)
    else:
        norm = vector_norm(Y.to(torch.promote_types(dtype, torch.float32)), dim=(-2, -1), keepdim=True)
    scale = (norm * safety).clamp_min(eps).to(dtype)
    Y = Y.div_(scale) if own else Y / scale
    Y = iterate_loop(Y, coefficients) if _form(products, Y) == "loop" else iterate_batched(Y, coefficients, scratch=own)
    if m > n:
        Y = Y.mT
    if narrow and torch.finfo(dtype).bits < torch.finfo(out_dtype).bits:
        return Y.reshape(out_shape)
    return Y.to(out_dtype).reshape(out_shape)  # cast first: a transposed result is copied once, not twice


def orthogonalize(
    X: Tensor,
    method: Method | str = "polar_express",
    steps: int | None = None,
    dtype: torch.dtype | str | None = None,
    eps: float = 1e-7,
    coefficients: Sequence[Coefficients] | None = None,
    products: str | ProductChoices | None = None,
    narrow: bool = False,
    overwrite: bool = False,
    release: bool = False,
) -> Tensor:
    """Approximate ``U Vᵀ`` for every matrix in ``X`` of shape ``(..., m, n)``.

    Args:
        X: real floating tensor, at least 2-D; leading dims are a batch.
        method: "jordan", "polar_express", "cubic" or "svd" (exact); see the module docstring
            for each method's measured accuracy.
        steps: iterations (≥ 1); ``None`` takes ``default_steps(method, compute dtype)``
            (Polar Express: 8, or 6 in bf16). Ignored by "svd".
        dtype: compute dtype; ``None`` means bf16 for iterations on CUDA, else X's dtype;
            ``"auto"`` means ``modnorm.polar_dtype.auto_dtype(X.device, X.dtype, min(m, n))``
            (float64 stays float64, else bf16 where the device multiplies matrices of this
            size fast, else float32).
            "svd" computes in float32 when asked for a lower precision. In bf16 the input is X
            cast by ``narrow_into`` and ‖X‖_F is taken as torch.optim.Muon does (float32
            accumulation, rounded to bf16), so a float32 X and its ``narrow_into`` bf16 cast
            give the same bits.
        eps: floor of the normalizer ``‖X‖_F·safety`` (so a zero matrix gives zero).
        coefficients: explicit per-step (a, b, c), used as given (no safety factor, input
            normalized by ‖X‖_F); overrides ``method``'s schedule, ``steps`` defaults to
            its length and longer runs repeat the last triple. E.g. torch.optim.Muon's
            ``ns_coefficients`` with ``steps=5``.
        products: how a batch's products run: "batched" (None: one 3-D call per product),
            "loop" (2-D products, matrix by matrix), "auto" (measured per call shape and
            recorded, ``modnorm.polar_products``) or a ``ProductChoices`` table. Changes the
            rounding only. Ignored by "svd".
        narrow: return the iteration's compute dtype when it is narrower than X's (bf16 for a
            float32 X; every value then upcasts exactly): a caller that only adds the result to
            X's dtype saves the cast's copy and half the memory.
        overwrite: X is the caller's scratch, which the iteration may overwrite (saves a copy when
            X is already in the compute dtype).
        release: the caller gives X up: once the iteration has its own copy of X (a narrower or
            wider compute dtype), X's storage is released (``X.set_()``: X becomes an empty
            tensor), so a large scratch input does not stay alive during the iteration.

    Returns:
        A tensor of X's shape, in X's dtype (or the narrower compute dtype, with ``narrow``).
    """
    _check(X, method, steps, dtype, eps)
    check_products("orthogonalize", products)
    if coefficients is not None:
        schedule = [tuple(float(v) for v in abc) for abc in coefficients]
        if not schedule or any(len(abc) != 3 for abc in schedule):
            raise ValueError("orthogonalize: coefficients must be a non-empty sequence of (a, b, c) triples")
        n = len(schedule) if steps is None else steps
        schedule = [schedule[min(i, len(schedule) - 1)] for i in range(n)]
        safety = 1.0
    elif method == "svd":
        return X.clone() if X.numel() == 0 else _svd_polar(X, dtype)
    else:
        schedule = None
        safety = _INPUT_SAFETY[method]
    if X.numel() == 0:
        return X.clone()
    dtype = compute_dtype(X.device, X.dtype, min(X.shape[-2:]), dtype)
    if schedule is None:
        schedule = ns_coefficients(method, default_steps(method, dtype) if steps is None else steps)
    return _newton_schulz(X, schedule, safety, eps, dtype, products, narrow, overwrite, release)
