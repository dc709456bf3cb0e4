"""What modnorm tells a user when a model's geometry is incomplete: one error, one warning.

``GeometryError`` lists every parameter with no declared or inferable geometry at once,
with fixes that run as written with any call that takes a model (``modnorm.optimizer``,
``budgets``, ``geometries``, ``describe``, ``modular_norm``): a rule per layer type
naming all of that type's parameters (only for layers without submodules, which a rule
turns into one atom; parameters left out of a rule get no default), an override per name, or a ``default=``. Suggested
geometries go by rank: a vector is ``RMS()`` (role "vector"), a matrix ``Spectral()``
(role "hidden"), anything else ``Frobenius(ndim)`` (role "vector").

``fallback_warning`` is the one warning for the modules whose composition was not
recovered: it names them, says why, and what their budgets fall back to.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["GeometryError", "geometry_error", "fallback_warning"]


class GeometryError(TypeError):
    """Parameters have no declared or inferable geometry (the message lists all of them and the fixes)."""


def _suggest(p: Tensor) -> str:
    if p.ndim <= 1:
        return "modnorm.Geometry(modnorm.RMS(), 'adam', 'vector')"
    if p.ndim == 2:
        return "modnorm.Geometry(modnorm.Spectral(), 'adam', 'hidden')"
    return f"modnorm.Geometry(modnorm.Frobenius({p.ndim}), 'adam', 'vector')"


def geometry_error(missing: dict[str, tuple[Tensor, nn.Module]]) -> GeometryError:
    """One error for every parameter in ``missing`` (name → (parameter, owning module))."""
    lines = [f"{len(missing)} parameter(s) have no declared or inferable geometry:"]
    for name, (p, owner) in missing.items():
        lines.append(f"  {name!r} (shape {tuple(p.shape)}) of a {type(owner).__name__}")
    by_type: dict[type, dict[str, Tensor]] = {}
    by_name: list[tuple[str, Tensor]] = []
    for name, (p, owner) in missing.items():
        if any(True for _ in owner.children()):
            by_name.append((name, p))  # a rule would make a module with submodules one atom: declare by name
        else:  # the rule declares the whole layer: every parameter of it, those with a default too
            by_type.setdefault(type(owner), {}).update(owner.named_parameters(recurse=False))
    lines.append("Declare them (then pass rules=rules to modnorm.optimizer, budgets, geometries or describe):")
    lines.append("  rules = modnorm.LayerRules()")
    for t, params in by_type.items():
        geos = ", ".join(f"{local!r}: {_suggest(p)}" for local, p in params.items())
        lines.append(f"  rules.register({t.__name__}, {{{geos}}})  # {t.__name__} from {t.__module__}")
    for name, p in by_name:
        lines.append(f"  rules.override({name!r}, {_suggest(p)})")
    lines.append("or give every undeclared parameter one geometry: default=modnorm.Geometry(modnorm.RMS(), 'adam', 'vector')")
    return GeometryError("\n".join(lines))


def fallback_warning(untraced: Sequence[tuple[str, str]], captured: bool) -> str:
    """The warning for modules composed as a flat tuple: which, why, and the resulting budgets."""
    which = "; ".join(f"{path}: {reason}" for path, reason in untraced)
    fix = (
        "give such a module a rule (modnorm.LayerRules.register_node) or make its dataflow series-parallel"
        if captured else
        "pass example_inputs=<inputs the forward accepts> to modnorm.optimizer / budgets / geometries / describe to "
        "capture the composition from a real forward, or give such a module a rule (modnorm.LayerRules.register_node)"
    )
    return (
        f"modnorm: the composition of {len(untraced)} module(s) could not be recovered ({which}). Budgets fall back to "
        "a flat tuple of each such module's layers: every layer gets the module's budget split by mass (1/N for N "
        f"layers of mass 1) and sensitivities are not chained. To fix: {fix}."
    )
