"""``describe(model)``: one row per parameter — shape, norm, preconditioner, role, mass, sensitivity, budget.

``describe(optimizer)`` (a ``modnorm.optimizer(...)``) shows instead what the optimizer
does: per parameter the norm and preconditioner it really uses, the route (which rule of
the preset), momentum, mode, budget and the effective lr (``modnorm.optim.describe``).

``describe_rows`` returns the rows as dicts (column → str) so that callers can add or
replace cells: an optimizer passes ``overrides={name: {column: text}}`` to show the
preconditioner it actually uses, or new columns such as ``"lr"``. Columns are
``COLUMNS`` followed by any new column in the order first seen in ``overrides``.

Mass and sensitivity are those of the parameter's atom (its layer); the budget is the
parameter's share of the update (``modnorm.budgets``), printed with its exact fraction
when it has a small denominator (e.g. ``0.238095 (5/21)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .composition import render
from .network import analyze
from .resolver import Analysis, Default
from .rules import LayerRules
from .table import format_table, fraction_text

__all__ = ["COLUMNS", "describe_rows", "describe"]

COLUMNS: tuple[str, ...] = ("name", "shape", "norm", "preconditioner", "role", "mass", "sensitivity", "budget")

Overrides = Mapping[str, Mapping[str, object]]


def _number(x: float) -> str:
    return f"{x:g}"


def describe_rows(
    model: nn.Module, rules: LayerRules | None = None, default: Default = None, overrides: Overrides | None = None,
    example_inputs: object = None,
) -> list[dict[str, str]]:
    """The rows of ``describe``: one dict per parameter, in ``named_parameters`` order."""
    return _rows(analyze(model, rules, default, example_inputs), overrides)


def _rows(analysis: Analysis, overrides: Overrides | None) -> list[dict[str, str]]:
    rows = []
    for name, info in analysis.params.items():
        rows.append({
            "name": name,
            "shape": "×".join(str(s) for s in info.shape) or "scalar",
            "norm": repr(info.geometry.norm),
            "preconditioner": info.geometry.preconditioner,
            "role": info.geometry.role,
            "mass": _number(info.mass),
            "sensitivity": _number(info.sensitivity),
            "budget": fraction_text(info.budget),
        })
    if overrides:
        by_name = {r["name"]: r for r in rows}
        unknown = sorted(set(overrides) - set(by_name))
        if unknown:
            raise KeyError(f"describe: overrides for {unknown}, which are not parameter names of the model (see model.named_parameters())")
        for name, cells in overrides.items():
            if not isinstance(cells, Mapping):
                raise TypeError(f"describe: overrides[{name!r}] must be a dict column → text, got {type(cells).__name__}")
            if "name" in cells:
                raise ValueError("describe: the 'name' column cannot be overridden")
            by_name[name].update({str(k): str(v) for k, v in cells.items()})
    return rows


def describe(
    model: nn.Module | torch.optim.Optimizer,
    rules: LayerRules | None = None,
    default: Default = None,
    overrides: Overrides | None = None,
    columns: Sequence[str] | None = None,
    tree: bool = False,
    example_inputs: object = None,
) -> str:
    """A table with one row per parameter; ``overrides`` replaces or adds cells (name → column → text),
    ``columns`` selects and orders columns, ``tree=True`` appends the composition tree;
    ``example_inputs`` captures the composition from a real forward (``modnorm.network.analyze``).
    A ``torch.compile``/DDP wrapper is looked through: names carry no wrapper prefix.

    Given a ``modnorm.optimizer(...)`` instead of a model: what the optimizer does per parameter
    (norm used, preconditioner, route, momentum, mode, budget, effective lr); only ``columns`` applies.
    """
    if isinstance(model, torch.optim.Optimizer):
        return _describe_optimizer(model, columns, rules=rules, default=default, overrides=overrides, tree=tree, example_inputs=example_inputs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"describe: expected an nn.Module or a modnorm optimizer, got {type(model).__name__}")
    analysis = analyze(model, rules, default, example_inputs)
    rows = _rows(analysis, overrides)
    if columns is not None:
        known = set(COLUMNS).union(*(r.keys() for r in rows))
        bad = [c for c in columns if c not in known]
        if bad:
            raise ValueError(f"describe: unknown columns {bad}; available: {sorted(known)}")
    if columns is None:
        columns = list(COLUMNS) + list(dict.fromkeys(c for r in rows for c in r if c not in COLUMNS))
    text = format_table(rows, columns)
    if not rows:
        text += "\n(no parameters)"
    for path, reason in analysis.untraced:
        text += f"\nnote: {path} was not traced ({reason}); its children are composed as a flat tuple"
    if tree:
        text += "\n\n" + render(analysis.root)
    return text


def _describe_optimizer(opt: torch.optim.Optimizer, columns: Sequence[str] | None, **model_only: object) -> str:
    from .optim.describe import optimizer_table  # deferred: an optimizer exists, so modnorm.optim is imported
    from .optim.optimizer import ModnormOptimizer

    if not isinstance(opt, ModnormOptimizer):
        raise TypeError(f"describe: a {type(opt).__module__}.{type(opt).__name__} is not a modnorm optimizer; pass the model, or an optimizer from modnorm.optimizer(...)")
    given = [k for k, v in model_only.items() if v not in (None, False)]
    if given:
        raise ValueError(f"describe: {given} apply to a model, not to an optimizer; describe the model for them")
    return optimizer_table(opt, None if columns is None else list(columns))
