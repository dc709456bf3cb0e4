"""Running upper bounds of max |x| of state tensors, kept from step to step.

The steps that update state in place without computing it aside first — the fused kernels
(``fused.py``: Adagrad's sum, SGD's buffer) and the statistics redone at the commit
(``deferred.py``: Shampoo's A, B) — prove the new values finite from an upper bound of the
old ones. Reading max |x| every step would cost a pass over the state; instead each such
update records the bound it proved for the tensor it wrote, and the next step uses it while
the state still holds that same tensor object (a weak reference: a tensor assigned anew,
loaded or freed has no bound, and is read once).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["RunningBounds", "abs_maxima"]


class RunningBounds:
    """id(tensor) → (weak reference to it, an upper bound on its max |x|)."""

    def __init__(self) -> None:
        self._bounds: dict[int, tuple[weakref.ref, float]] = {}

    def known(self, t: Tensor) -> float | None:
        """The recorded bound of this very tensor object, or None."""
        ref, value = self._bounds.get(id(t), (None, 0.0))
        return value if ref is not None and ref() is t else None

    def record(self, ts: Iterable[Tensor], bound: float) -> None:
        """``bound`` is an upper bound on max |x| of each of ``ts``."""
        for t in ts:
            self._bounds[id(t)] = (weakref.ref(t), bound)


def abs_maxima(tensors: Sequence[Tensor]) -> list[float]:
    """max |x| of each tensor (NaN for a tensor holding a NaN), read in one batch."""
    if not tensors:
        return []
    return torch.stack([x for t in tensors for x in torch.aminmax(t)]).view(-1, 2).abs().amax(1).tolist()
