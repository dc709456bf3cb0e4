"""The ``Norm`` interface every layer geometry implements (``norms.py`` has the atoms).

A norm acts on the last ``ndim`` dimensions of a tensor and treats the leading ones as a
batch: ``value(W)`` = ‖W‖, ``dual(G)`` = max over ‖T‖ ≤ 1 of ⟨G, T⟩, ``lmo(G)`` its argmax and
``sharp(G)`` = dual(G)·lmo(G). ``lmo_step``, ``sharp_step``, ``step_input`` and ``lmo_parts``
are optional memory savers an optimizer calls on its own scratch tensors; their defaults are
always right.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["Norm", "upcast_into"]


def _unsqueeze(v: Tensor, n: int) -> Tensor:
    return v.reshape(*v.shape, *([1] * n))


class Norm:
    """Base class of all norms.

    Subclasses set ``ndim`` (how many trailing dimensions one parameter occupies) and
    implement ``value``, ``dual`` and ``lmo``; ``sharp`` follows. Call ``self._check(X)``
    first in each method to get uniform shape errors. ``modnorm.testing.check_norm``
    verifies the laws of a user's norm.
    """

    ndim: int = 2

    def value(self, W: Tensor) -> Tensor:
        """‖W‖ for every parameter in the batch."""
        raise NotImplementedError

    def dual(self, G: Tensor) -> Tensor:
        """‖G‖* = max over ‖T‖ ≤ 1 of ⟨G, T⟩."""
        raise NotImplementedError

    def lmo(self, G: Tensor) -> Tensor:
        """argmax over ‖T‖ ≤ 1 of ⟨G, T⟩ (the dual map)."""
        raise NotImplementedError

    def sharp(self, G: Tensor) -> Tensor:
        """dual(G) · lmo(G): steepest descent without normalization."""
        return _unsqueeze(self.dual(G), self.ndim) * self.lmo(G)

    def lmo_step(self, G: Tensor) -> Tensor:
        """``lmo(G)`` as an optimizer adds it to the parameters: the same values, possibly in a
        narrower float dtype that upcasts to G's exactly (``Spectral``: Newton–Schulz's bf16).
        G is the caller's own scratch tensor, which the method may overwrite (``DNorm`` divides
        it by D in place); the result belongs to the caller, who may overwrite it in turn (an
        ``lmo`` that returns a tensor it also keeps must override this). The default is ``lmo``."""
        return self.lmo(G)

    def sharp_step(self, G: Tensor) -> Tensor:
        """``sharp(G)`` as an optimizer adds it to the parameters: the same values and dtype, with
        G the caller's scratch and the result the caller's, as in ``lmo_step`` (``LRNorm``,
        ``DNorm``: products and divisions written into them; a ``sharp`` that returns a tensor it
        also keeps must override this). The default is ``sharp``."""
        return self.sharp(G)

    def step_input(self, like: Tensor) -> tuple[torch.dtype, Callable[[Tensor, Tensor], Tensor]] | None:
        """How ``lmo_step`` may receive its input already narrowed, for inputs like ``like`` (one
        element of the batch): (dtype, cast), where ``cast(out, x)`` writes x into ``out`` of that
        dtype as ``lmo_step`` would narrow it itself, so that ``lmo_step`` of the narrowed batch
        equals ``lmo_step`` of the original bit for bit (an optimizer then stacks its direction
        in that dtype directly). None (the default): no such dtype."""
        return None

    def lmo_parts(self, G: Tensor) -> tuple[Tensor, float] | None:
        """``lmo_step(G)`` in parts an optimizer holds until it commits a step: (O, s) with O in a
        narrower float dtype, such that ``O.to(G.dtype) · s`` (upcast exactly, then scaled in G's
        dtype; no product when s = 1) is ``lmo_step(G)`` bit for bit (``DNorm``: then divided by D,
        which the optimizer forms again at its commit). G is the caller's scratch and is released
        (``G.set_()``: an empty tensor afterwards) once read. None (the default): no such parts, and
        G is untouched."""
        return None

    def lmo_parts_dtype(self, like: Tensor) -> torch.dtype | None:
        """The dtype of ``lmo_parts``' O for inputs like ``like``; None (the default) when it gives none."""
        return None

    def parts_input(self, like: Tensor) -> tuple[torch.dtype, Callable[[Tensor, Tensor], Tensor]] | None:
        """``step_input`` for ``lmo_parts``: (dtype, cast) such that ``lmo_parts`` of the batch narrowed
        with ``cast`` equals ``lmo_parts`` of the original bit for bit (an optimizer then forms its
        direction in that dtype, a matrix at a time). None (the default): no such dtype."""
        return None

    def expected_shape(self) -> str:
        """Human-readable shape this norm accepts, used in error messages."""
        return "(..., " + ", ".join(f"d{i}" for i in range(self.ndim)) + ")"

    def _check(self, X: Tensor) -> None:
        if not isinstance(X, Tensor):
            raise TypeError(f"{self!r}: expected a torch.Tensor, got {type(X).__name__}")
        if X.ndim < self.ndim:
            raise ValueError(
                f"{self!r}: expected a tensor of shape {self.expected_shape()} "
                f"(at least {self.ndim} dims), got shape {tuple(X.shape)}"
            )
        if X.is_complex() or not X.is_floating_point():
            raise TypeError(f"{self!r}: expected a real floating-point tensor, got dtype {X.dtype}")
        if X.is_sparse:
            raise TypeError(f"{self!r}: sparse tensors are not supported; call .to_dense() first")
        if 0 in X.shape[X.ndim - self.ndim :]:
            raise ValueError(
                f"{self!r}: expected a tensor of shape {self.expected_shape()} with non-empty "
                f"parameter dims, got shape {tuple(X.shape)}"
            )

    def _dims(self) -> tuple[int, ...]:
        return tuple(range(-self.ndim, 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def upcast_into(G: Tensor, O: Tensor) -> Tensor:
    """O (the result of an ``lmo_step``, possibly in a narrower float dtype that upcasts exactly) in
    G's dtype, as a tensor the caller may write: the scratch G itself when it can take it (G is no
    longer read), else a new tensor; O itself when it has G's dtype already."""
    if O.dtype == G.dtype:
        return O
    if G.is_contiguous() and G.shape == O.shape:
        return G.copy_(O)  # exact
    return O.to(G.dtype)
