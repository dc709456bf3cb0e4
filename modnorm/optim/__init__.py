"""The generated optimizer: one pipeline (momentum → preconditioner → LMO/sharp → budget →
weight decay → update), presets as configurations of it, and the pieces to compose your own."""

from . import diagonal as _diagonal  # noqa: F401  (registers "adam", "sania", "adagrad")
from . import moment_variants as _moment_variants  # noqa: F401  (registers "amsgrad", "rmsprop")
from .config import ConfigError, OptimizerConfig
from .diagonal import SecondMoment
from .factory import optimizer
from .momentum import MOMENTUM_KINDS
from .optimizer import ModnormOptimizer
from .preconditioner import (
    PRECONDITIONERS,
    Identity,
    Preconditioner,
    StepContext,
    get_preconditioner,
    register_preconditioner,
)
from .presets import PRESETS, Hyperparameters, register_preset
from .recipe import Recipe, Rule
from .schedules import WSD, LinearCooldown, RefreshSpike

__all__ = [
    "optimizer",
    "ModnormOptimizer",
    "OptimizerConfig",
    "ConfigError",
    "Recipe",
    "Rule",
    "Hyperparameters",
    "PRESETS",
    "register_preset",
    "MOMENTUM_KINDS",
    "Preconditioner",
    "Identity",
    "StepContext",
    "SecondMoment",
    "PRECONDITIONERS",
    "register_preconditioner",
    "get_preconditioner",
    "WSD",
    "LinearCooldown",
    "RefreshSpike",
]
