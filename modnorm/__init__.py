"""modnorm: optimizers generated from the geometry of a network.

Each parameter declares a norm (with its dual map, the LMO) and a preconditioner; the
framework composes them into a modular norm over the network and derives the update.
"""

import gc as _gc

import torch as _torch  # noqa: F401  (first, so that the freeze below covers its objects)

# Importing modnorm allocates many long-lived objects, and each garbage collection this
# triggers would rescan torch's large heap (about a third of the import time). Freeze
# what exists now and unfreeze at the end, which returns it to the oldest generation,
# collectable as before. Skipped when the application has frozen objects itself.
_FREEZE = _gc.get_freeze_count() == 0
if _FREEZE:
    _gc.freeze()

# Geometry of one tensor: norms, their LMOs, preconditioned norms, the polar factor.
from .geometry import Geometry
from .norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv, spectral_scale
from .polar import orthogonalize, singular_values
from .preconditioned import DNorm, LRNorm
from .testing import NormLawError, check_norm

# Geometry of a network: layers, composition, rules for plain torch.nn, the modular norm.
from .auto import DEFAULT_RULES, Rules, register_bond, register_function, register_rule
from .composition import Atom, Bond, Chain, Node, Tared, Tuple
from .layers import Parallel, Residual, Scale, Sequential
from .describe import describe, describe_rows
from .module import GeometryError, analyze, budgets, geometries, modular_norm, structure

# The generated optimizer, its presets and preconditioners.
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
from .optim import matrix_presets as _matrix_presets  # noqa: F401  (registers shampoo, soap, splus, sophia, …)
from .optim import zoo_presets as _zoo_presets  # noqa: F401  (registers rmsprop, lion, lamb, lars)
from .optim import prodigy as _prodigy  # noqa: F401  (registers the prodigy preset and step_size="prodigy")
from .optim import kfac as _kfac, kfac_presets as _kfac_presets  # noqa: F401  (registers kfac, ekfac, kfac_spectral)
from .optim.hessian import HessianDiagonal, hutchinson_diagonal
from .optim.kl_shampoo import KLShampoo
from .optim.matrix_preconditioners import SOAP, Shampoo, SPlus
from .invariance import InvarianceReport, check_invariance

# torch.distributed: DDP/FSDP2 dual maps; DCP checkpoints are imported on first use (below).
from .distributed import distributed_lmo, distributed_sharp

# name → module, imported on first attribute access: torch.distributed.checkpoint alone
# takes longer to import than the rest of modnorm.
_LAZY: dict[str, str] = {
    "save_checkpoint": ".distributed.checkpoint",
    "load_checkpoint": ".distributed.checkpoint",
    "CheckpointMismatchError": ".distributed.checkpoint",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modnorm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

if _FREEZE:
    _gc.unfreeze()

__version__ = "0.1.0"

__all__ = [
    # one tensor
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
    # a network
    "geometries",
    "budgets",
    "modular_norm",
    "structure",
    "analyze",
    "describe",
    "describe_rows",
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
    # the generated optimizer
    "optimizer",
    "ModnormOptimizer",
    "OptimizerConfig",
    "ConfigError",
    "Recipe",
    "Rule",
    "Preconditioner",
    "register_preconditioner",
    "register_preset",
    "Shampoo",
    "KLShampoo",
    "SOAP",
    "SPlus",
    "HessianDiagonal",
    "hutchinson_diagonal",
    "check_invariance",
    "InvarianceReport",
    # torch.distributed
    "distributed_lmo",
    "distributed_sharp",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
]
