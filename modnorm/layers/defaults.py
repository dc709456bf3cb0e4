"""Default geometries and bond sensitivities, shared by ``modnorm.layers`` and the rules for torch.nn.

| parameter | norm | role |
|---|---|---|
| hidden Linear weight (d_out, d_in) | ``Spectral()`` (RMS→RMS) | hidden |
| output head weight | ``RowNorm()`` (RMS→ℓ∞: bounds the change of every logit) | head |
| Conv weight (d_out, d_in, *k) | ``SpectralConv(kernel_dims)`` | conv |
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

__all__ = [
    "DEFAULT_PRECONDITIONER",
    "GELU_MAX_SLOPE",
    "SILU_MAX_SLOPE",
    "hidden",
    "head",
    "embedding",
    "conv",
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


def conv(kernel_dims: int, norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else SpectralConv(kernel_dims), preconditioner, "conv")


def vector(norm: Norm | None = None, preconditioner: str = DEFAULT_PRECONDITIONER) -> Geometry:
    return Geometry(norm if norm is not None else RMS(), preconditioner, "vector")
