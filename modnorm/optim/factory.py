"""``modnorm.optimizer(model_or_params, preset, **hyperparameters)``: the generated optimizer.

Given an ``nn.Module`` (a ``torch.compile``/DDP wrapper is looked through), every
parameter's geometry and modular budget come from ``modnorm.network.analyze(model, rules,
default, example_inputs)``; parameters with ``requires_grad=False`` are left out, and
``param_groups`` (torch-style dicts over the model's parameters, given as tensors or
(name, tensor) pairs) set per-group hyperparameters without losing that geometry.
Given bare parameters or param groups instead of the model, geometry is inferred from
each tensor's rank and budgets are 1 — with a warning when they are ``nn.Parameter`` objects
(they come from a model whose geometry is then lost). Presets that read the layers
themselves (``kfac``, ``ekfac``, ``kfac_spectral``) get the module as their ``model``
hyperparameter.

Budgets: by default every parameter's budget is 1 — one lr for all layers, as in
torch.optim (each layer's step is lr in its own norm). ``budgets=True`` scales each
layer's step (and its decoupled decay) by its modular budget, so that the whole network's
step is lr in the modular norm and the lr needs no retuning when depth changes the budgets
(e.g. 1/L per layer of an L-layer MLP); on the char-level GPT benchmark
(docs/benchmarks.md) that split cost quality at one size, hence opt-in.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..rules import LayerRules
from .config import ConfigError, OptimizerConfig, get_preset
from .optimizer import ModnormOptimizer
from .recipe import Recipe

__all__ = ["optimizer"]


def _groups(model: nn.Module, param_groups: Any) -> list[dict[str, Any]]:
    """``param_groups`` over ``model``'s parameters as groups with names; frozen parameters dropped."""
    if isinstance(param_groups, (dict, Tensor)) or not isinstance(param_groups, Iterable):
        raise ConfigError("param_groups must be a list of dicts such as [{'params': [...], 'lr': 1e-3}, ...]")
    names = {id(p): n for n, p in model.named_parameters()}
    groups, seen = [], set()
    for gi, group in enumerate(param_groups):
        if not isinstance(group, dict) or "params" not in group:
            raise ConfigError(f"param_groups[{gi}] must be a dict with a 'params' entry, got {group!r:.80}")
        items = group["params"]
        items = [items] if isinstance(items, Tensor) else list(items)
        params, pnames = [], []
        for item in items:
            p = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if not isinstance(p, Tensor) or id(p) not in names:
                raise ConfigError(f"param_groups[{gi}] holds {type(p).__name__} that is not a parameter of the model; "
                                  "groups must list the model's parameters (tensors or (name, tensor) pairs)")
            if id(p) in seen:
                raise ConfigError(f"param_groups[{gi}]: parameter {names[id(p)]!r} is already in an earlier group")
            seen.add(id(p))
            if p.requires_grad:
                params.append(p)
                pnames.append(names[id(p)])
        if params:
            groups.append({**{k: v for k, v in group.items() if k not in ("params", "param_names")}, "params": params, "param_names": pnames})
    if not groups:
        raise ConfigError("param_groups hold no trainable parameter (requires_grad=True)")
    return groups


def _warn_if_model_parameters(params: Any) -> Any:
    if isinstance(params, (Tensor, set, dict)) or not isinstance(params, Iterable):
        return params  # torch.optim's own errors
    items = list(params)
    flat: list[Any] = []
    for it in items:
        inner = it.get("params", ()) if isinstance(it, dict) else [it]
        flat += [inner] if isinstance(inner, Tensor) else list(inner) if isinstance(inner, (list, tuple)) else []
    if any(isinstance(q[1] if isinstance(q, tuple) and len(q) == 2 else q, nn.Parameter) for q in flat):
        warnings.warn(
            "modnorm.optimizer got parameters, not the model: each geometry is inferred from the tensor's rank (no "
            "embedding or head roles) and every budget is 1. Pass the model to keep its geometry, with param groups as "
            "modnorm.optimizer(model, preset, param_groups=[{'params': [...], 'lr': ...}, ...]); frozen parameters "
            "(requires_grad=False) are left out by themselves.",
            stacklevel=3,
        )
    return items


def optimizer(
    model_or_params: nn.Module | Iterable[Any],
    preset: str | Recipe = "adamw",
    *,
    param_groups: Iterable[dict[str, Any]] | None = None,
    rules: LayerRules | None = None,
    default: Any = None,
    example_inputs: Any = None,
    config: OptimizerConfig | str | dict[str, Any] | None = None,
    budgets: bool = False,
    nonfinite: str = "raise",
    state_dtype: str | torch.dtype | None = None,
    state_rounding: str = "stochastic",
    rounding_seed: int | None = None,
    compile: bool | dict[str, Any] = False,
    **hyperparameters: Any,
) -> ModnormOptimizer:
    """Build the optimizer for a model (or parameters) from a preset name, a Recipe, or a config.

    Args:
        model_or_params: an nn.Module (recommended), or an iterable of tensors, (name, tensor)
            pairs or param-group dicts (geometry then inferred from rank, budgets 1).
        preset: a preset name (see ``modnorm.optim.PRESETS``) or a ``modnorm.optim.Recipe``.
        param_groups: with a model, torch-style groups over its parameters (tensors or
            (name, tensor) pairs) with per-group hyperparameters; geometry and budgets stay the model's.
        rules, default, example_inputs: as in ``modnorm.network.analyze`` (rules for your layer
            types, a fallback geometry, inputs to capture the composition from a real forward).
        config: an ``OptimizerConfig`` (or its JSON text, or a dict); replaces ``preset``,
            ``budgets``, ``nonfinite``, the state options and the hyperparameters.
        budgets: scale each parameter's step by the model's modular budget (default False:
            every budget is 1). With budgets, each parameter steps with lr × budget (× the
            rule's lr_ratio), so the layers of a 3-layer MLP (budget 1/3 each) move 1/3 as
            far as torch.optim's with the same lr; ``modnorm.describe(opt)`` lists every
            parameter's effective lr.
        nonfinite: "raise" or "skip" on a non-finite gradient.
        state_dtype: optimizer-state dtype (None: fp32 for 16-bit parameters); "bfloat16"/"float16"
            store the state in 16 bits and compute steps in float32 (``modnorm.optim.low_precision``).
        state_rounding, rounding_seed: how 16-bit state is rounded ("stochastic" or "nearest") and the
            seed of stochastic rounding (default 0, the same in every process).
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
        state_rounding, rounding_seed = config.state_rounding, config.rounding_seed
        hyperparameters = dict(config.hyperparameters)
    if isinstance(model_or_params, nn.Module):
        from ..network import analyze, unwrap

        model = unwrap(model_or_params)
        if isinstance(preset, str) and hyperparameters.get("model") is None and "model" in get_preset(preset).hyperparameters.model_fields:
            hyperparameters["model"] = model  # presets reading the layers themselves (kfac, ekfac, kfac_spectral)
        analysis = analyze(model, rules, default, example_inputs)
        geometries = {n: i.geometry for n, i in analysis.params.items()}
        table = {n: i.budget for n, i in analysis.params.items()} if budgets else {}
        if param_groups is not None:
            params: Any = _groups(model, param_groups)
        else:
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if not params:
                raise ConfigError("the model has no trainable parameters (requires_grad=True) to optimize")
    else:
        if param_groups is not None or rules is not None or default is not None or example_inputs is not None:
            raise ConfigError("param_groups=, rules=, default= and example_inputs= need the model as the first argument")
        geometries, table, params = {}, {}, _warn_if_model_parameters(model_or_params)
    return ModnormOptimizer(params, preset, geometries=geometries, budgets=table, nonfinite=nonfinite, state_dtype=state_dtype,
                            state_rounding=state_rounding, rounding_seed=rounding_seed, compile=compile, **hyperparameters)
