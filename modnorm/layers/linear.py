"""Linear, Conv1d, Conv2d and Embedding: torch.nn layers that declare their geometry.

Drop-in: same positional/keyword arguments and ``state_dict`` keys as the torch.nn
class; modnorm's options are keyword-only extras:

- ``norm``: the weight's norm (default: ``Spectral()`` for Linear, ``SpectralConv(k)``
  for convolutions, ``ColNorm(layout="embedding")`` for Embedding; any ``modnorm.Norm``,
  including your own subclass);
- ``preconditioner``: default preconditioner name of every parameter ("adam");
- ``mass``, ``sensitivity``: the atom's μ and ν (default 1, 1);
- ``init``: "torch" (torch's init) or "normed" (``reset_parameters_normed``);
- Linear only — ``head``: True declares the output head (weight ``RowNorm()``, role
  "head"), False a hidden layer, None (default) decides by position: the layer is the
  head when it is the network's only terminal weight layer.
"""

from __future__ import annotations

from torch import nn

from ..geometry import Geometry
from ..norms import Norm
from . import defaults as D
from .base import AtomLayer

__all__ = ["Linear", "Conv1d", "Conv2d", "Embedding"]


class Linear(AtomLayer, nn.Linear):
    """nn.Linear with weight ``Spectral()`` (role hidden) or ``RowNorm()`` (role head), bias ``RMS()``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
        head: bool | None = None, norm: Norm | None = None, preconditioner: str = D.DEFAULT_PRECONDITIONER,
        mass: float = 1.0, sensitivity: float = 1.0, init: str = "torch",
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        if head not in (None, True, False):
            raise ValueError(f"Linear: head must be True, False or None (auto), got {head!r}")
        self.head = head
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)

    def declared(self) -> dict[str, Geometry]:
        make = D.head if self.head else D.hidden
        out = {"weight": make(self.norm_override, self.preconditioner)}
        if self.bias is not None:
            out["bias"] = D.vector(None, self.preconditioner)
        return out

    def declared_head(self) -> dict[str, Geometry] | None:
        if self.head is not None or self.norm_override is not None:
            return None
        return {**self.declared(), "weight": D.head(None, self.preconditioner)}


class _Conv(AtomLayer):
    kernel_dims: int

    def declared(self) -> dict[str, Geometry]:
        groups = int(self.groups)  # type: ignore[attr-defined]
        out = {"weight": D.conv(self.kernel_dims, self.norm_override, self.preconditioner, groups=groups)}
        if self.bias is not None:  # type: ignore[attr-defined]
            out["bias"] = D.vector(None, self.preconditioner)
        return out


class Conv1d(_Conv, nn.Conv1d):
    """nn.Conv1d with weight ``SpectralConv(1)`` (per group: ``Stacked`` when groups > 1; role conv), bias ``RMS()``."""

    kernel_dims = 1

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
        bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *, norm: Norm | None = None,
        preconditioner: str = D.DEFAULT_PRECONDITIONER, mass: float = 1.0, sensitivity: float = 1.0, init: str = "torch",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype)
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)


class Conv2d(_Conv, nn.Conv2d):
    """nn.Conv2d with weight ``SpectralConv(2)`` (per group: ``Stacked`` when groups > 1; role conv), bias ``RMS()``."""

    kernel_dims = 2

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1, groups: int = 1,
        bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *, norm: Norm | None = None,
        preconditioner: str = D.DEFAULT_PRECONDITIONER, mass: float = 1.0, sensitivity: float = 1.0, init: str = "torch",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype)
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)


class Embedding(AtomLayer, nn.Embedding):
    """nn.Embedding with weight ``ColNorm(layout="embedding")`` (each token vector in RMS), role embedding."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, max_norm: float | None = None,
        norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False, _weight=None,
        _freeze: bool = False, device=None, dtype=None, *, norm: Norm | None = None,
        preconditioner: str = D.DEFAULT_PRECONDITIONER, mass: float = 1.0, sensitivity: float = 1.0, init: str = "torch",
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight,
            _freeze, device, dtype,
        )
        self._modnorm_setup(mass, sensitivity, preconditioner, norm, init)

    def declared(self) -> dict[str, Geometry]:
        return {"weight": D.embedding(self.norm_override, self.preconditioner)}
