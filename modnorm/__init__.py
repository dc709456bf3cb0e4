"""modnorm: optimizers generated from the geometry of a network.

Each parameter declares a norm (with its dual map, the LMO) and a preconditioner; the
framework composes them into a modular norm over the network and derives the update.
"""

from .geometry import Geometry
from .norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv, spectral_scale
from .polar import orthogonalize, singular_values
from .preconditioned import DNorm, LRNorm
from .testing import NormLawError, check_norm

__version__ = "0.1.0"

__all__ = [
    "Norm",
    "Frobenius",
    "Spectral",
    "Sign",
    "ColNorm",
    "RowNorm",
    "RMS",
    "SpectralConv",
    "spectral_scale",
    "DNorm",
    "LRNorm",
    "orthogonalize",
    "singular_values",
    "check_norm",
    "NormLawError",
    "Geometry",
]
