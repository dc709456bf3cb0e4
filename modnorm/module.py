"""The geometry of a whole network: per-parameter geometries, budgets and the modular norm.

``structure(model)`` turns any ``nn.Module`` into a composition tree
(``modnorm.composition``), resolving every module, outermost first, by

1. its own declaration: a module with a ``modular(ctx) -> Node`` method (every
   ``modnorm.layers`` layer and ``modnorm.Sequential``/``Residual``/``Parallel``/``Scale``);
2. a rule (``modnorm.auto.Rules``) for its type: an atom, a bond or a custom node;
3. ``nn.Sequential``: the chain of its children;
4. its node from a real forward on example inputs (``modnorm.capture``) when
   ``example_inputs`` are given (or the model carries ``dummy_inputs``, as transformers'
   models do); else tracing its forward with torch.fx (``modnorm.trace``), every
   submodule a leaf resolved in turn by these steps;
5. if neither recovers it: the fallback, a flat ``Tuple`` of its children (and of its
   own parameters). One warning per analysis names every such module, why, and what
   the budgets fall back to.

Plain residual sums found by tracing or capture are then composed in the convex form
(``modnorm.residual``). A model wrapped by ``torch.compile``, ``DistributedDataParallel``
or ``DataParallel`` is analysed as the module it wraps (names without the wrapper's
``_orig_mod.``/``module.`` prefix). Parameters with no declared or inferable geometry
are all collected and reported by one ``GeometryError``.

A mass override (``rules.set_mass(path, mass)``) wraps the module's node in ``Tared``.

Output head: in a network of at least two weight layers, the module the model returns
from ``get_output_embeddings()`` (transformers), else the *only terminal atom* — the
one weight layer whose output reaches the model's output without passing through another
weight layer — else a head found by name (``modnorm.detect``) switches to its head
geometries if its rule or layer offers them (``nn.Linear``: RowNorm, role "head"). A
modnorm ``Linear(head=True/False)``, a name override or ``Rules(auto_head=False)`` decides explicitly.

A parameter used by several atoms (weight tying, a module called twice) keeps the
smallest of its budgets and one geometry: the embedding geometry when one of the modules
holding it declares one (a tied input/output table is an embedding, never a hidden
matrix), else its first use's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from .auto import DEFAULT_RULES, Rules
from .composition import Atom, Bond, Chain, Node, Tared, Tuple
from .detect import declared_head_path, named_head_path, raw_parameter_geometry
from .fixes import GeometryError, fallback_warning, geometry_error
from .geometry import Geometry
from .residual import residual_form
from .layers import defaults as _D

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

_PLACEHOLDER = _D.vector()  # stands in for a missing geometry until analyze() reports them all


@runtime_checkable
class Modular(Protocol):
    """A module that declares its own composition node."""

    def modular(self, ctx: Context) -> Node: ...


class Context:
    """Resolves modules of one model into nodes; passed to ``modular(ctx)`` and to node rules."""

    def __init__(self, model: nn.Module, rules: Rules | None = None, default: Default = None) -> None:
        from .capture import Captured

        if rules is not None and not isinstance(rules, Rules):
            raise TypeError(f"rules must be a modnorm.Rules, got {type(rules).__name__}")
        if default is not None and not (isinstance(default, Geometry) or callable(default)):
            raise TypeError(f"default must be a modnorm.Geometry or a function (name, param) -> Geometry, got {default!r}")
        self.model, self.rules, self.default = model, rules or DEFAULT_RULES, default
        self._paths = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self._paths.setdefault(id(m), name)
        self.untraced: list[tuple[str, str]] = []
        self.missing: dict[str, tuple[Tensor, nn.Module]] = {}  # parameters without a geometry, reported together
        self.captured: Captured | None = None

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
        if self.captured is not None:
            node = self.captured.node(module)
            if node is not None:
                return node
        from .trace import TraceError, trace_node

        try:
            return trace_node(module, self)
        except TraceError as e:
            return self.fallback(module, str(e))

    def fallback(self, module: nn.Module, reason: str) -> Node:
        """A flat tuple of ``module``'s children and own parameters; recorded in ``untraced``."""
        path = self.path(module) or "<model>"
        self.untraced.append((f"{path} ({type(module).__name__})", reason))
        items = [self.resolve(c) for c in module.children()]
        own = self.own_params_atom(module)
        if own is not None:
            items.append(own)
        return Tuple(items) if items else Bond(1.0, name=path)


def _tied_tables(model: nn.Module, ctx: Context, names: dict[int, str]) -> dict[str, Geometry]:
    """Parameters held by several modules (weight tying) of which one declares it an embedding:
    name → that embedding geometry, whichever use the composition reaches first (or at all)."""
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
                out[names[pid]] = geos[0]
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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile``, ``DistributedDataParallel`` and ``DataParallel`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _dummy_inputs(model: nn.Module) -> object | None:
    """transformers' ``PreTrainedModel.dummy_inputs`` (a dict of small input tensors), if the model has them."""
    try:
        dummy = getattr(model, "dummy_inputs", None)
    except Exception:  # noqa: BLE001 - a property that cannot build them for this config
        return None
    return dummy if isinstance(dummy, Mapping) and dummy and all(isinstance(v, Tensor) for v in dummy.values()) else None


def analyze(model: nn.Module, rules: Rules | None = None, default: Default = None, example_inputs: object = None) -> Analysis:
    """Resolve ``model``'s structure and compute every parameter's geometry and budget.

    ``example_inputs`` (a tensor, a tuple of positional arguments or a dict of keyword
    arguments): capture the composition from one forward on them (``modnorm.capture``);
    by default a model's ``dummy_inputs`` (transformers' models) are used, else torch.fx.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    ctx = Context(model, rules, default)
    from .capture import capture

    if example_inputs is not None:
        capture(ctx, example_inputs)
    elif (dummy := _dummy_inputs(model)) is not None:
        try:
            capture(ctx, dummy)
        except ValueError:  # the model's own dummy inputs do not run it: torch.fx, as without them
            ctx = Context(model, rules, default)
    root = residual_form(ctx.resolve(model))
    rules_ = ctx.rules
    effective: dict[int, tuple[tuple[str, Tensor, Geometry], ...]] = {}
    terminal, _ = root.terminals()
    n_atoms = len({id(a) for a in root.atoms()})
    if rules_.auto_head and n_atoms >= 2:
        head = _head_atom(model, root, terminal)
        if head is not None:
            effective[id(head)] = head.head  # type: ignore[assignment]

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
            "forward); each owning module gets budgets as a network of its own", stacklevel=2,
        )
        for owner in sorted(owners, key=len):
            sub = ctx.resolve(model.get_submodule(owner))
            visit(sub)
    for name, geo in _tied_tables(model, ctx, names).items():
        if name in found:
            found[name]["geometry"] = geo
    if ctx.missing:
        raise geometry_error(ctx.missing)
    if ctx.untraced:
        warnings.warn(fallback_warning(ctx.untraced, ctx.captured is not None), stacklevel=3)
    infos: dict[str, ParamInfo] = {}
    for name, p in model.named_parameters():
        f = found.get(name)
        if f is None:
            raise GeometryError(f"parameter {name!r} is not reached by the model's composition and its module declares no geometry for it")
        geo = rules_.apply_overrides(name, f["geometry"])
        assert geo is not None
        infos[name] = ParamInfo(name, tuple(p.shape), geo, f["budget"], f["mass"], f["sensitivity"], f["module"], f["kind"])
    return Analysis(root, infos, effective, ctx.untraced)


def structure(model: nn.Module, rules: Rules | None = None, default: Default = None, example_inputs: object = None) -> Node:
    """The composition tree of ``model`` (see the module docstring for how it is found)."""
    return analyze(model, rules, default, example_inputs).root


def geometries(model: nn.Module, rules: Rules | None = None, default: Default = None, example_inputs: object = None) -> dict[str, Geometry]:
    """Geometry of every parameter of ``model``, keyed as in ``model.named_parameters()``.

    Raises ``GeometryError`` naming every parameter with no declaration, rule or override,
    unless ``default`` (a Geometry, or a function (name, param) → Geometry) is given.
    ``example_inputs``: see ``analyze``.
    """
    return {n: i.geometry for n, i in analyze(model, rules, default, example_inputs).params.items()}


def budgets(model: nn.Module, rules: Rules | None = None, default: Default = None, example_inputs: object = None) -> dict[str, float]:
    """Each parameter's share of the update (the optimizer multiplies its learning rate by it).

    Dualizing the modular norm of the whole network with budget 1: composition gives the
    first module budget t·μ1/(μ·ν2) and the second t·μ2/μ, a tuple gives child i t·μi/μ.
    """
    out = {n: i.budget for n, i in analyze(model, rules, default, example_inputs).params.items()}
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
    example_inputs: object = None,
) -> float:
    """The modular norm of a set of weights or updates ``tensors`` (name → tensor, shapes as the parameters').

    Equals max over parameters of ‖tensor‖_geometry / budget. With ``strict=False`` absent
    names count as zero. Leading dims beyond a norm's ``ndim`` are a batch: their max is taken.
    """
    analysis = analyze(model, rules, default, example_inputs)
    model = unwrap(model)
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

    value = analysis.root.norm(atom_norm)
    in_root = {names[id(p)] for a in analysis.root.atoms() for _, p, _ in analysis.atom_params(a)}
    for name, info in analysis.params.items():  # parameters the forward never reaches
        if name not in in_root and name in tensors:
            value = max(value, _param_norm(info.geometry, tensors[name], name) / info.budget)
    return value

