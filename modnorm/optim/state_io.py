"""What an optimizer's ``state_dict`` holds, and what ``load_state_dict`` accepts.

``state_dict()`` is torch's, plus ``"modnorm_preset"`` (the preset's name) and
``"modnorm_skipped_steps"`` (``nonfinite="skip"``'s count) and, with 16-bit state,
``"modnorm_state_storage"`` (its dtype, rounding and seed: ``low_precision``), minus the
*runtime* hyperparameters — callables and mappings such as sophia's ``loss_fn`` and
``loss_params``, which belong to the running program, not to the state (so the dict
loads with ``torch.load(weights_only=True)`` and a resumed optimizer keeps its own).

``load_state_dict`` refuses, before anything changes, a dict written by another preset
(naming both), a dict whose groups, hyperparameters or per-parameter state keys do not
fit this optimizer, with ``CheckpointMismatchError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from .catalog import PRESETS
from .recipe import DTYPES

__all__ = ["CheckpointMismatchError", "GROUP_KEYS", "NS_AUTO_KEY", "NS_PRODUCTS_KEY", "PRESET_KEY", "SKIPPED_KEY", "STORAGE_KEY", "checked_ns_choices", "is_runtime", "portable", "check_loadable", "upgraded"]

PRESET_KEY = "modnorm_preset"
SKIPPED_KEY = "modnorm_skipped_steps"
STORAGE_KEY = "modnorm_state_storage"  # 16-bit state: its dtype, rounding and seed (``low_precision``)
NS_AUTO_KEY = "ns_dtype_auto"  # what ns_dtype="auto" resolved to: "device:dtype:size class" → dtype name
NS_PRODUCTS_KEY = "ns_products_auto"  # what ns_products="auto" resolved to: "device:dtype:count×n×m" → batched | loop
GROUP_KEYS = ("params", "param_names")  # the keys of a param group that are not hyperparameters


def checked_ns_choices(choices: Any) -> dict[str, str]:
    """Saved ns_dtype="auto" choices, validated: a dict of str → a dtype name."""
    if not isinstance(choices, dict) or any(not isinstance(k, str) or v not in DTYPES for k, v in choices.items()):
        raise ValueError(f"ns_dtype_auto must map 'device:dtype:size' to one of {sorted(DTYPES)}, got {choices!r}")
    return dict(choices)


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a different optimizer configuration."""


def is_runtime(value: Any) -> bool:
    """A hyperparameter that is an object of the running program (a callable, a dict of tensors)."""
    return callable(value) or isinstance(value, Mapping)


def portable(state_dict: dict[str, Any], preset: str, skipped_steps: int) -> dict[str, Any]:
    """torch's state dict with the preset's name and the skipped-step count, without runtime hyperparameters."""
    groups = [{k: v for k, v in g.items() if not is_runtime(v)} for g in state_dict["param_groups"]]
    return {**state_dict, "param_groups": groups, PRESET_KEY: preset, SKIPPED_KEY: skipped_steps}


def _presets_with_fields(fields: set[str]) -> list[str]:
    return sorted(name for name, p in PRESETS.items() if set(p.hyperparameters.model_fields) == fields)


def check_loadable(optimizer: Any, state_dict: Any, expected: list[dict[str, tuple[int, ...]]]) -> None:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` fits ``optimizer``;
    ``expected[i]``: state key → shape of parameter i (in group order)."""
    from .config import ConfigError, validate_hyperparameters

    mine = optimizer.preset
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise CheckpointMismatchError(f"expected an optimizer state_dict with 'state' and 'param_groups', got {type(state_dict).__name__}")
    saved = state_dict.get(PRESET_KEY)
    hint = f"build the optimizer with the checkpoint's preset to resume it, or keep the {mine!r} optimizer fresh"
    if saved is not None and saved != mine:
        raise CheckpointMismatchError(f"this state_dict was written by preset {saved!r}; it cannot be loaded into a {mine!r} optimizer: {hint}")
    storage = state_dict.get(STORAGE_KEY)
    if storage is not None and not (isinstance(storage, Mapping) and isinstance(storage.get("seed"), int) and storage["seed"] >= 0):
        raise CheckpointMismatchError(f"{STORAGE_KEY!r} must map 'seed' to an int ≥ 0 (the stochastic-rounding seed), got {storage!r}")
    groups = state_dict["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointMismatchError(f"the state_dict has {len(groups)} param group(s), this {mine!r} optimizer {len(optimizer.param_groups)}")
    fields = set(optimizer._preset.hyperparameters.model_fields)
    for gi, (g, own) in enumerate(zip(groups, optimizer.param_groups)):
        if len(g["params"]) != len(own["params"]):
            raise CheckpointMismatchError(f"param group {gi}: the state_dict has {len(g['params'])} parameters, this optimizer {len(own['params'])}")
        keys = {k for k in g if k not in GROUP_KEYS}
        runtime = {k for k in fields if is_runtime(own.get(k))}
        if saved is None and keys | runtime != fields:  # a dict from torch.optim or an older version: judge by its fields
            theirs = _presets_with_fields(keys | runtime) or ["(not a modnorm preset)"]
            raise CheckpointMismatchError(
                f"param group {gi} of this state_dict has hyperparameters {sorted(keys)}, preset {mine!r} has {sorted(fields)}; "
                f"it was written by {' or '.join(map(repr, theirs))}: {hint}")
        try:
            values = {**{k: own[k] for k in runtime}, **{k: v for k, v in g.items() if k in fields}}
            validate_hyperparameters(optimizer._preset, values, where=f", param group {gi} of the state_dict")
        except ConfigError as e:
            raise CheckpointMismatchError(str(e)) from None
    ids = [i for g in groups for i in g["params"]]
    for n, (sid, keys) in enumerate(zip(ids, expected)):
        got = state_dict["state"].get(sid)
        if got is not None and set(got) != set(keys):
            raise CheckpointMismatchError(
                f"parameter #{n}: the state_dict holds state {sorted(got)}, a {mine!r} optimizer keeps {sorted(keys)}: {hint}")
        shapes = {k: tuple(v.shape) for k, v in (got or {}).items() if isinstance(v, Tensor) and tuple(v.shape) != keys[k]}
        if shapes:
            raise CheckpointMismatchError(f"parameter #{n}: state shapes {shapes} differ from this optimizer's {({k: keys[k] for k in shapes})}")
        bad = [k for k, v in (got or {}).items() if isinstance(v, Tensor) and v.is_floating_point() and v.ndim and not bool(v.isfinite().all())]
        if bad:
            raise CheckpointMismatchError(f"parameter #{n}: the state_dict holds non-finite state {bad}")


def upgraded(state_dict: Any, preconditioners: list[Any]) -> Any:
    """``state_dict`` with every parameter's state in this version's keys
    (``Preconditioner.upgrade_state``; ``preconditioners[i]`` serves parameter i in group order).
    A shallow copy when anything changes; the given dict is never modified."""
    if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("state"), Mapping):
        return state_dict  # check_loadable words the error
    groups = state_dict.get("param_groups") or []
    ids = [i for g in groups if isinstance(g, Mapping) for i in g.get("params", [])]
    state, changed = dict(state_dict["state"]), False
    for sid, precond in zip(ids, preconditioners):
        saved = state.get(sid)
        new = precond.upgrade_state(saved) if isinstance(saved, Mapping) else None
        if new is not None:
            state[sid], changed = new, True
    return {**state_dict, "state": state} if changed else state_dict
