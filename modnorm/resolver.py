"""Resolving a network's geometry: from an ``nn.Module`` to per-parameter geometries and budgets.

``Resolver(model, rules, default, strategies)`` turns every module, outermost first, into a
composition node (``modnorm.composition``) by

1. its own declaration: a module with a ``modular(ctx) -> Node`` method (every
   ``modnorm.layers`` layer and ``Sequential``/``Residual``/``Parallel``/``Scale``);
2. a layer rule (``modnorm.rules.LayerRules``) for its type: an atom, a bond or a custom node;
3. ``nn.Sequential``: the chain of its children; ``nn.ModuleList``/``ModuleDict``: the tuple;
   a leaf holding parameters: one atom of them;
4. the strategies, in order, each a way of recovering a module's node from its forward
   (``modnorm.capture.RecordedForward``: one real forward; ``modnorm.trace.FxTrace``:
   torch.fx), every submodule resolved in turn by these steps;
5. if none recovers it: the fallback, a flat ``Tuple`` of its children (and of its own
   parameters), recorded in ``untraced``.

A mass override (``rules.set_mass(path, mass)``) wraps the module's node in ``Tared``.

``resolve(model, rules, default, strategies)`` resolves the whole model and derives,
per parameter, its geometry and budget (``Analysis``):

- plain residual sums found by a strategy are composed in the convex form (``modnorm.residual``);
- output head: in a network of at least two weight layers, the module the model returns
  from ``get_output_embeddings()`` (transformers), else the *only terminal atom* — the one
  weight layer whose output reaches the model's output without passing through another
  weight layer — else a head found by name (``modnorm.detect``) switches to its head
  geometries if its rule or layer offers them (``nn.Linear``: RowNorm, role "head"). A
  modnorm ``Linear(head=True/False)``, a name override or ``LayerRules(auto_head=False)``
  decides explicitly;
- a parameter used by several atoms (weight tying, a module called twice) keeps the
  smallest of its budgets and one geometry: the embedding geometry when one of the
  modules holding it declares one (a tied input/output table is an embedding, never a
  hidden matrix), else its first use's;
- parameters with no declared or inferable geometry are all collected and reported by
  one ``GeometryError``; modules that fell back are named in one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor, nn

from .composition import Atom, Bond, Chain, Node, Tared, Tuple
from .detect import declared_head_path, named_head_path, raw_parameter_geometry
from .fixes import GeometryError, fallback_warning, geometry_error
from .geometry import Geometry
from .graph import TraceError
from .layers import defaults as _D
from .residual import residual_form
from .rules import DEFAULT_RULES, LayerRules

__all__ = ["Modular", "Strategy", "Resolver", "ParamInfo", "Analysis", "Default", "resolve"]

Default = Geometry | Callable[[str, Tensor], Geometry] | None

_PLACEHOLDER = _D.vector()  # stands in for a missing geometry until resolve() reports them all


@runtime_checkable
class Modular(Protocol):
    """A module that declares its own composition node."""

    def modular(self, ctx: Resolver) -> Node: ...


class Strategy:
    """A way of recovering the node of a module that neither declares one nor has a rule.

    ``prepare(resolver)`` runs once before the model is resolved; ``node(module, resolver)``
    returns the module's node, ``None`` to leave it to the next strategy, or raises
    ``modnorm.graph.TraceError`` when the module's dataflow cannot be composed.
    ``runs_forward``: whether the strategy runs the model (the fallback warning's advice
    depends on it).
    """

    runs_forward: bool = False

    def prepare(self, resolver: Resolver) -> None:
        return None

    def node(self, module: nn.Module, resolver: Resolver) -> Node | None:
        raise NotImplementedError


class Resolver:
    """Resolves modules of one model into nodes; passed to ``modular(ctx)`` and to node rules."""

    def __init__(
        self, model: nn.Module, rules: LayerRules | None = None, default: Default = None, strategies: Sequence[Strategy] = (),
    ) -> None:
        if rules is not None and not isinstance(rules, LayerRules):
            raise TypeError(f"rules must be a modnorm.rules.LayerRules, got {type(rules).__name__}")
        if default is not None and not (isinstance(default, Geometry) or callable(default)):
            raise TypeError(f"default must be a modnorm.Geometry or a function (name, param) -> Geometry, got {default!r}")
        self.model, self.rules, self.default = model, rules or DEFAULT_RULES, default
        self._paths = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self._paths.setdefault(id(m), name)
        self.untraced: list[tuple[str, str]] = []
        self.missing: dict[str, tuple[Tensor, nn.Module]] = {}  # parameters without a geometry, reported together
        self.strategies = tuple(strategies)

    # -- helpers for declarations -----------------------------------------------------
    def path(self, module: nn.Module) -> str:
        """The module's path in the model ("" for the model itself)."""
        return self._paths.get(id(module), f"<{type(module).__name__}>")

    def param_name(self, module: nn.Module, local: str) -> str:
        p = self.path(module)
        return f"{p}.{local}" if p else local

    def child(self, module: nn.Module, name: str) -> Node:
        """The node of ``module``'s submodule ``name``."""
        return self.resolve(module.get_submodule(name))

    def atom(
        self,
        module: nn.Module,
        geometries: Mapping[str, Geometry],
        mass: float = 1.0,
        sensitivity: float = 1.0,
        head: Mapping[str, Geometry] | None = None,
        kind: str | None = None,
    ) -> Atom:
        """An atom holding ``module``'s parameters named in ``geometries`` (absent ones, e.g. bias=None, skipped)."""

        def params(geos: Mapping[str, Geometry]) -> tuple[tuple[str, Tensor, Geometry], ...]:
            out = []
            for local, geo in geos.items():
                try:
                    p = module.get_parameter(local)
                except AttributeError:
                    continue
                out.append((local, p, geo))
            return tuple(out)

        return Atom(
            params(geometries), mass, sensitivity, name=self.path(module),
            head=params(head) if head is not None else None, kind=kind or type(module).__name__,
        )

    def bare_geometry(
        self, name: str, param: Tensor, owner: nn.Module, raw: bool = False, layout: str | None = None
    ) -> Geometry:
        """Geometry of a parameter no rule declares: a name override, else the default, else (for a
        ``raw`` parameter) the default of ``modnorm.detect`` from its ``layout`` as a linear map (if
        known) and its rank. Without any the parameter is recorded in ``missing`` (``analyze``
        raises one ``GeometryError`` for all of them) and a placeholder is returned."""
        geo = self.rules.apply_overrides(name, None)
        if geo is None and self.default is not None:
            geo = self.default if isinstance(self.default, Geometry) else self.default(name, param)
        if geo is None and raw:
            geo = raw_parameter_geometry(param, owner, layout)
        if geo is None:
            self.missing.setdefault(name, (param, owner))
            return _PLACEHOLDER
        return geo

    def declared_geometry(self, owner: nn.Module, local: str) -> Geometry | None:
        """The geometry ``owner``'s declaration or rule gives its parameter ``local`` (None if none does)."""
        declared = getattr(owner, "declared", None)
        if callable(declared):
            return declared().get(local)
        rule = self.rules.lookup(owner)
        geos = rule.geometries_for(owner) if rule is not None and rule.node is None else None
        return geos.get(local) if geos else None

    def own_params_atom(self, module: nn.Module) -> Atom | None:
        """Atom of ``module``'s own (non-submodule) parameters, geometries from overrides/default."""
        own = list(module.named_parameters(recurse=False))
        if not own:
            return None
        geos = {local: self.bare_geometry(self.param_name(module, local), p, module, raw=True) for local, p in own}
        return self.atom(module, geos)

    # -- resolution ---------------------------------------------------------------------
    def resolve(self, module: nn.Module) -> Node:
        node = self._resolve(module)
        mass = self.rules.mass_for(self.path(module))
        return Tared(node, mass) if mass is not None else node

    def how(self, module: nn.Module) -> Literal["declared", "atom", "derived"]:
        """How ``module`` resolves: "declared" (its ``modular``, a node rule, a container),
        "atom" (an atom or bond rule, a leaf holding parameters) or "derived" (by the strategies)."""
        if isinstance(module, Modular):
            return "declared"
        rule = self.rules.lookup(module)
        if rule is not None:
            return "declared" if rule.node is not None else "atom"
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            return "declared"
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers without a forward
            return "declared"
        if not any(True for _ in module.children()) and any(True for _ in module.parameters(recurse=False)):
            return "atom"
        return "derived"

    def _resolve(self, module: nn.Module) -> Node:
        how = self.how(module)
        if how == "derived":
            return self._derive(module)
        if isinstance(module, Modular):
            return module.modular(self)
        rule = self.rules.lookup(module)
        if rule is not None:
            if rule.node is not None:
                return rule.node(module, self)
            if rule.geometries is None:
                return Bond(rule.sensitivity_for(module), name=self.path(module))
            atom = self.atom(
                module, rule.geometries_for(module) or {}, rule.mass, rule.sensitivity_for(module),
                head=rule.head_for(module),
            )
            # a layer whose declared parameters are all absent (e.g. LayerNorm without affine) is a bond
            return atom if atom.params else Bond(atom.sensitivity, name=atom.name)
        if isinstance(module, nn.Sequential):
            return Chain([self.resolve(c) for c in module])
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            return Tuple([self.resolve(c) for c in module.children()]) if len(module) else Bond(1.0, name=self.path(module))
        return self.own_params_atom(module)  # type: ignore[return-value]

    def _derive(self, module: nn.Module) -> Node:
        reason = "no strategy recovers its composition"
        for strategy in self.strategies:
            try:
                node = strategy.node(module, self)
            except TraceError as e:
                reason = str(e)
                continue
            if node is not None:
                return node
        return self.fallback(module, reason)

    def fallback(self, module: nn.Module, reason: str) -> Node:
        """A flat tuple of ``module``'s children and own parameters; recorded in ``untraced``."""
        path = self.path(module) or "<model>"
        self.untraced.append((f"{path} ({type(module).__name__})", reason))
        items = [self.resolve(c) for c in module.children()]
        own = self.own_params_atom(module)
        if own is not None:
            items.append(own)
        return Tuple(items) if items else Bond(1.0, name=path)


def _tied_tables(model: nn.Module, ctx: Resolver, names: dict[int, str], head_ids: set[int]) -> dict[str, Geometry]:
    """Parameters held by several modules (weight tying) of which one declares it an embedding:
    name → that embedding geometry, whichever use the composition reaches first (or at all),
    marked ``tied_head`` when the output head (``head_ids``: its parameters) holds it too."""
    owners: dict[int, list[nn.Module]] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(m)
    out: dict[str, Geometry] = {}
    for pid, ms in owners.items():
        if len(ms) < 2 or pid not in names:
            continue
        for m in ms:
            geos = [g for a in ctx.resolve(m).atoms() for _, p, g in a.params if id(p) == pid and g.role == "embedding"]
            if geos:
                out[names[pid]] = replace(geos[0], tied_head=True) if pid in head_ids else geos[0]
                break
    return out


def _head_atom(model: nn.Module, root: Node, terminal: list[Atom]) -> Atom | None:
    """The atom that takes its head geometries: the model's declared output head, else the
    only terminal atom, else a head found by name (``modnorm.detect``)."""

    def atom_at(path: str | None) -> Atom | None:
        found = [a for a in root.atoms() if path is not None and a.name == path and a.head is not None]
        return found[0] if found else None

    declared = atom_at(declared_head_path(model))
    if declared is not None:
        return declared
    if len({id(a) for a in terminal}) == 1:
        return terminal[0] if terminal[0].head is not None else None
    return atom_at(named_head_path(model))


@dataclass(frozen=True)
class ParamInfo:
    """Everything modnorm derived for one parameter."""

    name: str
    shape: tuple[int, ...]
    geometry: Geometry
    budget: float
    mass: float
    sensitivity: float
    module: str
    kind: str


@dataclass(frozen=True)
class Analysis:
    """A model's composition tree and the per-parameter results, in ``named_parameters`` order."""

    root: Node
    params: dict[str, ParamInfo]
    effective: dict[int, tuple[tuple[str, Tensor, Geometry], ...]]
    untraced: list[tuple[str, str]]

    def atom_params(self, atom: Atom) -> tuple[tuple[str, Tensor, Geometry], ...]:
        return self.effective.get(id(atom), atom.params)


def resolve(
    model: nn.Module, rules: LayerRules | None = None, default: Default = None, strategies: Sequence[Strategy] = (),
) -> Analysis:
    """Resolve ``model`` (unwrapped) with ``strategies`` and derive every parameter's geometry
    and budget (see the module docstring). A strategy's ``prepare`` may raise ``ValueError``
    (a forward that does not run on its inputs) before anything is resolved."""
    ctx = Resolver(model, rules, default, strategies)
    for strategy in ctx.strategies:
        strategy.prepare(ctx)
    root = residual_form(ctx.resolve(model))
    rules_ = ctx.rules
    effective: dict[int, tuple[tuple[str, Tensor, Geometry], ...]] = {}
    terminal, _ = root.terminals()
    n_atoms = len({id(a) for a in root.atoms()})
    head_ids: set[int] = set()
    if rules_.auto_head and n_atoms >= 2:
        head = _head_atom(model, root, terminal)
        if head is not None:
            effective[id(head)] = head.head  # type: ignore[assignment]
            head_ids = {id(p) for _, p, _ in head.head}  # type: ignore[union-attr]

    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, dict] = {}

    modules = dict(model.named_modules())

    def visit(node: Node) -> None:
        for atom, b in node.budgets():
            entries = list(effective.get(id(atom), atom.params))
            owner = modules.get(atom.name) if atom.kind != "Parameter" else None
            if owner is not None:  # parameters of the layer its declaration left out: override/default/error
                held = {id(p) for _, p, _ in entries}
                for local, p in owner.named_parameters(recurse=False):
                    if id(p) not in held:
                        entries.append((local, p, ctx.bare_geometry(ctx.param_name(owner, local), p, owner)))
            for local, p, geo in entries:
                name = names.get(id(p))
                if name is None:
                    raise ValueError(f"atom {atom.name!r} holds a parameter {local!r} that is not in model.named_parameters()")
                if name in found:
                    found[name]["budget"] = min(found[name]["budget"], b)
                    continue
                found[name] = dict(geometry=geo, budget=b, mass=atom.mass, sensitivity=atom.sensitivity, module=atom.name, kind=atom.kind)

    visit(root)
    missing = [n for n in names.values() if n not in found]
    if missing:
        owners = {n.rpartition(".")[0] for n in missing}
        warnings.warn(
            f"modnorm: parameters {missing} are not reached by the model's composition (not used in its traced "
            "forward); each owning module gets budgets as a network of its own", stacklevel=3,
        )
        for owner in sorted(owners, key=len):
            sub = ctx.resolve(model.get_submodule(owner))
            visit(sub)
    for name, geo in _tied_tables(model, ctx, names, head_ids).items():
        if name in found:
            found[name]["geometry"] = geo
    if ctx.missing:
        raise geometry_error(ctx.missing)
    if ctx.untraced:
        warnings.warn(fallback_warning(ctx.untraced, any(s.runs_forward for s in ctx.strategies)), stacklevel=4)
    infos: dict[str, ParamInfo] = {}
    for name, p in model.named_parameters():
        f = found.get(name)
        if f is None:
            raise GeometryError(f"parameter {name!r} is not reached by the model's composition and its module declares no geometry for it")
        geo = rules_.apply_overrides(name, f["geometry"])
        assert geo is not None
        infos[name] = ParamInfo(name, tuple(p.shape), geo, f["budget"], f["mass"], f["sensitivity"], f["module"], f["kind"])
    return Analysis(root, infos, effective, ctx.untraced)


