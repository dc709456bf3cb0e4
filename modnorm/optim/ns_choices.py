"""The optimizer's recorded Newton–Schulz execution choices (a mixin of ``ModnormOptimizer``).

``ns_dtype="auto"`` is resolved once per (device type, parameter dtype, matrix size class) by
``modnorm.polar_dtype.auto_dtype`` and ``ns_products="auto"`` once per call shape by
``modnorm.polar_products``; both are recorded here, listed by ``describe()``, saved in the
state_dict (``"ns_dtype_auto"``, ``"ns_products_auto"``) and in checkpoints, and adopted on
load, so a resumed run keeps the saved choices even on hardware that would choose otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..polar_dtype import auto_dtype, size_class
from ..polar_products import ProductChoices
from .recipe import DTYPES
from .state_io import checked_ns_choices

__all__ = ["RecordedNsChoices"]


class RecordedNsChoices:
    """``_ns_auto``: "device type:param dtype:size class" → dtype name; ``_ns_products``:
    "device:compute dtype:count×n×m" → "batched" | "loop"."""

    _ns_auto: dict[str, str]
    _ns_products: ProductChoices

    def _init_ns_choices(self, state: dict[str, Any] | None = None) -> None:
        """Fresh records, or those of a pickled optimizer's ``state`` (``__setstate__``)."""
        state = state or {}
        self._ns_auto = state.get("_ns_auto", getattr(self, "_ns_auto", {}))
        self._ns_products = state.get("_ns_products", getattr(self, "_ns_products", None)) or ProductChoices()

    def _auto_ns_dtype(self, p: Tensor, shape: tuple[int, ...]) -> torch.dtype | None:
        """What ns_dtype="auto" means for ``p`` (matrices of its first two dims): resolved once per
        (device type, dtype, size class), then recorded. None for vectors (no polar factor)."""
        if len(shape) < 2:
            return None
        n = size_class(min(shape[0], shape[1]))
        key = f"{p.device.type}:{str(p.dtype).removeprefix('torch.')}:{n}"
        if key not in self._ns_auto:
            self._ns_auto[key] = str(auto_dtype(p.device, p.dtype, n)).removeprefix("torch.")
        return DTYPES[self._ns_auto[key]]

    @property
    def ns_dtype_auto(self) -> dict[str, str]:
        """What ns_dtype="auto" resolved to so far: "device type:param dtype:size class" → dtype name."""
        return dict(self._ns_auto)

    def set_ns_dtype_auto(self, choices: dict[str, str]) -> None:
        """Adopt saved ns_dtype="auto" choices (they replace this machine's); checked before anything changes."""
        self._ns_auto.update(checked_ns_choices(choices))
        self._forget_plans()  # type: ignore[attr-defined]

    @property
    def ns_products_auto(self) -> dict[str, str]:
        """What ns_products="auto" resolved to so far: "device:compute dtype:count×n×m" → "batched" | "loop"."""
        return dict(self._ns_products.choices)

    def set_ns_products_auto(self, choices: dict[str, str]) -> None:
        """Adopt saved ns_products="auto" choices (they replace this machine's; validated first)."""
        self._ns_products.update(choices)
