"""Default geometries and bond sensitivities, shared by ``modnorm.layers`` and the rules for torch.nn.

| parameter | norm | role |
|---|---|---|
| hidden Linear weight (d_out, d_in) | ``Spectral()`` (RMS→RMS) | hidden |
| output head weight | ``RowNorm()`` (RMS→ℓ∞: bounds the change of every logit) | head |
| Conv weight (d_out, d_in/g, *k) | ``SpectralConv(kernel_dims)``; ``Stacked(…, g)`` for g > 1 groups | conv |
| transposed conv weight (d_in, d_out/g, *k) | ``Transposed(SpectralConv(kernel_dims))``, stacked likewise | conv |
| Embedding weight (num_embeddings, dim) | ``ColNorm(layout="embedding")`` (each token's vector in RMS) | embedding |
| bias, norm-layer gain/shift (any 1-D) | ``RMS()`` | vector |

Every default uses the preconditioner ``DEFAULT_PRECONDITIONER = "adam"`` (the MuAdam design:
the base norm's LMO taken in Adam's D-norm).

Bond sensitivities are Lipschitz constants in the RMS norm: 1 for ReLU-like maps, the
maximum slope for GELU (Φ(√2) + √2·φ(√2) ≈ 1.1289) and SiLU (≈ 1.0998), 1/4 for the
sigmoid, 0 for operations whose output does not depend on the input's values
(shapes, constants).
"""

from __future__ import annotations

import math

from ..geometry import Geometry
from ..norms import RMS, ColNorm, Norm, RowNorm, Spectral, SpectralConv
from ..blocks import Stacked, Transposed

__all__ = [
    "DEFAULT_PRECONDITIONER",
    "GELU_MAX_SLOPE",
    "SILU_MAX_SLOPE",
    "hidden",
    "head",
    "embedding",
    "conv",
    "conv_norm",
    "vector",
]

DEFAULT_PRECONDITIONER = "adam"

GELU_MAX_SLOPE: float = 0.5 * (1.0 + math.erf(1.0)) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(2.0 * math.pi)
"""max_x GELU'(x), attained at x = √2."""

SILU_MAX_SLOPE: float = 1.0998393201288648
"""max_x SiLU'(x) = σ(x)(1 + x(1 − σ(x))), attained at x ≈ 2.39936 (computed numerically)."""


def hidden(norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else Spectral(), preconditioner, "hidden")


def head(norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else RowNorm(layout="linear"), preconditioner, "head")


def embedding(norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else ColNorm(layout="embedding"), preconditioner, "embedding")


def conv_norm(kernel_dims: int, groups: int = 1, transposed: bool = False) -> Norm:
    """A conv kernel's norm: SpectralConv per group (each group its own map), (in, out) layouts transposed."""
    base: Norm = SpectralConv(kernel_dims)
    if transposed:
        base = Transposed(base)
    return Stacked(base, groups) if groups > 1 else base


def conv(
    kernel_dims: int, norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER, *,
    groups: int = 1, transposed: bool = False,
) -> Geometry:
    return Geometry(norm if norm is not None else conv_norm(kernel_dims, groups, transposed), preconditioner, "conv")


def vector(norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else RMS(), preconditioner, "vector")
