"""Layer rules: how plain torch.nn modules declare their geometry (``LayerRules``, ``LayerRule``).

A ``LayerRules`` object maps module types to

- an atom rule: per-parameter geometries (a dict, or a function of the module returning
  one), the module's mass and sensitivity, and optionally the geometries to use when
  the module is the network's output head;
- a bond rule: a parameter-free module's sensitivity;
- traced operations (functions such as ``operator.add``, method names such as
  ``"view"``) to their sensitivity, used when the composition is recovered by tracing;

plus per-parameter-name overrides (``fnmatch`` patterns, applied last, to every
parameter, modnorm layers included) and per-module mass overrides (absolute mass of the
submodule at that path, modula's ``tare``).

``DEFAULT_RULES`` holds the defaults below; a new ``LayerRules()`` inherits from it, so
registering there overrides the defaults only for the models you pass it to.
``register_rule``/``register_bond``/``register_function`` write to ``DEFAULT_RULES``.

Defaults (see ``modnorm.layers.defaults`` for the geometries, docs/layers.md for the table):
Linear → weight hidden (head when it is the network's output head), bias vector;
Conv1d/2d/3d → weight SpectralConv(1/2/3), ``Stacked`` per group when ``groups > 1``
(a depthwise conv: one 1×1 map per channel), bias vector; ConvTranspose1d/2d/3d → the
same on the (in, out/g, *k) layout (``Transposed``); Embedding, EmbeddingBag → embedding;
LayerNorm, RMSNorm, GroupNorm, BatchNorm1d/2d/3d → weight and bias vector;
RNN/LSTM/GRU → each ``weight_ih``/``weight_hh`` Stacked(Spectral(), gates) (1/4/3 gate
blocks), ``weight_hr`` Spectral, biases vector, mass = num_layers;
MultiheadAttention → ``in_proj_weight`` Stacked(Spectral(), 3) (query, key, value
blocks), separate ``q/k/v_proj_weight`` Spectral, biases vector, ``out_proj`` a Linear.
Structural rules (``modnorm.detect``): Conv1D-like layers (transformers) and any leaf
module holding only vectors (normalization layers of any library).
Activations, dropout, pooling, flatten, identity: bonds (see ``BOND_SENSITIVITY``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import detect
from .composition import Bond, Chain, finite_nonneg
from .geometry import Geometry
from .layers import defaults as D
from .blocks import Stacked
from .norms import Spectral

__all__ = [
    "LayerRule",
    "LayerRules",
    "DEFAULT_RULES",
    "register_rule",
    "register_bond",
    "register_function",
]

GeometrySpec = Mapping[str, Geometry] | Callable[[nn.Module], Mapping[str, Geometry]]


@dataclass(frozen=True)
class LayerRule:
    """How one module type is declared. ``geometries is None`` makes it a bond (no weights).

    ``node``, when given, builds the module's whole composition node itself:
    ``node(module, ctx) -> modnorm.composition.Node`` (see ``modnorm.resolver.Resolver``).
    """

    geometries: GeometrySpec | None = None
    mass: float = 1.0
    sensitivity: float | Callable[[nn.Module], float] = 1.0
    head: GeometrySpec | None = None
    node: Callable[..., Any] | None = None

    def geometries_for(self, module: nn.Module) -> dict[str, Geometry] | None:
        return _evaluate(self.geometries, module)

    def head_for(self, module: nn.Module) -> dict[str, Geometry] | None:
        return _evaluate(self.head, module)

    def sensitivity_for(self, module: nn.Module) -> float:
        return float(self.sensitivity(module) if callable(self.sensitivity) else self.sensitivity)


def _evaluate(spec: GeometrySpec | None, module: nn.Module) -> dict[str, Geometry] | None:
    if spec is None:
        return None
    out = dict(spec(module) if callable(spec) else spec)
    for k, g in out.items():
        if not isinstance(g, Geometry):
            raise TypeError(f"rule for {type(module).__name__}: parameter {k!r} maps to {type(g).__name__}, expected a modnorm.Geometry")
    return out


def _check_type(module_type: object) -> type:
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be a subclass of torch.nn.Module, got {module_type!r}")
    return module_type


class LayerRules:
    """A registry of rules; lookups fall back to ``parent`` (``DEFAULT_RULES`` unless ``inherit=False``)."""

    def __init__(self, inherit: bool = True, *, auto_head: bool | None = None, _parent: LayerRules | None = None) -> None:
        self.parent = _parent if _parent is not None else (DEFAULT_RULES if inherit else None)
        self._auto_head = auto_head
        self._types: dict[type, LayerRule] = {}
        self._functions: dict[object, float] = {}
        self._patterns: list[tuple[str, Geometry | None, dict[str, Any]]] = []
        self._masses: list[tuple[str, float]] = []
        self._detectors: list[tuple[Callable[[nn.Module], bool], LayerRule]] = []

    # -- registration -------------------------------------------------------------
    def register(
        self,
        module_type: type,
        geometries: GeometrySpec,
        *,
        mass: float = 1.0,
        sensitivity: float | Callable[[nn.Module], float] = 1.0,
        head: GeometrySpec | None = None,
    ) -> None:
        """Declare ``module_type`` (and its subclasses) an atom: ``geometries`` maps each
        parameter name of the module (as in ``module.named_parameters(recurse=False)``) to a Geometry."""
        _check_type(module_type)
        if geometries is None or not (callable(geometries) or isinstance(geometries, Mapping)):
            raise TypeError(f"register({module_type.__name__}): geometries must be a dict name→Geometry or a function module→dict")
        finite_nonneg(mass, "mass")
        self._types[module_type] = LayerRule(geometries, float(mass), sensitivity, head)

    def register_structural(
        self,
        predicate: Callable[[nn.Module], bool],
        geometries: GeometrySpec,
        *,
        mass: float = 1.0,
        sensitivity: float | Callable[[nn.Module], float] = 1.0,
        head: GeometrySpec | None = None,
    ) -> None:
        """Declare every module for which ``predicate(module)`` holds an atom (checked, in
        registration order, only for modules no type rule covers)."""
        if not callable(predicate):
            raise TypeError(f"register_structural: predicate must be a function module → bool, got {predicate!r}")
        if geometries is None or not (callable(geometries) or isinstance(geometries, Mapping)):
            raise TypeError("register_structural: geometries must be a dict name→Geometry or a function module→dict")
        finite_nonneg(mass, "mass")
        self._detectors.append((predicate, LayerRule(geometries, float(mass), sensitivity, head)))

    def register_bond(self, module_type: type, sensitivity: float | Callable[[nn.Module], float] = 1.0) -> None:
        """Declare a parameter-free ``module_type`` a bond of the given sensitivity."""
        _check_type(module_type)
        if not callable(sensitivity):
            finite_nonneg(sensitivity, "sensitivity")
        self._types[module_type] = LayerRule(None, 0.0, sensitivity)

    def register_node(self, module_type: type, node: Callable[..., Any]) -> None:
        """Let ``node(module, ctx)`` build the whole composition node of ``module_type``."""
        _check_type(module_type)
        self._types[module_type] = LayerRule(node=node)

    def register_function(self, fn: object, sensitivity: float) -> None:
        """Sensitivity of a traced function (e.g. ``torch.tanh``) or method name (e.g. ``"tanh"``)."""
        finite_nonneg(sensitivity, "sensitivity")
        self._functions[fn] = float(sensitivity)

    def override(self, pattern: str, geometry: Geometry | None = None, **fields: Any) -> None:
        """Override the geometry of every parameter whose name matches ``pattern`` (fnmatch).

        Pass a whole ``Geometry``, or fields to replace (``norm=``, ``preconditioner=``, ``role=``).
        Later overrides win.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"override: pattern must be a non-empty string such as 'head.weight' or '*.bias', got {pattern!r}")
        if geometry is not None and not isinstance(geometry, Geometry):
            raise TypeError(f"override({pattern!r}): geometry must be a modnorm.Geometry, got {type(geometry).__name__}")
        bad = set(fields) - {f.name for f in dataclasses.fields(Geometry)}
        if bad:
            raise TypeError(f"override({pattern!r}): unknown Geometry fields {sorted(bad)}; use norm=, preconditioner= or role=")
        if geometry is None and not fields:
            raise ValueError(f"override({pattern!r}): pass a Geometry or fields to change")
        self._patterns.append((pattern, geometry, fields))

    def set_mass(self, pattern: str, mass: float) -> None:
        """Give the submodule(s) at paths matching ``pattern`` (fnmatch; "" is the root) total mass ``mass``."""
        finite_nonneg(mass, "mass")
        self._masses.append((pattern, float(mass)))

    @property
    def auto_head(self) -> bool:
        """Whether the network's only terminal atom takes its head geometry (default True;
        ``LayerRules(auto_head=False)`` turns position-based detection off)."""
        for r in self.chain():
            if r._auto_head is not None:
                return r._auto_head
        return True

    # -- lookup -----------------------------------------------------------------------
    def chain(self) -> list[LayerRules]:
        out, r = [], self
        while r is not None:
            out.append(r)
            r = r.parent
        return out

    def lookup(self, module: nn.Module) -> LayerRule | None:
        """The rule for the most specific class of ``module`` (own registrations first at each class)."""
        registries = self.chain()
        for cls in type(module).__mro__:
            for r in registries:
                if cls in r._types:
                    return r._types[cls]
        for r in registries:
            for predicate, rule in r._detectors:
                if predicate(module):
                    return rule
        return None

    def function_sensitivity(self, target: object) -> float | None:
        for r in self.chain():
            try:
                if target in r._functions:
                    return r._functions[target]
            except TypeError:  # unhashable target
                return None
        return None

    def apply_overrides(self, name: str, geometry: Geometry | None) -> Geometry | None:
        for r in reversed(self.chain()):
            for pattern, geo, fields in r._patterns:
                if fnmatch.fnmatchcase(name, pattern):
                    geometry = geo if geo is not None else geometry
                    if fields:
                        if geometry is None:
                            if "norm" not in fields:
                                continue
                            geometry = Geometry(**fields)
                        else:
                            geometry = dataclasses.replace(geometry, **fields)
        return geometry

    def mass_for(self, path: str) -> float | None:
        found = None
        for r in reversed(self.chain()):
            for pattern, mass in r._masses:
                if fnmatch.fnmatchcase(path, pattern):
                    found = mass
        return found

    def copy(self) -> LayerRules:
        new = LayerRules(_parent=self.parent, auto_head=self._auto_head) if self.parent is not None else LayerRules(inherit=False, auto_head=self._auto_head)
        new._types, new._functions = dict(self._types), dict(self._functions)
        new._patterns, new._masses = list(self._patterns), list(self._masses)
        new._detectors = list(self._detectors)
        return new

    @contextlib.contextmanager
    def scoped(self) -> Iterator[LayerRules]:
        """Registrations made inside the block are undone at its end (replaced entries restored)."""
        saved = self.copy()
        try:
            yield self
        finally:
            self._types, self._functions = saved._types, saved._functions
            self._patterns, self._masses, self._detectors = saved._patterns, saved._masses, saved._detectors


# -- defaults ---------------------------------------------------------------------------

def _linear(m: nn.Module) -> dict[str, Geometry]:
    out = {"weight": D.hidden()}
    if getattr(m, "bias", None) is not None:
        out["bias"] = D.vector()
    return out


def _linear_head(m: nn.Module) -> dict[str, Geometry]:
    return {**_linear(m), "weight": D.head()}


def _conv(kernel_dims: int, transposed: bool = False) -> Callable[[nn.Module], dict[str, Geometry]]:
    def rule(m: nn.Module) -> dict[str, Geometry]:
        out = {"weight": D.conv(kernel_dims, groups=int(getattr(m, "groups", 1)), transposed=transposed)}
        if getattr(m, "bias", None) is not None:
            out["bias"] = D.vector()
        return out

    return rule


def _affine(m: nn.Module) -> dict[str, Geometry]:
    return {name: D.vector() for name, p in m.named_parameters(recurse=False)}


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn(m: nn.Module) -> dict[str, Geometry]:
    """Gate blocks of every ``weight_ih``/``weight_hh`` (LSTM: i, f, g, o; GRU: r, z, n)."""
    gates = _GATES.get(getattr(m, "mode", ""), 1)
    out: dict[str, Geometry] = {}
    for name, p in m.named_parameters(recurse=False):
        if name.startswith(("weight_ih", "weight_hh")):
            out[name] = D.hidden(Stacked(Spectral(), gates) if gates > 1 else Spectral())
        elif p.ndim == 2:  # weight_hr (LSTM projection)
            out[name] = D.hidden()
        else:
            out[name] = D.vector()
    return out


def _rnn_node(m: nn.Module, ctx: Any) -> Any:
    """One atom: the stacked recurrent layers, mass ``num_layers`` (one per layer), sensitivity 1."""
    return ctx.atom(m, _rnn(m), mass=float(getattr(m, "num_layers", 1)), sensitivity=1.0)


def _mha(m: nn.Module) -> dict[str, Geometry]:
    out: dict[str, Geometry] = {}
    for name, _ in m.named_parameters(recurse=False):
        if name == "in_proj_weight":
            out[name] = D.hidden(Stacked(Spectral(), 3))
        elif name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            out[name] = D.hidden()
        else:  # in_proj_bias, bias_k, bias_v
            out[name] = D.vector()
    return out


def _mha_node(m: nn.Module, ctx: Any) -> Any:
    """Q/K/V projections (one atom of mass 3: three linear maps) → attention (bond) → out_proj."""
    in_proj = ctx.atom(m, _mha(m), mass=3.0, sensitivity=1.0)
    return Chain([in_proj, Bond(1.0, name=f"{ctx.path(m)}:attention"), ctx.child(m, "out_proj")])


BOND_SENSITIVITY: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.LeakyReLU: 1.0, nn.ELU: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0,
    nn.GELU: D.GELU_MAX_SLOPE, nn.SiLU: D.SILU_MAX_SLOPE, nn.Sigmoid: 0.25, nn.Softmax: 1.0,
    nn.Dropout: 1.0, nn.Dropout1d: 1.0, nn.Dropout2d: 1.0, nn.Identity: 1.0, nn.Flatten: 1.0, nn.Unflatten: 1.0,
    nn.MaxPool1d: 1.0, nn.MaxPool2d: 1.0, nn.AvgPool1d: 1.0, nn.AvgPool2d: 1.0,
    nn.AdaptiveAvgPool1d: 1.0, nn.AdaptiveAvgPool2d: 1.0, nn.AdaptiveMaxPool2d: 1.0,
}

FUNCTION_SENSITIVITY: dict[object, float] = {
    F.gelu: D.GELU_MAX_SLOPE, "gelu": D.GELU_MAX_SLOPE,
    F.silu: D.SILU_MAX_SLOPE, "silu": D.SILU_MAX_SLOPE,
    torch.sigmoid: 0.25, F.sigmoid: 0.25, "sigmoid": 0.25,
    # values that do not depend on the input: 0 (shape queries and constants are static in traces anyway)
    torch.zeros_like: 0.0, torch.ones_like: 0.0, torch.empty_like: 0.0, "new_zeros": 0.0, "new_ones": 0.0,
}
"""Sensitivity of traced functions and methods; everything else is 1 (``x * c``: |c|, ``x / c``: 1/|c|)."""



def default_rules() -> LayerRules:
    """A fresh copy of the library's layer conventions (the rules above, the bond and
    function sensitivities below); ``DEFAULT_RULES`` is the one every model falls back to."""
    rules = LayerRules(inherit=False)
    rules.register(nn.Linear, _linear, head=_linear_head)
    for t, k in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)):
        rules.register(t, _conv(k))
    for t, k in ((nn.ConvTranspose1d, 1), (nn.ConvTranspose2d, 2), (nn.ConvTranspose3d, 3)):
        rules.register(t, _conv(k, transposed=True))
    rules.register_node(nn.RNNBase, _rnn_node)
    rules.register(nn.Embedding, lambda m: {"weight": D.embedding()})
    rules.register(nn.EmbeddingBag, lambda m: {"weight": D.embedding()})
    for t in (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        rules.register(t, _affine)
    rules.register_node(nn.MultiheadAttention, _mha_node)
    rules.register_structural(detect.is_conv1d_like, detect.conv1d_geometries, head=detect.conv1d_head)
    rules.register_structural(detect.is_gain_module, detect.gain_geometries)
    for t, sensitivity in BOND_SENSITIVITY.items():
        rules.register_bond(t, sensitivity)
    for fn, sensitivity in FUNCTION_SENSITIVITY.items():
        rules.register_function(fn, sensitivity)
    return rules


DEFAULT_RULES = default_rules()
"""The rules every model falls back to; ``register_rule`` and friends add to it (for every
model), ``with DEFAULT_RULES.scoped():`` undoes additions at the end of the block."""

register_rule = DEFAULT_RULES.register
"""Declare the geometry of your own layer type for every model (``DEFAULT_RULES.register``)."""
register_bond = DEFAULT_RULES.register_bond
"""``DEFAULT_RULES.register_bond``: a weightless module type and its sensitivity."""
register_function = DEFAULT_RULES.register_function
"""``DEFAULT_RULES.register_function``: a traced function or method and its sensitivity."""
