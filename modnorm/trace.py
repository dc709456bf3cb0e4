"""Recovering the composition of a plain torch.nn module by tracing it with torch.fx.

The module's forward is traced with every submodule kept as a leaf (each is resolved on
its own, so the tree follows the module hierarchy). Control flow that depends on shapes
only (``assert T <= block_size``) is assumed to take its true branch; control flow on
values makes tracing fail. The traced dataflow becomes a
two-terminal graph whose edges carry composition nodes:

- a source S feeds every input (identity); a parameter the forward reads directly is an
  atom of sensitivity 0 (it does not depend on the input) on an edge from the first other
  operand of the operation that uses it (from S if there is none), once per use — so a
  layer scale ``gamma * h`` joins where it is used instead of bridging from the source;
- values that do not depend on the input's values — shapes, dtypes, buffers, constants
  and whatever is computed from them alone — are static: they add no edges, so shape
  bookkeeping (``B, T, C = x.shape``) does not tie branches together;
- an operation with one tensor input is an edge input → output carrying its node (the
  submodule's node, or a bond whose sensitivity comes from the rules: ``x * c`` has |c|,
  ``x / c`` has 1/|c|, shape queries 0, unknown operations 1);
- an operation with several tensor inputs first joins them: one identity edge per input
  into a join vertex, then the operation's edge (so ``x + f(x)`` becomes
  Chain(Tuple(identity, f), add): sensitivities add, masses add);
- the output's tensors lead to a sink T.

The graph is then reduced: parallel edges between the same two vertices merge into a
``Tuple``, and a vertex with one edge in and one edge out merges them into a ``Chain``.
A series-parallel graph (residual blocks, attention, MLPs, U-Net-like skips) reduces to
one edge S → T, whose node is the module's. Otherwise ``TraceError`` is raised and the
caller falls back to a flat tuple.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from .composition import Atom, Bond, Chain, Node, Tuple
from .detect import linear_layout

if TYPE_CHECKING:
    from .module import Context

__all__ = ["TraceError", "Graph", "SumBond", "op_bond", "trace_node"]


class TraceError(RuntimeError):
    """The module could not be traced, or its dataflow is not series-parallel."""


class _LeafTracer(fx.Tracer):
    """Every submodule is a leaf; control flow on shapes alone (``assert T <= block_size``)
    is taken as true, control flow on values still fails."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def to_bool(self, obj: fx.Proxy) -> bool:
        if _shape_only(obj.node, self.root):
            return True
        return super().to_bool(obj)


def _shape_only(node: fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` is computed from shapes, dtypes, buffers and constants only."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in _METADATA_ATTRS:
            continue
        if n.op == "call_method" and n.target in _METADATA_METHODS:
            continue
        if n.op == "get_attr" and not isinstance(_fetch(root, str(n.target)), nn.Parameter):
            continue
        if n.op in ("call_function", "call_method"):
            stack.extend(_inputs(n))
            continue
        return False
    return True


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


def op_bond(target: object, args: list[Any], ctx: Context, operands: int = 1) -> Bond:
    """The bond of an operation (a function, a method name, or a tensor method) on ``args``.

    ``x * c`` and ``c * x`` are |c|, ``x / c`` is 1/|c| (named "×c", as ``composition.scaled``
    names a scale); a sum of several dynamic operands is a ``SumBond``; a concatenation of n
    dynamic operands is 1/n (the joined tuple's ν is Σν_i; the RMS of the concatenation is at
    most the largest part's, which equals the mean for equal parts); other operations take
    the sensitivity registered for them (``Rules.register_function``, by object or by name), else 1.
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
    s = ctx.rules.function_sensitivity(target)
    if s is None and not isinstance(target, str):
        s = ctx.rules.function_sensitivity(name)
    return Bond(1.0 if s is None else s, name=name)


def _inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


_METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}
_METADATA_METHODS = {"size", "dim", "numel", "type_as_meta", "get_device"}


def _is_static(node: fx.Node, static: set[fx.Node], module: nn.Module) -> bool:
    """True for values that do not depend on the input's values: shapes, dtypes, buffers,
    constants, and anything computed from those alone (they carry no perturbation)."""
    if node.op == "get_attr":
        return not isinstance(_fetch(module, str(node.target)), nn.Parameter)
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2 and node.args[1] in _METADATA_ATTRS:
        return True
    if node.op == "call_method" and node.target in _METADATA_METHODS:
        return True
    if node.op in ("call_function", "call_method"):
        return all(i in static for i in _inputs(node))
    if node.op == "call_module":
        sub = module.get_submodule(str(node.target))
        return not any(True for _ in sub.parameters()) and all(i in static for i in _inputs(node))
    return False


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


def trace_node(module: nn.Module, ctx: Context) -> Node:
    """The composition node of ``module`` from its traced forward; raises ``TraceError``."""
    try:
        graph = _LeafTracer().trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "fall back"
        raise TraceError(f"torch.fx could not trace its forward ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    S, T = "<source>", "<sink>"
    g = Graph()
    ident = Bond(1.0, name="identity")
    prefix = ctx.path(module)
    static: set[fx.Node] = set()
    params: dict[fx.Node, Atom] = {}
    for node in graph.nodes:
        if node.op != "output" and _is_static(node, static, module):
            static.add(node)
            continue
        if node.op == "placeholder":
            g.add(S, node, ident)
        elif node.op == "get_attr":
            obj = _fetch(module, str(node.target))  # a Parameter: buffers are static
            name = f"{prefix}.{node.target}" if prefix else str(node.target)
            geo = ctx.bare_geometry(name, obj, module, raw=True, layout=linear_layout(node))
            params[node] = Atom(((str(node.target), obj, geo),), 1.0, 0.0, name=name, kind="Parameter")
        elif node.op in ("call_module", "call_function", "call_method"):
            ins = [i for i in _inputs(node) if i not in static]
            anchor = next((i for i in ins if i not in params), S)
            ins = [_hang(g, params, i, anchor, (node, k)) for k, i in enumerate(ins)]
            if node.op == "call_module":
                op = ctx.resolve(module.get_submodule(str(node.target)))
                ins = list(dict.fromkeys(ins))  # a module sees a tensor passed twice once: attn(h, h, h)
            else:
                op = op_bond(node.target, list(node.args), ctx, operands=len(ins))
            if not ins:
                g.add(S, node, Chain([Bond(0.0, name="constant"), op]))
            elif len(ins) == 1:
                g.add(ins[0], node, op)
            else:
                join = ("join", node)
                for i in ins:
                    g.add(i, join, ident)
                g.add(join, node, op)
        elif node.op == "output":
            for k, i in enumerate(_inputs(node)):
                if i not in static:
                    g.add(_hang(g, params, i, S, (node, k)), T, ident)
    g.prune(T)
    if not g.edges:
        raise TraceError("its output does not depend on its inputs or parameters")
    return g.reduce(S, T)


def _hang(g: Graph, params: dict[fx.Node, Atom], i: fx.Node, anchor: object, use: object) -> object:
    """The vertex of input ``i``; a parameter gets a fresh vertex per use, its atom on an edge from ``anchor``."""
    if i not in params:
        return i
    v = ("parameter", use)
    g.add(anchor, v, params[i])
    return v


def _fetch(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
