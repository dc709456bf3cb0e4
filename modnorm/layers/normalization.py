"""LayerNorm and RMSNorm that declare their geometry.

Without affine parameters a normalization layer is a bond (mass 0, sensitivity 1: the
map x ↦ x/rms(x) is treated as RMS-Lipschitz 1, as in modula). With a gain (and a
shift) it is an atom of mass ``mass`` (default 1) whose parameters are vectors, declared
``RMS()``, role "vector": the gain multiplies RMS-normalized features, so its change in
RMS bounds the output's change in RMS. Keyword-only extras as in ``modnorm.layers.linear``.
"""

from __future__ import annotations

from torch import nn

from ..geometry import Geometry
from . import defaults as D
from .base import AtomLayer

__all__ = ["LayerNorm", "RMSNorm"]


class _Affine(AtomLayer):
    def declared(self) -> dict[str, Geometry]:
        return {name: D.vector(self.norm_override, self.preconditioner) for name, _ in self.named_parameters(recurse=False)}


class LayerNorm(_Affine, nn.LayerNorm):
    """nn.LayerNorm; weight and bias ``RMS()``, role vector."""

    def __init__(
        self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True, device=None,
        dtype=None, *, norm=None, preconditioner: str = D.DEFAULT_PRECONDITIONER, mass: float = 1.0,
        sensitivity: float = 1.0, init: str = "torch",
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)


class RMSNorm(_Affine, nn.RMSNorm):
    """nn.RMSNorm; weight ``RMS()``, role vector."""

    def __init__(
        self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, device=None, dtype=None, *,
        norm=None, preconditioner: str = D.DEFAULT_PRECONDITIONER, mass: float = 1.0, sensitivity: float = 1.0,
        init: str = "torch",
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)
