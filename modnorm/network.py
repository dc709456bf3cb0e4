"""The geometry of a whole network: per-parameter geometries, budgets and the modular norm.

``analyze(model)`` resolves the model's composition (``modnorm.resolver``) with the
strategies that recover a module's composition from its forward: one real forward on
``example_inputs`` (``modnorm.capture``) when they are given, or when the model carries
``dummy_inputs`` as transformers' models do (if they do not run it, torch.fx alone);
then torch.fx (``modnorm.trace``). A model wrapped by ``torch.compile``,
``DistributedDataParallel`` or ``DataParallel`` is analysed as the module it wraps (names
without the wrapper's ``_orig_mod.``/``module.`` prefix).

``structure``, ``geometries``, ``budgets`` and ``modular_norm`` read the analysis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor, nn

from .capture import ForwardError, RecordedForward
from .composition import Atom, Node
from .geometry import Geometry
from .resolver import Analysis, Default, resolve
from .rules import LayerRules
from .trace import FxTrace

__all__ = ["analyze", "structure", "geometries", "budgets", "modular_norm", "unwrap"]


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


def analyze(
    model: nn.Module, rules: LayerRules | None = None, default: Default = None, example_inputs: object = None,
) -> Analysis:
    """Resolve ``model``'s structure and compute every parameter's geometry and budget.

    ``example_inputs`` (a tensor, a tuple of positional arguments or a dict of keyword
    arguments): capture the composition from one forward on them (``modnorm.capture``);
    by default a model's ``dummy_inputs`` (transformers' models) are used, else torch.fx.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    if example_inputs is not None:
        return resolve(model, rules, default, (RecordedForward(example_inputs), FxTrace()))
    dummy = _dummy_inputs(model)
    if dummy is not None:
        try:
            return resolve(model, rules, default, (RecordedForward(dummy), FxTrace()))
        except ForwardError:  # the model's own dummy inputs do not run it: torch.fx, as without them
            pass
    return resolve(model, rules, default, (FxTrace(),))


def structure(model: nn.Module, rules: LayerRules | None = None, default: Default = None, example_inputs: object = None) -> Node:
    """The composition tree of ``model`` (see the module docstring for how it is found)."""
    return analyze(model, rules, default, example_inputs).root


def geometries(model: nn.Module, rules: LayerRules | None = None, default: Default = None, example_inputs: object = None) -> dict[str, Geometry]:
    """Geometry of every parameter of ``model``, keyed as in ``model.named_parameters()``.

    Raises ``GeometryError`` naming every parameter with no declaration, rule or override,
    unless ``default`` (a Geometry, or a function (name, param) → Geometry) is given.
    ``example_inputs``: see ``analyze``.
    """
    return {n: i.geometry for n, i in analyze(model, rules, default, example_inputs).params.items()}


def budgets(model: nn.Module, rules: LayerRules | None = None, default: Default = None, example_inputs: object = None) -> dict[str, float]:
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
    rules: LayerRules | None = None,
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

