"""Two-terminal dataflow graphs whose edges carry composition nodes, shared by the ways of
recovering a module's composition from its forward (``modnorm.trace``, ``modnorm.capture``).

A forward becomes a multigraph from a source S (its inputs) to a sink T (its outputs):

- an operation with one tensor input is an edge input → output carrying its node (a
  submodule's node, or the bond ``op_bond`` gives the operation: ``x * c`` has |c|,
  ``x / c`` has 1/|c|, a registered function its sensitivity, unknown operations 1);
- an operation with several tensor inputs first joins them: one identity edge per input
  into a join vertex, then the operation's edge (so ``x + f(x)`` becomes
  Chain(Tuple(identity, f), add): sensitivities add, masses add).

``Graph.reduce`` merges parallel edges between the same two vertices into a ``Tuple`` and
a vertex with one edge in and one edge out into a ``Chain``. A series-parallel graph
(residual blocks, attention, MLPs, U-Net-like skips) reduces to one edge S → T, whose node
is the module's; otherwise ``TraceError`` is raised and the resolver falls back to a flat tuple.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .composition import Bond, Chain, Node, Tuple

if TYPE_CHECKING:
    from .rules import LayerRules

__all__ = ["TraceError", "Graph", "SumBond", "IDENTITY", "op_bond"]

IDENTITY = Bond(1.0, name="identity")


class TraceError(RuntimeError):
    """The module could not be traced, or its dataflow is not series-parallel."""


_MUL = frozenset({"mul", "__mul__", "__rmul__", "imul", "__imul__", "mul_", "multiply"})
_DIV = frozenset({"truediv", "__truediv__", "div", "div_", "__div__", "itruediv", "__itruediv__", "true_divide", "divide"})
_CAT = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack"})
_SUM = frozenset({"add", "__add__", "__radd__", "iadd", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "isub", "__isub__", "sub_"})


class SumBond(Bond):
    """The bond of a traced or captured ``a + b`` (or ``a − b``) of two or more dynamic operands:
    sensitivity 1 on the joined tuple. ``modnorm.residual`` recognizes residual sums by it."""


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def op_bond(target: object, args: list[Any], rules: LayerRules, operands: int = 1) -> Bond:
    """The bond of an operation (a function, a method name, or a tensor method) on ``args``.

    ``x * c`` and ``c * x`` are |c|, ``x / c`` is 1/|c| (named "×c", as ``composition.scaled``
    names a scale); a sum of several dynamic operands is a ``SumBond``; a concatenation of n
    dynamic operands is 1/n (the joined tuple's ν is Σν_i; the RMS of the concatenation is at
    most the largest part's, which equals the mean for equal parts); other operations take
    the sensitivity registered for them (``LayerRules.register_function``, by object or by name), else 1.
    """
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if name in _MUL and len(args) == 2:
        c = _number(args[0]) if _number(args[1]) is None else _number(args[1])
        if c is not None:
            return Bond(abs(c), name=f"×{c:g}")
    if name in _DIV and len(args) == 2 and _number(args[1]) is not None:
        c = _number(args[1])
        if c == 0:
            raise TraceError(f"{name}: division by zero")
        return Bond(1.0 / abs(c), name=f"×{1.0 / c:g}")  # type: ignore[operator]
    if name in _SUM and operands >= 2:
        return SumBond(1.0, name=name)
    if name in _CAT and operands >= 2:  # RMS of a concatenation ≤ max of the parts': the tuple's Σν over n
        return Bond(1.0 / operands, name=name)
    s = rules.function_sensitivity(target)
    if s is None and not isinstance(target, str):
        s = rules.function_sensitivity(name)
    return Bond(1.0 if s is None else s, name=name)


class Graph:
    """A multigraph with composition nodes on its edges."""

    def __init__(self) -> None:
        self.edges: dict[int, tuple[object, object, Node]] = {}
        self._next = 0

    def add(self, u: object, v: object, node: Node) -> None:
        self.edges[self._next] = (u, v, node)
        self._next += 1

    def prune(self, sink: object) -> None:
        """Drop edges that cannot reach the sink."""
        alive, changed = {sink}, True
        while changed:
            changed = False
            for u, v, _ in self.edges.values():
                if v in alive and u not in alive:
                    alive.add(u)
                    changed = True
        self.edges = {k: e for k, e in self.edges.items() if e[1] in alive}

    def reduce(self, source: object, sink: object) -> Node:
        changed = True
        while changed:
            changed = False
            groups: dict[tuple[object, object], list[int]] = defaultdict(list)
            for k, (u, v, _) in self.edges.items():
                groups[(u, v)].append(k)
            for (u, v), ks in groups.items():
                if len(ks) > 1:
                    items = [self.edges.pop(k)[2] for k in ks]
                    self.add(u, v, Tuple(items))
                    changed = True
            ins: dict[object, list[int]] = defaultdict(list)
            outs: dict[object, list[int]] = defaultdict(list)
            for k, (u, v, _) in self.edges.items():
                outs[u].append(k)
                ins[v].append(k)
            for x in list(ins):
                if x in (source, sink) or len(ins[x]) != 1 or len(outs.get(x, ())) != 1:
                    continue
                a, b = ins[x][0], outs[x][0]
                if a not in self.edges or b not in self.edges:
                    continue
                u, _, first = self.edges.pop(a)
                _, w, second = self.edges.pop(b)
                self.add(u, w, _chain(first, second))
                changed = True
        if len(self.edges) != 1:
            raise TraceError(f"its dataflow is not series-parallel ({len(self.edges)} edges left after reduction)")
        (u, v, node), = self.edges.values()
        if (u, v) != (source, sink):  # pragma: no cover - prune() guarantees the endpoints
            raise TraceError("its dataflow does not connect the inputs to the output")
        return node


def _chain(a: Node, b: Node) -> Node:
    items: list[Node] = []
    for n in (a, b):
        if isinstance(n, Chain):
            items.extend(n.items)
        elif not (isinstance(n, Bond) and n.name == "identity"):
            items.append(n)
    if not items:
        return Bond(1.0, name="identity")
    return items[0] if len(items) == 1 else Chain(items)


