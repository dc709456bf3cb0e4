"""The geometry of a whole network: per-parameter geometries, budgets and the modular norm.

``structure(model)`` turns any ``nn.Module`` into a composition tree
(``modnorm.composition``), resolving every module, outermost first, by

1. its own declaration: a module with a ``modular(ctx) -> Node`` method (every
   ``modnorm.layers`` layer and ``modnorm.Sequential``/``Residual``/``Parallel``/``Scale``);
2. a rule (``modnorm.auto.Rules``) for its type: an atom, a bond or a custom node;
3. ``nn.Sequential``: the chain of its children;
4. tracing its forward with torch.fx (``modnorm.trace``), every submodule a leaf
   resolved in turn by these steps;
5. if tracing fails: the fallback, a flat ``Tuple`` of its children (and of its own
   parameters), with a warning naming the module.

A mass override (``rules.set_mass(path, mass)``) wraps the module's node in ``Tared``.

Output head: in a network of at least two weight layers, the *only terminal atom* — the
one weight layer whose output reaches the model's output without passing through another
weight layer — switches to its head geometries if its rule or layer offers them
(``nn.Linear``: RowNorm, role "head"). A modnorm ``Linear(head=True/False)``, a name
override or ``Rules(auto_head=False)`` decides explicitly.

A parameter used by several atoms (weight tying, a module called twice) keeps the
geometry of its first use and the smallest of its budgets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from .auto import DEFAULT_RULES, Rules
from .composition import Atom, Bond, Chain, Node, Tared, Tuple, atom_budgets, node_norm
from .geometry import Geometry

__all__ = [
    "Modular",
    "Context",
    "GeometryError",
    "ParamInfo",
    "Analysis",
    "analyze",
    "structure",
    "geometries",
    "budgets",
    "modular_norm",
]

Default = Geometry | Callable[[str, Tensor], Geometry] | None


@runtime_checkable
class Modular(Protocol):
    """A module that declares its own composition node."""

    def modular(self, ctx: Context) -> Node: ...


class GeometryError(TypeError):
    """A parameter has no declared or inferable geometry."""


class Context:
    """Resolves modules of one model into nodes; passed to ``modular(ctx)`` and to node rules."""

    def __init__(self, model: nn.Module, rules: Rules | None = None, default: Default = None) -> None:
        if rules is not None and not isinstance(rules, Rules):
            raise TypeError(f"rules must be a modnorm.Rules, got {type(rules).__name__}")
        if default is not None and not (isinstance(default, Geometry) or callable(default)):
            raise TypeError(f"default must be a modnorm.Geometry or a function (name, param) -> Geometry, got {default!r}")
        self.model, self.rules, self.default = model, rules or DEFAULT_RULES, default
        self._paths = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self._paths.setdefault(id(m), name)
        self.untraced: list[tuple[str, str]] = []

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

    def bare_geometry(self, name: str, param: Tensor, owner: nn.Module) -> Geometry:
        """Geometry of a parameter no rule declares: a name override, else the default, else an error."""
        geo = self.rules.apply_overrides(name, None)
        if geo is None and self.default is not None:
            geo = self.default if isinstance(self.default, Geometry) else self.default(name, param)
        if geo is None:
            local = name.rsplit(".", 1)[-1]
            t = type(owner).__name__
            raise GeometryError(
                f"parameter {name!r} (shape {tuple(param.shape)}) of a {t} has no declared or inferable geometry. "
                f"Register one for the layer type with modnorm.register_rule({t}, {{{local!r}: modnorm.Geometry(norm, "
                f"'adam', role)}}) (or on a modnorm.Rules passed as rules=), declare it by name with "
                f"rules.override({name!r}, modnorm.Geometry(...)), or opt into a fallback with default=modnorm.Geometry(...)"
            )
        return geo

    def own_params_atom(self, module: nn.Module) -> Atom | None:
        """Atom of ``module``'s own (non-submodule) parameters, geometries from overrides/default."""
        own = list(module.named_parameters(recurse=False))
        if not own:
            return None
        geos = {local: self.bare_geometry(self.param_name(module, local), p, module) for local, p in own}
        return self.atom(module, geos)

    # -- resolution ---------------------------------------------------------------------
    def resolve(self, module: nn.Module) -> Node:
        node = self._resolve(module)
        mass = self.rules.mass_for(self.path(module))
        return Tared(node, mass) if mass is not None else node

    def _resolve(self, module: nn.Module) -> Node:
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
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            return Chain([self.resolve(c) for c in module])
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers without a forward
            return Tuple([self.resolve(c) for c in module.children()]) if len(module) else Bond(1.0, name=self.path(module))
        has_children = any(True for _ in module.children())
        if not has_children and any(True for _ in module.parameters(recurse=False)):
            return self.own_params_atom(module)  # type: ignore[return-value]
        from .trace import TraceError, trace_node

        try:
            return trace_node(module, self)
        except TraceError as e:
            return self._fallback(module, str(e))

    def _fallback(self, module: nn.Module, reason: str) -> Node:
        path = self.path(module) or "<model>"
        self.untraced.append((path, reason))
        warnings.warn(
            f"modnorm: could not trace {path} ({type(module).__name__}): {reason}. Its submodules are composed as a "
            "flat tuple (each gets its mass's share; sensitivities are not chained). Give the module a rule "
            "(modnorm.Rules.register_node) or make its forward traceable by torch.fx.",
            stacklevel=4,
        )
        items = [self.resolve(c) for c in module.children()]
        own = self.own_params_atom(module)
        if own is not None:
            items.append(own)
        return Tuple(items) if items else Bond(1.0, name=path)


def _terminals(node: Node) -> tuple[list[Atom], bool]:
    """Atoms whose output reaches the node's output through no other atom, and whether an
    atom-free path crosses the node."""
    if isinstance(node, Atom):
        return [node], False
    if isinstance(node, Bond):
        return [], True
    if isinstance(node, Tared):
        return _terminals(node.child)
    if isinstance(node, Tuple):
        found, through = [], False
        for c in node.items:
            f, t = _terminals(c)
            found += f
            through = through or t
        return found, through
    if isinstance(node, Chain):
        found, through = [], True
        for c in reversed(node.items):
            if not through:
                break
            f, t = _terminals(c)
            found += f
            through = t
        return found, through
    raise TypeError(f"unknown node type {type(node).__name__}")


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


def analyze(model: nn.Module, rules: Rules | None = None, default: Default = None) -> Analysis:
    """Resolve ``model``'s structure and compute every parameter's geometry and budget."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ctx = Context(model, rules, default)
    root = ctx.resolve(model)
    rules_ = ctx.rules
    effective: dict[int, tuple[tuple[str, Tensor, Geometry], ...]] = {}
    terminal, _ = _terminals(root)
    n_atoms = len({id(a) for a in root.atoms()})
    if rules_.auto_head and n_atoms >= 2 and len({id(a) for a in terminal}) == 1 and terminal[0].head is not None:
        effective[id(terminal[0])] = terminal[0].head

    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, dict] = {}

    modules = dict(model.named_modules())

    def visit(node: Node) -> None:
        for atom, b in atom_budgets(node):
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
            "forward); each owning module gets budgets as a network of its own", stacklevel=2,
        )
        for owner in sorted(owners, key=len):
            sub = ctx.resolve(model.get_submodule(owner))
            visit(sub)
    infos: dict[str, ParamInfo] = {}
    for name, p in model.named_parameters():
        f = found.get(name)
        if f is None:
            raise GeometryError(f"parameter {name!r} is not reached by the model's composition and its module declares no geometry for it")
        geo = rules_.apply_overrides(name, f["geometry"])
        assert geo is not None
        infos[name] = ParamInfo(name, tuple(p.shape), geo, f["budget"], f["mass"], f["sensitivity"], f["module"], f["kind"])
    return Analysis(root, infos, effective, ctx.untraced)


def structure(model: nn.Module, rules: Rules | None = None, default: Default = None) -> Node:
    """The composition tree of ``model`` (see the module docstring for how it is found)."""
    return analyze(model, rules, default).root


def geometries(model: nn.Module, rules: Rules | None = None, default: Default = None) -> dict[str, Geometry]:
    """Geometry of every parameter of ``model``, keyed as in ``model.named_parameters()``.

    Raises ``GeometryError`` naming a parameter with no declaration, rule or override,
    unless ``default`` (a Geometry, or a function (name, param) → Geometry) is given.
    """
    return {n: i.geometry for n, i in analyze(model, rules, default).params.items()}


def budgets(model: nn.Module, rules: Rules | None = None, default: Default = None) -> dict[str, float]:
    """Each parameter's share of the update (the optimizer multiplies its learning rate by it).

    Dualizing the modular norm of the whole network with budget 1: composition gives the
    first module budget t·μ1/(μ·ν2) and the second t·μ2/μ, a tuple gives child i t·μi/μ.
    """
    out = {n: i.budget for n, i in analyze(model, rules, default).params.items()}
    bad = [n for n, b in out.items() if not (b > 0 and math.isfinite(b))]
    if bad:
        raise ValueError(f"parameters {bad} get no positive finite budget (their module has mass 0); give it a positive mass")
    return out


def _param_norm(geo: Geometry, tensor: Tensor, name: str) -> float:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"modular_norm: tensors[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    v = geo.norm.value(tensor.detach())
    return float(v.amax()) if v.ndim else float(v)


def modular_norm(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    rules: Rules | None = None,
    default: Default = None,
    strict: bool = True,
) -> float:
    """The modular norm of a set of weights or updates ``tensors`` (name → tensor, shapes as the parameters').

    Equals max over parameters of ‖tensor‖_geometry / budget. With ``strict=False`` absent
    names count as zero. Leading dims beyond a norm's ``ndim`` are a batch: their max is taken.
    """
    analysis = analyze(model, rules, default)
    unknown = sorted(set(tensors) - set(analysis.params))
    if unknown:
        raise KeyError(f"modular_norm: {unknown} are not parameters of the model; names must match model.named_parameters()")
    absent = [n for n in analysis.params if n not in tensors]
    if absent and strict:
        raise KeyError(f"modular_norm: no tensor for {absent}; pass one per parameter or strict=False to count them as zero")
    names = {id(p): n for n, p in model.named_parameters()}

    def atom_norm(atom: Atom) -> float:
        best = 0.0
        for _, p, _ in analysis.atom_params(atom):
            name = names[id(p)]
            if name in tensors:
                best = max(best, _param_norm(analysis.params[name].geometry, tensors[name], name))
        return best

    value = node_norm(analysis.root, atom_norm)
    in_root = {names[id(p)] for a in analysis.root.atoms() for _, p, _ in analysis.atom_params(a)}
    for name, info in analysis.params.items():  # parameters the forward never reaches
        if name not in in_root and name in tensors:
            value = max(value, _param_norm(info.geometry, tensors[name], name) / info.budget)
    return value

