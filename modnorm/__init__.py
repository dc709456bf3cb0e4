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
from .norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv
from .polar import orthogonalize
from .preconditioned import DNorm, LRNorm
from .testing import check_norm

# Geometry of a network: composite layers (``modnorm.layers`` holds all), rules for plain torch.nn, the modular norm.
from .layers import Parallel, Residual, Scale, Sequential
from .rules import LayerRules
from .fixes import GeometryError
from .network import budgets, geometries, modular_norm
from .describe import describe

# name → module, imported on first attribute access. The generated optimizer (presets,
# preconditioners and recipes live in ``modnorm.optim``) builds its pydantic models on import,
# about as long as the rest of modnorm together, and torch.distributed.checkpoint alone
# takes longer than that: a program that only describes a model, or a worker process that
# imports modnorm with a pickled model, pays for neither.
_LAZY: dict[str, str] = {
    "ConfigError": ".optim.config",
    "ModnormOptimizer": ".optim.optimizer",
    "optimizer": ".optim.factory",
    "save_checkpoint": ".distributed.checkpoint",
    "load_checkpoint": ".distributed.checkpoint",
    "CheckpointMismatchError": ".distributed.checkpoint",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        freeze = _gc.get_freeze_count() == 0  # as for the eager imports above
        if freeze:
            _gc.freeze()
        try:
            value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        finally:
            if freeze:
                _gc.unfreeze()
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
    "Spectral",
    "SpectralConv",
    "RowNorm",
    "ColNorm",
    "RMS",
    "Sign",
    "Frobenius",
    "DNorm",
    "LRNorm",
    "Geometry",
    "orthogonalize",
    "check_norm",
    # a network
    "Sequential",
    "Residual",
    "Parallel",
    "Scale",
    "LayerRules",
    "GeometryError",
    "geometries",
    "budgets",
    "modular_norm",
    "describe",
    # the generated optimizer
    "optimizer",
    "ModnormOptimizer",
    "ConfigError",
    # checkpoints (torch.distributed.checkpoint, imported on first use)
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
]
