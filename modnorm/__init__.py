"""modnorm: optimizers generated from the geometry of a network.

Each parameter declares a norm (with its dual map, the LMO) and a preconditioner; the
framework composes them into a modular norm over the network and derives the update.
"""

from .geometry import Geometry
from .norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv, spectral_scale
from .polar import orthogonalize
from .preconditioned import DNorm, LRNorm
from .optim import (
    ConfigError,
    ModnormOptimizer,
    OptimizerConfig,
    Preconditioner,
    Recipe,
    Rule,
    optimizer,
    register_preconditioner,
    register_preset,
)

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
    "Geometry",
    # generated optimizer (modnorm.optim)
    "optimizer",
    "ModnormOptimizer",
    "OptimizerConfig",
    "ConfigError",
    "Recipe",
    "Rule",
    "Preconditioner",
    "register_preconditioner",
    "register_preset",
]
