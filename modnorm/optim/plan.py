"""Per-parameter plans: how each parameter of a param group is updated under the group's
current hyperparameters (its rule, base norm, preconditioner, budget × shape factor and
bucket key). Plans are built once per hyperparameter setting and cached by the optimizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..distributed.bucket import placement_key
from ..geometry import Geometry
from ..blocks import block_shape
from ..norms import Norm
from ..polar_products import ProductChoices
from .config import ConfigError
from .catalog import get_preconditioner
from .preconditioner import Preconditioner
from .recipe import Recipe, UpdateRule, norm_key, overrides_declared, resolve_norm
from .update import RuleSpec

__all__ = ["Plan", "PlanCache", "build_plans", "freeze", "internal_shape"]


@dataclass
class Plan:
    """How one parameter is updated under its group's current hyperparameters."""

    name: str
    role: str
    route: str  # the recipe entry that handles it: its role, or "default"
    budget: float
    step_scale: float  # the factor on its step: budget × the rule's shape factor (lr_adjust) × output factor (lr_fan_in)
    shape: tuple[int, ...]
    rule: UpdateRule
    norm: Norm
    precond: Preconditioner
    precond_label: str
    key: tuple
    spec: RuleSpec
    declared: str = ""  # the declared norm this plan's rule replaces ("" when it honours it)


def internal_shape(p: Tensor) -> tuple[int, ...]:
    return tuple(p.shape) if p.ndim > 0 else (1,)


def freeze(value: Any) -> Any:
    """A hashable, order-independent image of a hyperparameter dict (tensors by value)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Tensor):
        return ("tensor", tuple(value.flatten().tolist()))
    return value


class PlanCache:
    """A param group's plans under each hyperparameter setting it had: ``by_setting`` maps
    (group index, frozen hyperparameters) → plans; ``last`` maps a group index → (its last
    hyperparameters, plans), the fast path while they do not change."""

    def __init__(self) -> None:
        self.by_setting: dict[tuple[int, Any], list[Plan]] = {}
        self.last: dict[int, tuple[dict[str, Any], list[Plan]]] = {}

    def get(self, gi: int, hp: dict[str, Any], n: int, build: Callable[[], list[Plan]]) -> list[Plan]:
        """The plans of group ``gi`` (``n`` parameters) under hyperparameters ``hp``; ``build()`` when new."""
        last = self.last.get(gi)
        if last is not None and len(last[1]) == n:
            try:
                if last[0] == hp:
                    return last[1]
            except RuntimeError:  # a tensor-valued hyperparameter: compare through freeze below
                pass
        key = (gi, freeze(hp))
        plans = self.by_setting.get(key)
        if plans is None or len(plans) != n:
            plans = self.by_setting[key] = build()
        self.last[gi] = (hp, plans)
        return plans


def build_plans(
    recipe: Recipe,
    meta: Sequence[tuple[str, Geometry, float]],
    params: Sequence[Tensor],
    state_dtype: Callable[[Tensor], torch.dtype],
    auto_ns_dtype: Callable[[Tensor, tuple[int, ...]], torch.dtype | None],
    products: ProductChoices | None = None,
) -> list[Plan]:
    """One plan per parameter of a group; ``meta``: (label, geometry, budget) per parameter;
    ``products``: the table ``ns_products="auto"`` resolves with (``modnorm.polar_products``).
    Same-rule parameters share one preconditioner object (per preconditioner name)."""
    preconds: dict[tuple, Preconditioner] = {}
    specs: dict[int, RuleSpec] = {}
    plans = []
    for (label, geometry, budget), p in zip(meta, params):
        rule = recipe.rule_for(geometry.role)
        shape = internal_shape(p)
        norm = resolve_norm(rule, geometry, shape, label, auto_ns_dtype(p, shape) if rule.ns_dtype == "auto" else None, products)
        pname = geometry.preconditioner if rule.preconditioner == "declared" else rule.preconditioner
        pkey = (id(rule), pname)
        if pkey not in preconds:
            options = rule.preconditioner_options if pname != "none" else {}
            preconds[pkey] = get_preconditioner(pname, **options)
        try:
            preconds[pkey].check_state_dtype(state_dtype(p))
        except ValueError as e:
            raise ConfigError(f"parameter {label!r}: {e}") from None
        bucket = (id(rule), pname, norm_key(norm), shape, p.dtype, p.device, placement_key(p))
        options = ", ".join(f"{k}={v}" for k, v in rule.preconditioner_options.items()) if pname != "none" else ""
        plabel = f"{pname}({options})" if options else pname
        # per block (gates, groups, (in, out) layouts); a 0-size parameter is never stepped
        step_scale = (budget * rule.shape_factor(block_shape(norm, tuple(p.shape))) * rule.output_factor(geometry, shape)
                      if p.numel() else budget)
        route = geometry.role if geometry.role in recipe.roles else "default"
        declared = repr(geometry.norm) if overrides_declared(geometry, norm) else ""
        plans.append(Plan(label, geometry.role, route, budget, step_scale, shape, rule, norm, preconds[pkey], plabel, bucket,
                          specs.setdefault(id(rule), RuleSpec.of(rule)), declared))
    return plans
