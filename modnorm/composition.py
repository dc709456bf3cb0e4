"""The composition algebra of the modular norm (Large, Bernstein et al. 2024).

A network is described by a tree of nodes. Every node has a mass μ ≥ 0 (its share of
the update budget) and a sensitivity ν ≥ 0 (how much it amplifies input perturbations):

- ``Atom``: a layer with weights. Its own μ, ν (default 1, 1); its norm is the max over
  its parameters of each parameter's declared norm.
- ``Bond``: no weights (activation, add, reshape, attention scores). μ = 0, own ν.
- ``Chain(c1, …, cn)``: cn ∘ … ∘ c1 (c1 applied first). μ = Σμ_i, ν = ∏ν_i,
  ‖w‖ = max_i (μ/μ_i)·(∏_{j>i} ν_j)·‖w_i‖; child i gets budget t·(μ_i/μ)/∏_{j>i} ν_j.
- ``Tuple(c1, …, cn)``: the children on the same input, outputs side by side.
  μ = Σμ_i, ν = Σν_i, ‖w‖ = max_i (μ/μ_i)·‖w_i‖; child i gets budget t·μ_i/μ.
- ``Tared(child, mass)``: the child with its total mass set to ``mass`` (modula's
  ``tare``): every internal ratio μ_i/μ is unchanged, so the child's norm and the
  budgets inside it are unchanged; only its weight in the parent changes.
- ``scaled(a, node)`` = Chain(node, Bond(a)): multiplying the output by a multiplies ν by
  a, leaves μ alone and divides the node's budget by a.

The binary rules of the paper are associative, so the n-ary forms above are the binary
rules unrolled. Unrolling everything, atom k's budget (with t = 1 at the root) is b_k,
and the modular norm of the whole network is max_k ‖w_k‖_k / b_k.

Nodes with μ = 0 get budget 0 (modula's convention); in a norm they contribute 0 when
their weights are 0 and ∞ otherwise (a mass-0 module may not move).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .geometry import Geometry

__all__ = ["Node", "Atom", "Bond", "Chain", "Tuple", "Tared", "scaled", "render", "finite_nonneg"]


def finite_nonneg(value: float, what: str) -> float:
    """``value`` as a float, or ``ValueError("<what> must be a finite number ≥ 0, got …")`` (masses, sensitivities)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


class Node:
    """Base class of composition nodes; see the module docstring for the rules.

    A node type defines its ``mass`` μ and ``sensitivity`` ν and how it dualizes:
    ``budgets`` (every atom's share of a budget t), ``norm`` (the modular norm of the
    weights under it) and ``terminals`` (the atoms nearest its output); ``children`` and
    ``with_children`` let tree rewrites (``modnorm.residual``) pass through it.
    """

    mass: float
    sensitivity: float

    def children(self) -> Sequence[Node]:
        return ()

    def with_children(self, children: Sequence[Node]) -> Node:
        """The same node over other children (a node without children returns itself)."""
        return self

    def atoms(self) -> Iterator[Atom]:
        """Every atom under this node, in order (an atom used twice appears twice)."""
        for c in self.children():
            yield from c.atoms()

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        """(atom, budget) for every atom, dualizing this node with total budget ``t``."""
        raise NotImplementedError(f"{type(self).__name__}.budgets")

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        """The modular norm of the weights under this node; ``atom_norm(atom)`` gives each atom's own norm."""
        raise NotImplementedError(f"{type(self).__name__}.norm")

    def terminals(self) -> tuple[list[Atom], bool]:
        """Atoms whose output reaches this node's output through no other atom, and whether
        an atom-free path crosses the node."""
        raise NotImplementedError(f"{type(self).__name__}.terminals")

    def label(self) -> str:
        """One line naming the node for ``render``."""
        return type(self).__name__


@dataclass(frozen=True, eq=False)
class Atom(Node):
    """A weighted module: ``params`` is a tuple of (label, parameter, geometry).

    ``head`` optionally holds the geometries to use instead when this atom turns out to be
    the network's output head (see ``modnorm.resolver``); ``name`` is the module's path.
    """

    params: tuple[tuple[str, Tensor, Geometry], ...]
    mass: float = 1.0
    sensitivity: float = 1.0
    name: str = ""
    head: tuple[tuple[str, Tensor, Geometry], ...] | None = None
    kind: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mass", finite_nonneg(self.mass, f"Atom {self.name!r}: mass"))
        object.__setattr__(self, "sensitivity", finite_nonneg(self.sensitivity, f"Atom {self.name!r}: sensitivity"))
        for label, _, geo in self.params:
            if not isinstance(geo, Geometry):
                raise TypeError(f"Atom {self.name!r}: parameter {label!r} needs a modnorm.Geometry, got {type(geo).__name__}")

    def atoms(self) -> Iterator[Atom]:
        yield self

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        yield self, t

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        return float(atom_norm(self))

    def terminals(self) -> tuple[list[Atom], bool]:
        return [self], False

    def label(self) -> str:
        head = f"{type(self).__name__} {self.name}" if self.name else type(self).__name__
        return f"{head} [{', '.join(label for label, _, _ in self.params)}]"

    def __repr__(self) -> str:
        labels = ", ".join(label for label, _, _ in self.params)
        return f"Atom({self.name!r}, [{labels}], mass={self.mass:g}, sensitivity={self.sensitivity:g})"


@dataclass(frozen=True, eq=False)
class Bond(Node):
    """A module without weights: μ = 0 and sensitivity ν."""

    sensitivity: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity", finite_nonneg(self.sensitivity, f"Bond {self.name!r}: sensitivity"))

    @property
    def mass(self) -> float:  # type: ignore[override]
        return 0.0

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        return iter(())

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        return 0.0

    def terminals(self) -> tuple[list[Atom], bool]:
        return [], True

    def label(self) -> str:
        return f"{type(self).__name__} {self.name}" if self.name else type(self).__name__

    def __repr__(self) -> str:
        return f"Bond({self.name!r}, sensitivity={self.sensitivity:g})"


class _Composite(Node):
    """A node over an ordered tuple of children whose masses add (Chain and Tuple)."""

    items: tuple[Node, ...]

    def __init__(self, items: Sequence[Node]) -> None:
        object.__setattr__(self, "items", tuple(items))

    def children(self) -> Sequence[Node]:
        return self.items

    def with_children(self, children: Sequence[Node]) -> Node:
        return type(self)(children)

    @property
    def mass(self) -> float:  # type: ignore[override]
        return sum(c.mass for c in self.items)

    def _downstream(self) -> list[float]:
        """The factor by which each child's output is amplified on its way to this node's output."""
        raise NotImplementedError

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        """max_i (μ/μ_i)·down_i·‖w_i‖, with the mass-0 convention (0·x = 0 only for x = 0, ∞ otherwise)."""
        mu, best = self.mass, 0.0
        for child, down in zip(self.items, self._downstream()):
            value = child.norm(atom_norm)
            if value != 0:
                best = max(best, math.inf if child.mass == 0 else (mu / child.mass) * down * value)
        return best

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.items)!r})"


@dataclass(frozen=True, eq=False, init=False, repr=False)
class Chain(_Composite):
    """Sequential composition, first child applied first: sensitivities multiply."""

    items: tuple[Node, ...] = field(default_factory=tuple)

    @property
    def sensitivity(self) -> float:  # type: ignore[override]
        return math.prod(c.sensitivity for c in self.items)

    def _downstream(self) -> list[float]:
        """∏_{j>i} ν_j for every i."""
        out, acc = [1.0] * len(self.items), 1.0
        for i in range(len(self.items) - 1, -1, -1):
            out[i] = acc
            acc *= self.items[i].sensitivity
        return out

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        mu = self.mass
        for child, down in zip(self.items, self._downstream()):
            if mu == 0 or child.mass == 0:
                yield from child.budgets(0.0)
                continue
            if down == 0:
                names = ", ".join(a.name or "?" for a in child.atoms())
                raise ValueError(
                    f"modular norm: the layers [{names}] are followed by a module of sensitivity 0, so no "
                    "update of theirs reaches the output and their budget is unbounded; give that module a positive "
                    "sensitivity or mass 0 to these layers"
                )
            yield from child.budgets(t * (child.mass / mu) / down)

    def terminals(self) -> tuple[list[Atom], bool]:
        found: list[Atom] = []
        through = True
        for c in reversed(self.items):
            if not through:
                break
            f, through = c.terminals()
            found += f
        return found, through


@dataclass(frozen=True, eq=False, init=False, repr=False)
class Tuple(_Composite):
    """Parallel composition, every child sees the same input: sensitivities add."""

    items: tuple[Node, ...] = field(default_factory=tuple)

    @property
    def sensitivity(self) -> float:  # type: ignore[override]
        return sum(c.sensitivity for c in self.items)

    def _downstream(self) -> list[float]:
        return [1.0] * len(self.items)

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        mu = self.mass
        for child in self.items:
            yield from child.budgets(t * child.mass / mu if mu > 0 else 0.0)

    def terminals(self) -> tuple[list[Atom], bool]:
        found: list[Atom] = []
        through = False
        for c in self.items:
            f, t = c.terminals()
            found += f
            through = through or t
        return found, through


@dataclass(frozen=True, eq=False)
class Tared(Node):
    """``child`` with its total mass set to ``total`` (internal ratios kept)."""

    child: Node
    total: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", finite_nonneg(self.total, "Tared: mass"))

    def children(self) -> Sequence[Node]:
        return (self.child,)

    def with_children(self, children: Sequence[Node]) -> Node:
        (child,) = children
        return Tared(child, self.total)

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        yield from self.child.budgets(t if self.mass > 0 else 0.0)

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        return self.child.norm(atom_norm)

    def terminals(self) -> tuple[list[Atom], bool]:
        return self.child.terminals()

    @property
    def mass(self) -> float:  # type: ignore[override]
        return self.total if self.child.mass > 0 else 0.0

    @property
    def sensitivity(self) -> float:  # type: ignore[override]
        return self.child.sensitivity


def render(node: Node, indent: str = "") -> str:
    """A readable tree: one line per node with its mass μ and sensitivity ν."""
    lines = [f"{indent}{node.label()}  μ={node.mass:g} ν={node.sensitivity:g}"]
    lines += [render(c, indent + "  ") for c in node.children()]
    return "\n".join(lines)


def scaled(factor: float, node: Node) -> Node:
    """``factor · node``: the node followed by a bond of sensitivity |factor|."""
    return Chain([node, Bond(abs(float(factor)), name=f"×{factor:g}")])
