"""Recovering the composition of a model from one real forward on example inputs (``RecordedForward``).

``RecordedForward(example_inputs)``, a resolver strategy, runs the model once (eval mode, no grad, the RNG
state and every module's training flag restored afterwards) while recording its dataflow:

- a module with a rule for its type (an atom or a bond) is a *leaf*: nothing inside it
  is recorded, and its call is one edge from its tensor inputs to its outputs carrying
  its resolved node. A tensor passed several times (``attn(h, h, h)``) counts once;
- a modnorm layer, a ``register_node`` rule or a plain ``nn.Sequential`` is *declared*:
  its call is one edge carrying its resolved node (its children are recorded too,
  so that a declaration may resolve them);
- any other module is *recorded*: every torch function and tensor method it runs (seen
  through a ``TorchFunctionMode``) and every submodule it calls becomes an edge of its
  own two-terminal graph (``modnorm.graph.Graph``), exactly as a torch.fx trace would:
  dynamic inputs start at the source, parameters read directly are atoms from the
  source, several tensor operands are joined first, outputs lead to the sink. The graph
  is reduced to one node (``TraceError`` if it is not series-parallel: the module then
  falls back to a flat tuple, see ``modnorm.resolver``).

A value is *dynamic* if it is computed from a floating-point input or from a parameter;
everything else — integer inputs (token ids, masks), buffers, constants, shapes and
what is computed from them alone — is static and adds no edges (an embedding lookup of
token ids is an edge from the source through a sensitivity-0 bond). A dynamic tensor that
a module reads without receiving it as an argument (a closure, an attribute set in the
forward) is one more input of that module's call. A parameter read directly (a layer
scale ``gamma * h``, a position table) is an atom of sensitivity 0 on an edge from the
operation's first other operand (from the source if it has none), so that it joins the
dataflow where it is used rather than bridging from the source. The model's outputs are the tensors in
what it returns (nested tuples, lists and dicts; the keys ``hidden_states``,
``attentions`` and ``cross_attentions`` of a transformers ``ModelOutput`` are left out,
and non-tensor objects such as caches are skipped).

A module called several times contributes one edge per call; the strategy's node of a
module is the node of its first call (what a declaration resolving it receives). A
forward that fails on the inputs raises ``ForwardError`` (a ``ValueError``) from
``prepare``, before anything is resolved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .composition import Atom, Bond, Chain, Node
from .graph import IDENTITY as _IDENTITY, Graph, TraceError, op_bond
from .resolver import Strategy

if TYPE_CHECKING:
    from .resolver import Resolver

__all__ = ["RecordedForward", "ForwardError", "as_call"]

_SKIPPED_OUTPUT_KEYS = frozenset({"hidden_states", "attentions", "cross_attentions", "past_key_values"})
_KINDS = {"declared": "declared", "atom": "leaf", "derived": "recorded"}


class ForwardError(ValueError):
    """The model's forward raised on the example inputs."""


def as_call(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as (args, kwargs): a tensor, a tuple/list of arguments, or a dict of keyword arguments."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple of the forward's positional arguments or a dict of its keyword "
        f"arguments, got {type(example_inputs).__name__}"
    )


def _tensors(obj: Any, output: bool = False) -> Iterator[Tensor]:
    """Tensors in nested tuples, lists and dicts (in order)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not (output and k in _SKIPPED_OUTPUT_KEYS):
                yield from _tensors(v, output)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v, output)


class _Frame:
    """The graph of one recorded module call."""

    def __init__(self, module: nn.Module, kind: str) -> None:
        self.module, self.kind = module, kind
        self.graph = Graph()
        self.vertex: dict[int, object] = {}
        self.free: list[Tensor] = []
        self.keep: list[Any] = []  # keeps recorded tensors alive, so that their ids stay unique
        self.count = 0

    def new_vertex(self) -> object:
        self.count += 1
        return ("v", id(self), self.count)


class _Param:
    """A parameter read by an operation: its atom is placed when the operation's edge is."""

    def __init__(self, atom: Atom) -> None:
        self.atom = atom


class _Recorder(TorchFunctionMode):
    def __init__(self, ctx: Resolver, nodes: dict[int, list[Node]]) -> None:
        super().__init__()
        self.ctx, self.nodes = ctx, nodes  # module → the node of each of its recorded calls
        self.frames: list[_Frame] = []
        self.leaf_depth = 0
        self.owners: dict[int, tuple[nn.Module, str]] = {}  # parameter → (its module, its name)
        for mname, m in ctx.model.named_modules(remove_duplicate=False):
            for local, p in m.named_parameters(recurse=False, remove_duplicate=False):
                self.owners.setdefault(id(p), (m, f"{mname}.{local}" if mname else local))
        self.calls: list[tuple[str, Any]] = []  # how each open module call is recorded: leaf, frame or inline

    # -- values ------------------------------------------------------------------------
    def _lookup(self, t: Tensor, depth: int) -> object | None:
        """The vertex of ``t`` in frame ``depth`` (adding a parameter atom or a free input), None if static."""
        frame = self.frames[depth]
        v = frame.vertex.get(id(t))
        if v is not None:
            return v
        if id(t) in self.owners:  # a parameter is read where it is used: never a free input
            if frame.kind == "declared":
                return None  # a declaration accounts for its own parameters
            owner, name = self.owners[id(t)]
            geo = self.ctx.declared_geometry(owner, name.rsplit(".", 1)[-1]) or self.ctx.bare_geometry(name, t, owner, raw=True)
            return _Param(Atom(((name.rsplit(".", 1)[-1], t, geo),), 1.0, 0.0, name=name, kind="Parameter"))
        if depth > 0 and self._lookup(t, depth - 1) is not None:
            v = frame.new_vertex()
            frame.graph.add("S", v, _IDENTITY)
            frame.free.append(t)
        else:
            return None
        frame.vertex[id(t)] = v
        frame.keep.append(t)
        return v

    def _inputs(self, values: Any, unique: bool) -> list[object]:
        found = [self._lookup(t, len(self.frames) - 1) for t in _tensors(values)]
        found = [v for v in found if v is not None]
        return list(dict.fromkeys(found)) if unique else found  # _Param objects are distinct: never merged

    def _emit(self, inputs: list[object], node: Node, outputs: Any) -> None:
        """An edge (through a join when there are several inputs) from ``inputs`` to the vertex of ``outputs``."""
        frame = self.frames[-1]
        anchor = next((v for v in inputs if not isinstance(v, _Param)), "S")
        for k, v in enumerate(inputs):
            if isinstance(v, _Param):  # a parameter's atom (ν 0) hangs off the operation's other operand
                inputs[k] = frame.new_vertex()
                frame.graph.add(anchor, inputs[k], v.atom)
        out = frame.new_vertex()
        if not inputs:
            frame.graph.add("S", out, Chain([Bond(0.0, name="constant"), node]))
        elif len(inputs) == 1:
            frame.graph.add(inputs[0], out, node)
        else:
            join = frame.new_vertex()
            for v in inputs:
                frame.graph.add(v, join, _IDENTITY)
            frame.graph.add(join, out, node)
        for t in _tensors(outputs):
            frame.vertex[id(t)] = out
            frame.keep.append(t)

    # -- torch functions -----------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth or not self.frames or getattr(func, "__name__", "") == "__get__":
            return out
        inputs = self._inputs((args, kwargs), unique=False)
        if inputs and (out is None or any(True for _ in _tensors(out))):
            if getattr(func, "__name__", "") == "__setitem__":
                out_values: Any = args[0]
            else:
                out_values = out
            self._emit(inputs, op_bond(func, list(args), self.ctx.rules, operands=len(inputs)), out_values)
        return out

    # -- modules -------------------------------------------------------------------------
    def kind(self, module: nn.Module) -> str:
        return _KINDS[self.ctx.how(module)]

    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        kind = self.kind(module)
        if self.leaf_depth:
            self.leaf_depth += kind == "leaf"
            return
        if kind == "leaf":
            self.leaf_depth += 1
            self.calls.append(("leaf", (args, kwargs)))
            return
        if self.frames:
            depth = len(self.frames) - 1
            inputs = [t for t in _tensors((args, kwargs)) if self._lookup(t, depth) is not None]
        else:
            inputs = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
        if kind == "recorded" and self.frames and len({id(t) for t in inputs}) > 1:
            # several inputs (a sublayer's output and the residual stream it adds): record into the caller's
            # graph, so that the join sits where the dataflow really joins
            self.calls.append(("inline", None))
            return
        frame = _Frame(module, kind)
        for t in inputs:
            if id(t) not in frame.vertex:
                v = frame.new_vertex()
                frame.graph.add("S", v, _IDENTITY)
                frame.vertex[id(t)] = v
                frame.keep.append(t)
        self.frames.append(frame)
        self.calls.append(("frame", (args, kwargs)))

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self.leaf_depth > 1 or (self.leaf_depth == 1 and self.kind(module) != "leaf"):
            self.leaf_depth -= self.kind(module) == "leaf"
            return
        how, call = self.calls.pop()
        if how == "leaf":
            self.leaf_depth = 0
            self._emit(self._inputs(call, unique=True), self.ctx.resolve(module), output)
            return
        if how == "inline":
            return
        frame = self.frames.pop()
        if frame.kind == "declared":
            node = self.ctx.resolve(module)
        else:
            for t in _tensors(output, output=True):
                v = frame.vertex.get(id(t))
                if v is not None:
                    frame.graph.add(v, "T", _IDENTITY)
            frame.graph.prune("T")
            if not frame.graph.edges:  # static output (rotary tables, masks): no edge, its outputs stay static
                return
            try:
                node = frame.graph.reduce("S", "T")
            except TraceError as e:
                node = self.ctx.fallback(module, str(e))
            self.nodes.setdefault(id(module), []).append(node)
        if not self.frames:
            return
        self._emit(self._inputs((call, frame.free), unique=True), node, output)


class RecordedForward(Strategy):
    """The strategy that records one real forward on ``example_inputs`` (see the module docstring)."""

    runs_forward = True

    def __init__(self, example_inputs: Any) -> None:
        self.args, self.kwargs = as_call(example_inputs)
        self.nodes: dict[int, list[Node]] = {}  # filled during the forward: declarations resolved then look their children up here

    def prepare(self, resolver: Resolver) -> None:
        _record(resolver, self.nodes, self.args, self.kwargs)

    def node(self, module: nn.Module, resolver: Resolver) -> Node | None:
        found = self.nodes.get(id(module))
        return found[0] if found else None


def _record(ctx: Resolver, nodes: dict[int, list[Node]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run ``ctx.model`` once on (args, kwargs), recording the node of every recorded module call into ``nodes``."""
    model = ctx.model
    recorder = _Recorder(ctx, nodes)
    handles = []
    training = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(recorder.post_hook, with_kwargs=True))
        model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad(), contextlib.ExitStack() as stack:
            stack.enter_context(recorder)
            try:
                model(*args, **kwargs)
            except TraceError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's forward failed on their inputs
                first = str(e).splitlines()[0] if str(e) else ""
                raise ForwardError(
                    f"example_inputs: the model's forward raised {type(e).__name__}: {first}. Pass inputs that "
                    "model(*example_inputs) (a tuple), model(**example_inputs) (a dict) or model(example_inputs) (a tensor) accepts"
                ) from e
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
