"""Composition modules: Sequential, Residual, Parallel (see ``modnorm.composition`` for the rules).

Each takes an optional keyword ``mass``: the absolute mass the whole composite presents
to its parent (modula's ``tare``); the budgets inside it keep their ratios.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from ..composition import Bond, Chain, Node, Tared, Tuple, scaled

if TYPE_CHECKING:
    from ..resolver import Resolver

__all__ = ["Sequential", "Residual", "Parallel"]


def _check_mass(owner: str, mass: float | None) -> float | None:
    if mass is None:
        return None
    if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not math.isfinite(mass) or mass <= 0:
        raise ValueError(f"{owner}: mass must be a positive number (or None to keep the sum of the children's), got {mass!r}")
    return float(mass)


def _tare(node: Node, mass: float | None) -> Node:
    return Tared(node, mass) if mass is not None else node


class Sequential(nn.Sequential):
    """nn.Sequential; composition: μ = Σμ_i, ν = ∏ν_i; layer i's budget is t·(μ_i/μ)/∏_{j>i}ν_j."""

    def __init__(self, *args: nn.Module, mass: float | None = None) -> None:
        super().__init__(*args)
        self.mass = _check_mass("Sequential", mass)

    def modular(self, ctx: Resolver) -> Node:
        return _tare(Chain([ctx.resolve(m) for m in self]), self.mass)


class Residual(nn.Module):
    """``(1 − 1/L)·x + (1/L)·block(x)``: the residual form whose sensitivity stays 1 with depth.

    As a composition: Add ∘ ((1 − 1/L)·Identity, (1/L)·block). Mass = block's,
    ν = (1 − 1/L) + ν_block/L, and the block's budget is L·t (the 1/L on its output is
    undone). With L = the number of residual blocks in a stack, and the stack's mass fixed
    (``Sequential(..., mass=…)``), every layer's budget is independent of depth.
    """

    def __init__(self, block: nn.Module, L: float, *, mass: float | None = None) -> None:
        super().__init__()
        if isinstance(L, bool) or not isinstance(L, (int, float)) or not L >= 1:
            raise ValueError(f"Residual: L must be a number ≥ 1 (usually the number of residual blocks), got {L!r}")
        self.block, self.L = block, float(L)
        self.mass = _check_mass("Residual", mass)

    def forward(self, x: Tensor) -> Tensor:
        return (1.0 - 1.0 / self.L) * x + (1.0 / self.L) * self.block(x)

    def modular(self, ctx: Resolver) -> Node:
        skip = Bond(1.0 - 1.0 / self.L, name="residual skip")
        node = Chain([Tuple([skip, scaled(1.0 / self.L, ctx.resolve(self.block))]), Bond(1.0, name="add")])
        return _tare(node, self.mass)

    def extra_repr(self) -> str:
        return f"L={self.L:g}"


class Parallel(nn.Module):
    """Children applied to the same input. ``combine``: "tuple" returns their outputs,
    "sum" adds them (M1 + M2 = Add ∘ (M1, M2)), "cat" concatenates along the last dim.

    Tuple rule: μ = Σμ_i, ν = Σν_i, child i's budget t·μ_i/μ.
    """

    def __init__(self, *modules: nn.Module, combine: Literal["tuple", "sum", "cat"] = "tuple", mass: float | None = None) -> None:
        super().__init__()
        if not modules:
            raise ValueError("Parallel: give at least one module")
        if combine not in ("tuple", "sum", "cat"):
            raise ValueError(f"Parallel: combine must be 'tuple', 'sum' or 'cat', got {combine!r}")
        self.branches = nn.ModuleList(modules)
        self.combine = combine
        self.mass = _check_mass("Parallel", mass)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        outs = tuple(m(x) for m in self.branches)
        if self.combine == "sum":
            total = outs[0]
            for o in outs[1:]:
                total = total + o
            return total
        if self.combine == "cat":
            return torch.cat(outs, dim=-1)
        return outs

    def modular(self, ctx: Resolver) -> Node:
        node: Node = Tuple([ctx.resolve(m) for m in self.branches])
        if self.combine != "tuple":
            node = Chain([node, Bond(1.0, name=self.combine)])
        return _tare(node, self.mass)
