"""Normed layers: drop-in torch.nn subclasses that declare their geometry, plus bonds and composites."""

from . import defaults
from .attention import CausalSelfAttention, rotary
from .base import AtomLayer, normed_init_
from .bonds import GELU, ReLU, Scale, SiLU
from .compose import Parallel, Residual, Sequential
from .linear import Conv1d, Conv2d, Embedding, Linear
from .normalization import LayerNorm, RMSNorm
from ..blocks import Stacked, Transposed

__all__ = [
    "Linear", "Conv1d", "Conv2d", "Embedding", "LayerNorm", "RMSNorm",
    "ReLU", "GELU", "SiLU", "Scale", "Sequential", "Residual", "Parallel",
    "CausalSelfAttention", "rotary", "AtomLayer", "normed_init_", "Stacked", "Transposed", "defaults",
]
