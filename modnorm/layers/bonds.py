"""Bonds: modules without weights that declare their sensitivity (mass 0).

Sensitivity is the RMS-Lipschitz constant: ReLU 1; GELU its maximum slope
≈ 1.1289, or exactly 1 with ``normalize=True``, which divides the output by that slope
(modula's GELU); SiLU ≈ 1.0998 (or 1 normalized); ``Scale(a)`` |a|.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..composition import Bond, Node, scaled
from . import defaults as D

if TYPE_CHECKING:
    from ..resolver import Resolver

__all__ = ["ReLU", "GELU", "SiLU", "Scale"]


class _BondLayer:
    sensitivity: float

    def modular(self, ctx: Resolver) -> Node:
        return Bond(self.sensitivity, name=ctx.path(self))  # type: ignore[arg-type]


class ReLU(_BondLayer, nn.ReLU):
    """nn.ReLU, sensitivity 1."""

    sensitivity = 1.0


class GELU(_BondLayer, nn.GELU):
    """nn.GELU; ``normalize=True`` divides by the max slope so that the sensitivity is 1."""

    def __init__(self, approximate: str = "none", *, normalize: bool = False) -> None:
        super().__init__(approximate)
        self.normalize = bool(normalize)
        self.sensitivity = 1.0 if normalize else D.GELU_MAX_SLOPE

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y / D.GELU_MAX_SLOPE if self.normalize else y


class SiLU(_BondLayer, nn.SiLU):
    """nn.SiLU; ``normalize=True`` divides by the max slope so that the sensitivity is 1."""

    def __init__(self, inplace: bool = False, *, normalize: bool = False) -> None:
        super().__init__(inplace)
        self.normalize = bool(normalize)
        self.sensitivity = 1.0 if normalize else D.SILU_MAX_SLOPE

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y / D.SILU_MAX_SLOPE if self.normalize else y


class Scale(nn.Module):
    """``a · module(x)`` (or ``a · x`` without a module): scalar multiplication.

    Mass is the module's, sensitivity is |a|·ν, and the module's budget is divided by |a|.
    """

    def __init__(self, factor: float, module: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor == 0:
            raise ValueError(f"Scale: factor must be a nonzero number, got {factor!r}")
        self.factor = float(factor)
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.factor * (self.module(x) if self.module is not None else x)

    def modular(self, ctx: Resolver) -> Node:
        inner = ctx.resolve(self.module) if self.module is not None else Bond(1.0, name="identity")
        return scaled(self.factor, inner)

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"
