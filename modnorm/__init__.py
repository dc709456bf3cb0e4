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
    # torch.distributed: DDP/FSDP2 dual maps and DCP checkpoints (modnorm.distributed)
    "distributed_lmo",
    "distributed_sharp",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointMismatchError",
]
