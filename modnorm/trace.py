"""Recovering the composition of a plain torch.nn module by tracing it with torch.fx (``FxTrace``).

The module's forward is traced with every submodule kept as a leaf (each is resolved on
its own, so the tree follows the module hierarchy). Control flow that depends on shapes
only (``assert T <= block_size``) is assumed to take its true branch; control flow on
values makes tracing fail. The traced dataflow becomes a two-terminal graph
(``modnorm.graph``):

- a source S feeds every input (identity); a parameter the forward reads directly is an
  atom of sensitivity 0 (it does not depend on the input) on an edge from the first other
  operand of the operation that uses it (from S if there is none), once per use — so a
  layer scale ``gamma * h`` joins where it is used instead of bridging from the source;
- values that do not depend on the input's values — shapes, dtypes, buffers, constants
  and whatever is computed from them alone — are static: they add no edges, so shape
  bookkeeping (``B, T, C = x.shape``) does not tie branches together;
- every other operation is an edge carrying its node (the submodule's node, or the
  operation's bond); the output's tensors lead to a sink T.

The graph is reduced to one node; ``TraceError`` if it is not series-parallel (the
resolver then falls back to a flat tuple).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx, nn

from .composition import Atom, Bond, Chain, Node
from .detect import linear_layout
from .graph import IDENTITY, Graph, TraceError, op_bond
from .resolver import Strategy

if TYPE_CHECKING:
    from .resolver import Resolver

__all__ = ["FxTrace", "trace_node"]


class _LeafTracer(fx.Tracer):
    """Every submodule is a leaf; control flow on shapes alone (``assert T <= block_size``)
    is taken as true, control flow on values still fails."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def to_bool(self, obj: fx.Proxy) -> bool:
        if _depends_on_statics_only(obj.node, self.root):
            return True
        return super().to_bool(obj)


_METADATA_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}
_METADATA_METHODS = {"size", "dim", "numel", "get_device"}


def _inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _is_static(node: fx.Node, static: set[fx.Node], module: nn.Module) -> bool:
    """True for values that do not depend on the input's values: shapes, dtypes, buffers,
    constants, and anything computed from those alone (they carry no perturbation).
    ``static`` holds the nodes already found static (``node``'s inputs among them)."""
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


def _depends_on_statics_only(node: fx.Node, module: nn.Module) -> bool:
    """``_is_static`` for a node of a graph still being traced: its ancestors are decided first."""
    ancestors, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in ancestors:
            ancestors.add(n)
            stack.extend(_inputs(n))
    static: set[fx.Node] = set()
    for n in node.graph.nodes:  # topological order
        if n in ancestors and _is_static(n, static, module):
            static.add(n)
    return node in static


def trace_node(module: nn.Module, ctx: Resolver) -> Node:
    """The composition node of ``module`` from its traced forward; raises ``TraceError``."""
    try:
        graph = _LeafTracer().trace(module)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "fall back"
        raise TraceError(f"torch.fx could not trace its forward ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    S, T = "<source>", "<sink>"
    g = Graph()
    prefix = ctx.path(module)
    static: set[fx.Node] = set()
    params: dict[fx.Node, Atom] = {}
    for node in graph.nodes:
        if node.op != "output" and _is_static(node, static, module):
            static.add(node)
            continue
        if node.op == "placeholder":
            g.add(S, node, IDENTITY)
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
                op = op_bond(node.target, list(node.args), ctx.rules, operands=len(ins))
            if not ins:
                g.add(S, node, Chain([Bond(0.0, name="constant"), op]))
            elif len(ins) == 1:
                g.add(ins[0], node, op)
            else:
                join = ("join", node)
                for i in ins:
                    g.add(i, join, IDENTITY)
                g.add(join, node, op)
        elif node.op == "output":
            for k, i in enumerate(_inputs(node)):
                if i not in static:
                    g.add(_hang(g, params, i, S, (node, k)), T, IDENTITY)
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


class FxTrace(Strategy):
    """The strategy that traces a module's forward with torch.fx (see the module docstring)."""

    def node(self, module: nn.Module, resolver: Resolver) -> Node | None:
        return trace_node(module, resolver)
