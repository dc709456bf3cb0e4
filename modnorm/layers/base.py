"""What every weighted modnorm layer shares: mass, sensitivity, declared geometries, normed init.

A layer is one atom of the modular norm: its norm is the max over its parameters of each
parameter's declared norm, so every parameter of the layer (weight, bias, gain, shift)
receives the layer's whole budget. Biases and gains therefore add no mass: adding a bias
to a layer leaves every budget in the network unchanged (the bias is declared ``RMS()``,
role "vector", which bounds its change in the same RMS units as the layer's output).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..composition import Bond, Node, finite_nonneg
from ..geometry import Geometry
from ..norms import Norm, Spectral, SpectralConv
from ..blocks import inner, rewrap

if TYPE_CHECKING:
    from ..resolver import Resolver

__all__ = ["AtomLayer", "normed_init_", "INITS"]

INITS: tuple[str, ...] = ("torch", "normed")


def _exact(norm: Norm) -> Norm:
    """The same norm with an exact (SVD) polar factor, for initialization (inside any block wrappers)."""
    if inner(norm) is not norm:
        return rewrap(norm, _exact(inner(norm)))
    if type(norm) is Spectral:
        return Spectral(scale=norm.scale, method="svd")
    if type(norm) is SpectralConv:
        return SpectralConv(norm.kernel_dims, scale=norm.spectral.scale, method="svd", layout=norm.layout)
    return norm


@torch.no_grad()
def normed_init_(param: Tensor, norm: Norm, generator: torch.Generator | None = None) -> Tensor:
    """Set ``param`` to ``norm.lmo(G)`` for a Gaussian G: a point on the unit sphere of ``norm``.

    For ``Spectral`` this is the orthogonal init scaled by √(d_out/d_in) (all singular
    values equal, RMS→RMS norm 1); for ``ColNorm(layout="embedding")`` every embedding
    vector gets RMS 1. Computed in float64 and cast back.
    """
    G = torch.randn(param.shape, generator=generator, dtype=torch.float64, device="cpu")
    param.copy_(_exact(norm).lmo(G).to(param.dtype))
    return param


class AtomLayer:
    """Mixin for torch.nn layer subclasses that are atoms. Subclasses implement ``declared()``."""

    mass: float
    sensitivity: float
    preconditioner: str

    def _modnorm_setup(
        self, mass: float, sensitivity: float, preconditioner: str, norm: Norm | None, init: str
    ) -> None:
        for name, v in (("mass", mass), ("sensitivity", sensitivity)):
            finite_nonneg(v, f"{type(self).__name__}: {name}")
        if not isinstance(preconditioner, str) or not preconditioner:
            raise ValueError(f"{type(self).__name__}: preconditioner must be a registered name such as 'adam' or 'none', got {preconditioner!r}")
        if norm is not None and not isinstance(norm, Norm):
            raise TypeError(f"{type(self).__name__}: norm must be a modnorm.Norm (or None for the default), got {type(norm).__name__}")
        if init not in INITS:
            raise ValueError(f"{type(self).__name__}: init must be one of {INITS}, got {init!r}")
        self.mass, self.sensitivity = float(mass), float(sensitivity)
        self.preconditioner, self.norm_override, self.init = preconditioner, norm, init
        if init == "normed":
            self.reset_parameters_normed()

    def declared(self) -> dict[str, Geometry]:
        """Geometry of each parameter (local name → Geometry)."""
        raise NotImplementedError

    def declared_head(self) -> dict[str, Geometry] | None:
        """Geometries to use if this layer is the network's output head (None: no change)."""
        return None

    def modular(self, ctx: Resolver) -> Node:
        geos = self.declared()
        if not any(getattr(self, k, None) is not None for k in geos):
            return Bond(self.sensitivity, name=ctx.path(self))  # type: ignore[arg-type]
        return ctx.atom(self, geos, self.mass, self.sensitivity, head=self.declared_head())  # type: ignore[arg-type]

    @torch.no_grad()
    def reset_parameters_normed(self, generator: torch.Generator | None = None) -> None:
        """Opt-in well-normed init: every matrix/tensor weight on its norm's unit sphere
        (``normed_init_``); vector parameters keep torch's init (zero biases, unit gains)."""
        for local, geo in self.declared().items():
            p = getattr(self, local, None)
            if p is not None and geo.role != "vector":
                normed_init_(p, geo.norm, generator)
        pad = getattr(self, "padding_idx", None)
        if pad is not None:
            self.weight[pad].zero_()  # type: ignore[attr-defined]

