"""The generated optimizer: one pipeline (momentum → preconditioner → LMO/sharp → budget →
weight decay → update), presets as configurations of it, and the pieces to compose your own."""

from .catalog import PRECONDITIONERS, PRESETS, get_preconditioner, register_preconditioner, register_preset
from .config import ConfigError, OptimizerConfig
from .diagonal import SecondMoment
from .factory import optimizer
from .momentum import MOMENTUM_KINDS
from .optimizer import ModnormOptimizer
from .preconditioner import Identity, Preconditioner, StepContext
from .presets import Hyperparameters, Preset, preset
from .recipe import Recipe, Rule, UpdateRule
from .registry import Registry
from .schedules import WSD, LinearCooldown, RefreshSpike

__all__ = [
    "optimizer",
    "ModnormOptimizer",
    "OptimizerConfig",
    "ConfigError",
    "Recipe",
    "UpdateRule",
    "Rule",
    "Hyperparameters",
    "Preset",
    "preset",
    "PRESETS",
    "register_preset",
    "Registry",
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
