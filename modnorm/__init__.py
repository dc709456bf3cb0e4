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
from .auto import DEFAULT_RULES, Rules, register_bond, register_function, register_rule
from .composition import Atom, Bond, Chain, Node, Tared, Tuple
from .layers import Parallel, Residual, Scale, Sequential
from .describe import describe, describe_rows
from .module import GeometryError, analyze, budgets, geometries, modular_norm, structure
from .optim import matrix_presets as _matrix_presets  # noqa: F401  (registers shampoo, soap, splus, sophia, …)
from .optim.hessian import HessianDiagonal, hutchinson_diagonal
from .optim.matrix_preconditioners import SOAP, KLShampoo, Shampoo, SPlus
from .invariance import InvarianceReport, check_invariance

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
    "geometries",
    "describe",
    "describe_rows",
    "budgets",
    "modular_norm",
    "structure",
    "analyze",
    "GeometryError",
    "Rules",
    "DEFAULT_RULES",
    "register_rule",
    "register_bond",
    "register_function",
    "Sequential",
    "Residual",
    "Parallel",
    "Scale",
    "Node",
    "Atom",
    "Bond",
    "Chain",
    "Tuple",
    "Tared",
    # matrix and Hessian preconditioners, invariance checks
    "Shampoo",
    "KLShampoo",
    "SOAP",
    "SPlus",
    "HessianDiagonal",
    "hutchinson_diagonal",
    "check_invariance",
    "InvarianceReport",
]
