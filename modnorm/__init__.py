"""modnorm: optimizers generated from the geometry of a network.

Each parameter declares a norm (with its dual map, the LMO) and a preconditioner; the
framework composes them into a modular norm over the network and derives the update.
"""

from .geometry import Geometry
from .norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv, spectral_scale
from .polar import orthogonalize, singular_values
from .preconditioned import DNorm, LRNorm
from .auto import DEFAULT_RULES, Rules, register_bond, register_function, register_rule
from .composition import Atom, Bond, Chain, Node, Tared, Tuple
from .layers import Parallel, Residual, Scale, Sequential
from .describe import describe, describe_rows
from .module import GeometryError, analyze, budgets, geometries, modular_norm, structure
from .testing import NormLawError, check_norm
from .optim import (
    ConfigError,
    ModnormOptimizer,
    OptimizerConfig,
    Preconditioner,
    Recipe,
    optimizer,
    register_preconditioner,
    register_preset,
)
from .optim import matrix_presets as _matrix_presets  # noqa: F401  (registers shampoo, soap, splus, sophia, …)
from .optim.hessian import HessianDiagonal, hutchinson_diagonal
from .optim.matrix_preconditioners import SOAP, KLShampoo, Shampoo, SPlus
from .invariance import InvarianceReport, check_invariance

from .distributed import distributed_lmo, distributed_sharp
from .distributed.checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint

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
    # generated optimizer (modnorm.optim)
    "optimizer",
    "ModnormOptimizer",
    "OptimizerConfig",
    "ConfigError",
    "Recipe",
    "Preconditioner",
    "register_preconditioner",
    "register_preset",
    # torch.distributed: DDP/FSDP2 dual maps and DCP checkpoints (modnorm.distributed)
    "distributed_lmo",
    "distributed_sharp",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
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
