"""``modnorm.optimizer(model_or_params, preset, **hyperparameters)``: the generated optimizer.

Given an ``nn.Module``, each parameter's geometry and modular budget come from
``modnorm.geometries(model)`` / ``modnorm.budgets(model)`` when those are available
(parameters they do not cover, and every parameter when they are not, get a geometry
inferred from their rank, with nn.Embedding tables marked as embeddings, and budget 1).
Given parameters or param groups, geometry is inferred from rank and budgets are 1.
``budgets=False`` gives every parameter budget 1 (to compare with torch.optim's optimizers).
Presets that read the layers themselves (``kfac``, ``ekfac``, ``kfac_spectral``) get the
module as their ``model`` hyperparameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from torch import nn

from ..geometry import Geometry
from ..norms import ColNorm
from .config import ConfigError, OptimizerConfig, get_preset
from .optimizer import ModnormOptimizer
from .recipe import Recipe

__all__ = ["optimizer"]


def _module_geometries(model: nn.Module) -> dict[str, Geometry]:
    import modnorm

    declared = getattr(modnorm, "geometries", None)
    if callable(declared):
        return dict(declared(model))
    out: dict[str, Geometry] = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            out[f"{mname}.weight" if mname else "weight"] = Geometry(ColNorm(layout="embedding"), role="embedding")
    return out


def _module_budgets(model: nn.Module) -> dict[str, float]:
    import modnorm

    declared = getattr(modnorm, "budgets", None)
    return dict(declared(model)) if callable(declared) else {}


def optimizer(
    model_or_params: nn.Module | Iterable[Any],
    preset: str | Recipe = "adamw",
    *,
    config: OptimizerConfig | str | dict[str, Any] | None = None,
    budgets: bool = True,
    nonfinite: str = "raise",
    state_dtype: str | None = None,
    compile: bool | dict[str, Any] = False,
    **hyperparameters: Any,
) -> ModnormOptimizer:
    """Build the optimizer for a model (or parameters) from a preset name, a Recipe, or a config.

    Args:
        model_or_params: an nn.Module, an iterable of tensors or (name, tensor) pairs, or
            param-group dicts.
        preset: a preset name (see ``modnorm.optim.PRESETS``) or a ``modnorm.Recipe``.
        config: an ``OptimizerConfig`` (or its JSON text, or a dict); replaces ``preset``,
            ``budgets``, ``nonfinite``, ``state_dtype`` and the hyperparameters.
        budgets: use the model's modular budgets (False: every budget is 1).
        nonfinite: "raise" or "skip" on a non-finite gradient.
        state_dtype: optimizer-state dtype (None: fp32 for 16-bit parameters).
        compile: torch.compile each bucket's update (True or torch.compile options).
        **hyperparameters: the preset's hyperparameters.
    """
    if config is not None:
        if hyperparameters or preset != "adamw":
            raise ConfigError("pass either config=... or preset/hyperparameters, not both")
        if isinstance(config, str):
            config = OptimizerConfig.model_validate(json.loads(config))
        elif isinstance(config, dict):
            config = OptimizerConfig.model_validate(config)
        elif not isinstance(config, OptimizerConfig):
            raise ConfigError(f"config must be an OptimizerConfig, its JSON text or a dict, got {type(config).__name__}")
        preset, budgets, nonfinite, state_dtype = config.preset, config.budgets, config.nonfinite, config.state_dtype
        hyperparameters = dict(config.hyperparameters)
    if isinstance(model_or_params, nn.Module):
        model = model_or_params
        geometries = _module_geometries(model)
        table = _module_budgets(model) if budgets else {}
        params: Any = list(model.named_parameters())
        if not params:
            raise ConfigError("the model has no parameters to optimize")
    else:
        geometries, table, params = {}, {}, model_or_params
    if isinstance(model_or_params, nn.Module) and isinstance(preset, str) and hyperparameters.get("model") is None:
        if "model" in get_preset(preset).hyperparameters.model_fields:  # layer-declared statistics (kfac)
            hyperparameters["model"] = model_or_params
    return ModnormOptimizer(params, preset, geometries=geometries, budgets=table, nonfinite=nonfinite, state_dtype=state_dtype, compile=compile, **hyperparameters)
