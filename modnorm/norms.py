"""Norms on parameter tensors, with their dual norms and dual maps (LMOs).

For a norm ‖·‖ and a gradient G:

- ``dual(G)  = max_{‖T‖≤1} ⟨G, T⟩``
- ``lmo(G)   = argmax_{‖T‖≤1} ⟨G, T⟩``, so ``⟨G, lmo(G)⟩ = dual(G)`` and ``value(lmo(G)) ≤ 1``
- ``sharp(G) = dual(G) · lmo(G)`` (the unnormalized steepest-descent direction)

Every norm acts on the last ``ndim`` dimensions of a tensor and treats the leading ones
as a batch: ``value`` and ``dual`` return a tensor of the batch shape, ``lmo`` and
``sharp`` one of the input's shape. Matrices use the nn.Linear layout ``(d_out, d_in)``.
A zero gradient (or zero column/row) gives a zero direction, never NaN; a non-finite
gradient gives a non-finite direction, never a silently finite one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ._numerics import normalize, vector_norm
from .norm_base import Norm, upcast_into
from .polar import check_options, check_products, compute_dtype, narrow_into, orthogonalize, same_range, singular_values
from .polar_products import ProductChoices

__all__ = [
    "Norm",
    "Frobenius",
    "Spectral",
    "Sign",
    "ColNorm",
    "RowNorm",
    "RMS",
    "SpectralConv",
    "CONV_LAYOUTS",
    "spectral_scale",
    "SCALES",
]


class Frobenius(Norm):
    """Euclidean norm over the last ``ndim`` dims: ‖W‖_F; lmo(G) = G/‖G‖_F; dual = ‖G‖_F.

    Its sharp operator is the identity, which is why it underlies SGD and (with a
    D-preconditioner) Adam.
    """

    def __init__(self, ndim: int = 2) -> None:
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"Frobenius: ndim must be a positive int, got {ndim!r}")
        self.ndim = ndim

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return vector_norm(W, dim=self._dims())

    dual = value

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return normalize(G, dim=self._dims())

    def sharp(self, G: Tensor) -> Tensor:
        self._check(G)
        return G.clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ndim={self.ndim})"


class Sign(Norm):
    """ℓ∞ norm of the entries (ℓ1→ℓ∞ operator norm): max |W_ij|; lmo(G) = sign(G); dual = Σ|G_ij|."""

    def __init__(self, ndim: int = 2) -> None:
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"Sign: ndim must be a positive int, got {ndim!r}")
        self.ndim = ndim

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return W.abs().amax(dim=self._dims())

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return G.abs().sum(dim=self._dims())

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        # torch.sign(nan) is 0; adding (G - G) keeps NaN/inf entries non-finite.
        return torch.sign(G) + (G - G)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ndim={self.ndim})"


SCALES: tuple[str, ...] = ("rms", "original", "match_rms_adamw", "none")


def spectral_scale(scale: str | float, d_out: int, d_in: int) -> float:
    """Factor s of the spectral LMO ``s · U Vᵀ`` for a (d_out, d_in) matrix.

    - "rms": √(d_out/d_in), the RMS→RMS operator norm (modula, Scion, MuAdam).
    - "original": √max(1, d_out/d_in) (torch.optim.Muon's default ``adjust_lr_fn``).
    - "match_rms_adamw": 0.2·√max(d_out, d_in) (Moonlight; update RMS ≈ AdamW's).
    - "none": 1, the plain spectral norm σ_max.
    - a positive float: that factor.
    """
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not scale > 0:
            raise ValueError(f"spectral scale must be positive, got {scale!r}")
        return float(scale)
    if scale == "rms":
        return math.sqrt(d_out / d_in)
    if scale == "original":
        return math.sqrt(max(1.0, d_out / d_in))
    if scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(d_out, d_in))
    if scale == "none":
        return 1.0
    raise ValueError(f"spectral scale must be one of {SCALES} or a positive float, got {scale!r}")


def _dtype_repr(dtype: torch.dtype | str | None, products: str | ProductChoices | None = None) -> str:
    """``, dtype=bfloat16`` for a set polar-factor compute dtype, nothing when None (the default);
    likewise ``, products='loop'`` for a fixed product form ("auto" is measured per call shape and
    recorded by the optimizer, ``ModnormOptimizer.ns_products_auto``)."""
    out = "" if dtype is None else f", dtype={str(dtype).removeprefix('torch.')}"
    return out + f", products={products!r}" if isinstance(products, str) and products != "auto" else out


class Spectral(Norm):
    """Scaled spectral norm of a (d_out, d_in) matrix (nn.Linear layout): ‖W‖ = σ_max(W)/s.

    With the default ``scale="rms"``, s = √(d_out/d_in) and this is the RMS→RMS operator
    norm √(d_in/d_out)·σ_max. lmo(G) = s·U Vᵀ (G = U Σ Vᵀ, reduced SVD), dual = s·Σσ_i
    (s times the nuclear norm), so sharp(G) = s²·‖G‖_nuclear·U Vᵀ (PolarGrad). Other
    ``scale`` conventions: see ``spectral_scale``.

    ``method``/``steps``/``dtype``/``eps`` choose how the polar factor U Vᵀ is computed
    (``modnorm.orthogonalize``): ``method="svd"`` is exact, the Newton–Schulz methods are
    approximate (their measured accuracy is in ``modnorm.polar``), so the LMO laws hold
    only to that accuracy. ``value`` and ``dual`` always use exact singular values.
    ``products`` ("batched", "loop", "auto" or a ``ProductChoices``) only changes how a
    batch's products execute (``modnorm.polar_products``), not the norm.
    """

    ndim = 2

    def __init__(
        self,
        scale: str | float = "rms",
        method: str = "polar_express",
        steps: int | None = None,
        dtype: torch.dtype | str | None = None,
        eps: float = 1e-7,
        products: str | ProductChoices | None = None,
    ) -> None:
        spectral_scale(scale, 1, 1)  # validate early
        check_options(type(self).__name__, method, steps, dtype, eps)
        check_products(type(self).__name__, products)
        self.scale, self.method, self.steps, self.dtype, self.eps = scale, method, steps, dtype, eps
        self.products = products
        self.coefficients: tuple[tuple[float, float, float], ...] | None = None  # explicit (a, b, c) per step (``orthogonalize``)

    def expected_shape(self) -> str:
        return "(..., d_out, d_in)"

    def _s(self, X: Tensor) -> float:
        return spectral_scale(self.scale, X.shape[-2], X.shape[-1])

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return singular_values(W).amax(dim=-1) / self._s(W)

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return singular_values(G).sum(dim=-1) * self._s(G)

    def _polar(self, G: Tensor, narrow: bool = False, overwrite: bool = False, release: bool = False) -> Tensor:
        """The polar factor U Vᵀ of each matrix (``modnorm.orthogonalize`` with this norm's options)."""
        return orthogonalize(G, method=self.method, steps=self.steps, dtype=self.dtype, eps=self.eps, coefficients=self.coefficients,
                             products=self.products, narrow=narrow, overwrite=overwrite, release=release)

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        O = self._polar(G)  # a new tensor: scaled in place
        s = self._s(G)
        return O if s == 1.0 else O.mul_(s)  # × 1 is exact: no copy

    def lmo_step(self, G: Tensor) -> Tensor:
        """``lmo``, in Newton–Schulz's narrower compute dtype when the scale is 1 (values upcast
        exactly); with another scale, upcast into the scratch G and scaled there (``Norm.lmo_step``)."""
        self._check(G)
        O = self._polar(G, narrow=True, overwrite=True)
        s = self._s(G)
        return O if s == 1.0 else upcast_into(G, O).mul_(s)

    def lmo_parts(self, G: Tensor) -> tuple[Tensor, float] | None:
        """(the narrow polar factor, s) when Newton–Schulz runs in a narrower dtype of G's exponent
        range (``Norm.lmo_parts``); G is released once narrowed, or, given already narrowed
        (``parts_input``), orthogonalized in place."""
        if self.lmo_parts_dtype(G) is None and not self._narrowed(G):
            return None
        self._check(G)
        s = self._s(G)  # before G is released
        return self._polar(G, narrow=True, overwrite=True, release=True), s

    def _narrowed(self, G: Tensor) -> bool:
        """Whether G is already in the narrower dtype a float32 input would take (``parts_input``)."""
        if G.ndim < 2 or not G.is_floating_point() or torch.finfo(G.dtype).bits >= 32:
            return False
        return self.lmo_parts_dtype(torch.empty(0, *G.shape[-2:], device=G.device)) == G.dtype

    def lmo_parts_dtype(self, like: Tensor) -> torch.dtype | None:
        """Newton–Schulz's compute dtype for inputs like ``like`` when it is narrower than theirs with
        the same exponent range (float32 → bf16); else None."""
        if self.method == "svd" and self.coefficients is None or like.ndim < 2 or not like.is_floating_point():
            return None
        dtype = compute_dtype(like.device, like.dtype, min(like.shape[-2:]), self.dtype)
        return dtype if torch.finfo(dtype).bits < torch.finfo(like.dtype).bits and same_range(dtype, like.dtype) else None

    def step_input(self, like: Tensor) -> tuple[torch.dtype, Callable[[Tensor, Tensor], Tensor]] | None:
        """(bf16, ``narrow_into``) when ``lmo_step`` runs Newton–Schulz in a narrower dtype of the same
        exponent range as ``like``'s (float32 → bf16) and returns it (scale 1); else None."""
        cast = self.parts_input(like)
        return cast if cast is not None and self._s(like) == 1.0 else None

    def parts_input(self, like: Tensor) -> tuple[torch.dtype, Callable[[Tensor, Tensor], Tensor]] | None:
        """(bf16, ``narrow_into``) when ``lmo_parts`` runs Newton–Schulz in a narrower dtype of the same
        exponent range as ``like``'s (float32 → bf16), at any scale: Newton–Schulz normalizes its bf16
        input as it would the float32 one it narrows itself."""
        dtype = self.lmo_parts_dtype(like)
        return (dtype, narrow_into) if dtype is not None else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(scale={self.scale!r}, method={self.method!r}, steps={self.steps}"
                f"{_dtype_repr(self.dtype, self.products)})")


Layout = Literal["linear", "embedding"]


class _VectorwiseNorm(Norm):
    """Max over vectors (columns or rows) of a scaled ℓ2 norm: the shared shape of ColNorm/RowNorm.

    ``value = max_v c·‖W_v‖₂``, ``dual = Σ_v ‖G_v‖₂ / c``, ``lmo: G_v ↦ G_v / (c·‖G_v‖₂)``.
    """

    ndim = 2
    layout: Layout = "linear"

    def _axis_and_factor(self, X: Tensor) -> tuple[int, float]:
        raise NotImplementedError

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        axis, c = self._axis_and_factor(W)
        return vector_norm(W, dim=axis).amax(dim=-1) * c

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        axis, c = self._axis_and_factor(G)
        return vector_norm(G, dim=axis).sum(dim=-1) / c

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        axis, c = self._axis_and_factor(G)
        return normalize(G, dim=axis) / c

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.layout!r})"


def _check_layout(name: str, layout: str) -> Layout:
    if layout not in ("linear", "embedding"):
        raise ValueError(f"{name}: layout must be 'linear' (d_out, d_in) or 'embedding' (num_embeddings, dim), got {layout!r}")
    return layout  # type: ignore[return-value]


class ColNorm(_VectorwiseNorm):
    """ℓ1→RMS operator norm: the largest RMS norm of a column (one column per input/token).

    ``layout="linear"``: W is (d_out, d_in), ‖W‖ = max_j ‖W_:j‖₂/√d_out and lmo maps each
    column G_:j to √d_out·G_:j/‖G_:j‖₂. ``layout="embedding"``: W is nn.Embedding's
    (num_embeddings, dim), the token vectors are rows, and the same formulas act on rows
    with d_out = dim. Dual: Σ_j √d_out·‖G_:j‖₂.
    """

    def __init__(self, layout: Layout = "linear") -> None:
        self.layout = _check_layout("ColNorm", layout)

    def _axis_and_factor(self, X: Tensor) -> tuple[int, float]:
        if self.layout == "linear":
            return -2, 1.0 / math.sqrt(X.shape[-2])
        return -1, 1.0 / math.sqrt(X.shape[-1])


class RowNorm(_VectorwiseNorm):
    """RMS→ℓ∞ operator norm of a (d_out, d_in) matrix: max_i √d_in·‖W_i:‖₂.

    lmo maps each row G_i: to G_i:/(√d_in·‖G_i:‖₂); dual = Σ_i ‖G_i:‖₂/√d_in. Suits output
    heads (each logit bounded). ``layout="embedding"`` transposes, acting on columns of
    a (num_embeddings, dim) table.
    """

    def __init__(self, layout: Layout = "linear") -> None:
        self.layout = _check_layout("RowNorm", layout)

    def _axis_and_factor(self, X: Tensor) -> tuple[int, float]:
        if self.layout == "linear":
            return -1, math.sqrt(X.shape[-1])
        return -2, math.sqrt(X.shape[-2])


class RMS(Norm):
    """RMS norm of a vector w ∈ ℝ^d (biases, gains): ‖w‖₂/√d; lmo(g) = √d·g/‖g‖₂; dual = √d·‖g‖₂.

    ``ndim > 1`` takes the RMS over the last ``ndim`` dims together (d = their product):
    a (C, 1, 1) layer scale or a (1, 1, D) class token is one vector.
    """

    def __init__(self, ndim: int = 1) -> None:
        if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"RMS: ndim must be a positive int, got {ndim!r}")
        self.ndim = ndim

    def expected_shape(self) -> str:
        return "(..., d)" if self.ndim == 1 else super().expected_shape()

    def _d(self, X: Tensor) -> int:
        return math.prod(X.shape[X.ndim - self.ndim:])

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return vector_norm(W, dim=self._dims()) / math.sqrt(self._d(W))

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return vector_norm(G, dim=self._dims()) * math.sqrt(self._d(G))

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return normalize(G, dim=self._dims()) * math.sqrt(self._d(G))

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}()" if self.ndim == 1 else f"{name}(ndim={self.ndim})"


ConvLayout = Literal["positions", "flatten"]
CONV_LAYOUTS: tuple[str, ...] = ("positions", "flatten")


class SpectralConv(Norm):
    """Norm of a convolution kernel (d_out, d_in, *kernel); K = number of kernel positions (k² for k×k).

    ``layout="positions"`` (default): K·max over kernel positions of the per-position scaled
    spectral norm. The unit ball holds kernels whose every position p has ‖W_p‖ ≤ 1/K,
    which bounds the RMS→RMS norm of the whole convolution by 1. lmo(G)_p = (s/K)·U_p V_pᵀ
    per position, dual = (s/K)·Σ_p ‖G_p‖_nuclear, with s = ``spectral_scale(scale, d_out, d_in)``.

    ``layout="flatten"``: the scaled spectral norm of the (d_out, d_in·K) reshaping (the Muon
    CIFAR-10 speedruns' geometry): ‖W‖ = σ_max(W_flat)/s, lmo(G) = s·polar(G_flat) reshaped,
    dual = s·‖G_flat‖_nuclear, with s = ``spectral_scale(scale, d_out, d_in·K)`` (for "rms":
    the RMS→RMS norm of the map from a d_in·K patch to a d_out output). A different norm,
    not a faster form of the first: it is a declared choice and ``repr`` (``describe()``) says it.

    ``kernel_dims`` is 2 for Conv2d, 1 for Conv1d, 3 for Conv3d. The remaining options
    configure the polar factor (``Spectral``).
    """

    def __init__(
        self,
        kernel_dims: int = 2,
        scale: str | float = "rms",
        method: str = "polar_express",
        steps: int | None = None,
        dtype: torch.dtype | str | None = None,
        eps: float = 1e-7,
        layout: ConvLayout = "positions",
        products: str | ProductChoices | None = None,
    ) -> None:
        if kernel_dims not in (1, 2, 3):
            raise ValueError(f"SpectralConv: kernel_dims must be 1, 2 or 3, got {kernel_dims!r}")
        if layout not in CONV_LAYOUTS:
            raise ValueError(f"SpectralConv: layout must be one of {CONV_LAYOUTS} (the norm: per kernel position, or of the "
                             f"(d_out, d_in·K) reshaping), got {layout!r}")
        self.kernel_dims = kernel_dims
        self.ndim = 2 + kernel_dims
        self.layout: ConvLayout = layout
        self.spectral = Spectral(scale=scale, method=method, steps=steps, dtype=dtype, eps=eps, products=products)

    def expected_shape(self) -> str:
        ks = ", ".join(f"k{i}" for i in range(self.kernel_dims))
        return f"(..., d_out, d_in, {ks})"

    def _positions_first(self, X: Tensor) -> tuple[Tensor, int]:
        """Move kernel positions next to the batch: (..., K, d_out, d_in)."""
        k = self.kernel_dims
        batch = X.shape[: X.ndim - self.ndim]
        K = math.prod(X.shape[-k:])
        Y = X.reshape(*batch, X.shape[-k - 2], X.shape[-k - 1], K).movedim(-1, -3)
        return Y, K

    def _flat(self, X: Tensor) -> Tensor:
        """The (..., d_out, d_in·K) reshaping (a view)."""
        k = self.kernel_dims
        return X.reshape(*X.shape[: X.ndim - k - 1], -1)

    def _apply_per_position(self, X: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        Y, _ = self._positions_first(X)
        return fn(Y).movedim(-3, -1).reshape(X.shape)

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        if self.layout == "flatten":
            return self.spectral.value(self._flat(W))
        Y, K = self._positions_first(W)
        return self.spectral.value(Y).amax(dim=-1) * K

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        if self.layout == "flatten":
            return self.spectral.dual(self._flat(G))
        Y, K = self._positions_first(G)
        return self.spectral.dual(Y).sum(dim=-1) / K

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        if self.layout == "flatten":
            return self.spectral.lmo(self._flat(G)).reshape(G.shape)
        K = math.prod(G.shape[-self.kernel_dims:])
        return self._apply_per_position(G, self.spectral.lmo) / K

    def _layout_repr(self) -> str:
        return "" if self.layout == "positions" else f", layout={self.layout!r}"

    def __repr__(self) -> str:
        s = self.spectral
        return (f"{type(self).__name__}(kernel_dims={self.kernel_dims}{self._layout_repr()}, scale={s.scale!r}, "
                f"method={s.method!r}, steps={s.steps}{_dtype_repr(s.dtype, s.products)})")
