"""The geometry a parameter declares: its norm, its default preconditioner, its role.

Layers (``modnorm.layers``) and rules for plain torch.nn modules (``modnorm.rules``)
produce one ``Geometry`` per parameter; the optimizer reads it to build the parameter's
update. ``role`` lets presets route parameters (Muon sends everything but hidden
matrices to an AdamW-like rule) without hand-written parameter groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .norms import Norm

__all__ = ["Geometry", "ROLES", "Role"]

Role = Literal["hidden", "embedding", "head", "conv", "vector"]
ROLES: tuple[str, ...] = ("hidden", "embedding", "head", "conv", "vector")


@dataclass(frozen=True)
class Geometry:
    """Declared geometry of one parameter tensor.

    Attributes:
        norm: the parameter's norm (hence its LMO), e.g. ``Spectral()`` for a hidden
            Linear weight, ``ColNorm(layout="embedding")`` for an embedding table,
            ``RMS()`` for a bias or gain.
        preconditioner: name of the default preconditioner (a key of the optimizer's
            preconditioner registry, e.g. ``"none"`` or ``"adam"``); presets may override.
        role: "hidden" (a weight matrix inside the network), "embedding", "head" (the
            output/unembedding matrix), "conv" (a convolution kernel) or "vector" (bias,
            gain, any 1-D parameter).
        tied_head: an embedding table that the network's output head also uses (weight
            tying: logits = h · Eᵀ); the resolver sets it. Such a table is an output map
            too (``is_output``).
    """

    norm: Norm
    preconditioner: str = "none"
    role: Role = "hidden"
    tied_head: bool = False

    @property
    def is_output(self) -> bool:
        """Whether the parameter maps features to the network's output: a head, or a table tied to it."""
        return self.role == "head" or self.tied_head

    def __post_init__(self) -> None:
        if not isinstance(self.norm, Norm):
            raise TypeError(f"Geometry.norm must be a modnorm.Norm, got {type(self.norm).__name__}")
        if self.role not in ROLES:
            raise ValueError(f"Geometry.role must be one of {ROLES}, got {self.role!r}")
