"""The preconditioner interface: gradient statistics → a preconditioned norm (Theorem 1).

A preconditioner keeps per-parameter statistics (state tensors) and, at each step,
turns the parameter's base norm into a preconditioned one — a ``DNorm`` (entrywise D)
or an ``LRNorm`` (two-sided L, R), possibly nested (SOAP: an eigenbasis ``LRNorm``
around an Adam ``DNorm``). The optimizer then takes that norm's LMO or sharp operator
of the (momentum) gradient. Statistics and norms are batched: the optimizer stacks
same-shape parameters that share a rule, so ``norm`` receives one state dict per
parameter and returns a norm acting on the stacked tensor of shape (B, *param_shape).

Contract (checked by the optimizer's tests for every registered preconditioner):
- ``init_state`` allocates everything the preconditioner will ever need; state holds
  tensors and Python numbers only (so ``torch.load(weights_only=True)`` works).
- ``update`` changes only its own state, in place, from the raw gradient of this step.
- ``norm`` does not modify state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..norms import Norm

__all__ = ["Preconditioner", "Identity", "register_preconditioner", "get_preconditioner", "PRECONDITIONERS"]

State = dict[str, Tensor]


class Preconditioner:
    """Base class. Subclasses override ``init_state``, ``update`` and ``norm``.

    ``step`` is the 1-based step count of the parameter (for bias corrections).
    ``state_dtype`` is the dtype statistics are kept in (fp32 for bf16 parameters).
    """

    name: str = "base"

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        return {}

    def update(self, state: State, grad: Tensor, step: int) -> None:
        return None

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Preconditioner):
    """No preconditioning: the base norm itself."""

    name = "none"

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        return base


PRECONDITIONERS: dict[str, Callable[..., Preconditioner]] = {"none": Identity}


def register_preconditioner(name: str, factory: Callable[..., Preconditioner]) -> None:
    """Make ``factory(**hyperparameters)`` available under ``name`` to presets and geometries."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_preconditioner: name must be a non-empty string, got {name!r}")
    PRECONDITIONERS[name] = factory


def get_preconditioner(name: str, **hyperparameters: object) -> Preconditioner:
    if name not in PRECONDITIONERS:
        raise KeyError(f"unknown preconditioner {name!r}; registered: {sorted(PRECONDITIONERS)}. Add one with modnorm.register_preconditioner(name, factory)")
    return PRECONDITIONERS[name](**hyperparameters)
