"""Plain residual sums ``x + f(x)`` composed as the convex form ``(1 − 1/(L+1))·x + (1/(L+1))·f(x)``.

A traced or captured sum of two dynamic operands is ``Chain(Tuple(a, b), SumBond)``. Taken
literally, ``x + f(x)`` has sensitivity 1 + ν_f ≥ 2, and a network of L such blocks divides
the budget of its first layers by 2^L (65,536 at 16 blocks): those layers are frozen. In a
real network the stream carries the sum of its input and of every branch output so far,
and the normalization inside each branch (pre-norm, BatchNorm) keeps a branch's output at
unit scale, so one branch moves the *normalized* stream by about 1/(L+1) of its own change:
the sum behaves like a convex combination of L + 1 unit-scale terms. ``residual_form``
composes it as such:

- a *residual sum* is a two-operand sum where at least one operand holds weights, both
  depend on the input (sensitivity > 0: a sum of embeddings is not one) and neither ends
  with a constant scale (a sum written as ``(1 − 1/L)·x + (1/L)·f(x)``, or
  ``modnorm.Residual``, declares its weights and is left as it is);
- its *skip* is the operand of smaller mass (the identity, or a projection shortcut), the
  other its *branch*; with L the number of residual sums in the whole model, the skip is
  scaled by L/(L+1) and the branch by 1/(L+1);
- the mass of the combination is the same combination of the operands' masses,
  L/(L+1)·μ_skip + 1/(L+1)·μ_branch (``Tared``: the ratios inside are kept); a
  normalization layer right after the sum (post-norm: ``LN(x + f(x))``, an atom of
  vectors only) belongs to the block and adds 1/(L+1) of its mass.

Consequences (composition rules): the sum's sensitivity is (L·ν_skip + ν_f)/(L+1), so a
stack of L blocks multiplies downstream factors by at most exp(max ν_f − 1), independent of
depth. A stack of L residual blocks weighs about one branch (an average of L branches
moves like one), so the stem, embedding and head keep their share as L grows; inside,
the branch's budget is multiplied back by L + 1 and split by mass. Every budget therefore
tends to a depth-independent value: the step of a given layer does not shrink with depth.
"""

from __future__ import annotations

from .composition import Atom, Bond, Chain, Node, Tared, Tuple, scaled
from .graph import SumBond

__all__ = ["residual_form", "count_residual_sums"]


def _ends_with_scale(node: Node) -> bool:
    if isinstance(node, Bond):
        return node.name.startswith("×")
    if isinstance(node, Chain) and node.items:
        return _ends_with_scale(node.items[-1])
    return False


def _is_residual(node: Node, following: Node | None) -> bool:
    return (
        isinstance(following, SumBond) and isinstance(node, Tuple) and len(node.items) == 2
        and any(c.mass > 0 for c in node.items) and all(c.sensitivity > 0 for c in node.items)
        and not any(_ends_with_scale(c) for c in node.items)
    )


def _pairs(items: tuple[Node, ...]) -> list[tuple[Node, Node | None]]:
    return [(c, items[i + 1] if i + 1 < len(items) else None) for i, c in enumerate(items)]


def count_residual_sums(node: Node) -> int:
    """The number of residual sums (see the module docstring) under ``node``."""
    own = sum(1 for c, nxt in _pairs(tuple(node.children())) if isinstance(node, Chain) and _is_residual(c, nxt))
    return own + sum(count_residual_sums(c) for c in node.children())


def _rewrite(node: Node, L: int) -> Node:
    if not isinstance(node, Chain):
        children = node.children()
        return node.with_children([_rewrite(c, L) for c in children]) if children else node
    items: list[Node] = []
    src = node.items
    i = 0
    while i < len(src):
        c = src[i]
        if not _is_residual(c, src[i + 1] if i + 1 < len(src) else None):
            items.append(_rewrite(c, L))
            i += 1
            continue
        a, b = (_rewrite(x, L) for x in c.items)  # type: ignore[attr-defined]
        skip_first = a.mass <= b.mass
        ws, wb = L / (L + 1), 1 / (L + 1)
        wa, wbb = (ws, wb) if skip_first else (wb, ws)
        block: list[Node] = [Tuple([scaled(wa, a), scaled(wbb, b)]), src[i + 1]]
        mass = wa * a.mass + wbb * b.mass
        i += 2
        while i < len(src) and _is_gain(src[i]):  # a post-norm after the sum belongs to the block
            block.append(src[i])
            mass += wb * src[i].mass
            i += 1
        items.append(Tared(block[0] if len(block) == 1 else Chain(block), mass))
    return Chain(items)


def _is_gain(node: Node) -> bool:
    """An atom holding only vectors (a normalization layer's gain and shift)."""
    return isinstance(node, Atom) and bool(node.params) and all(geo.role == "vector" for _, _, geo in node.params)


def residual_form(node: Node) -> Node:
    """``node`` with every residual sum composed in the convex form (unchanged if there is none)."""
    L = count_residual_sums(node)
    return _rewrite(node, L) if L else node
