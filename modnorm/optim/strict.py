"""Strict scalars for the hyperparameter models: no loose conversion, only finite numbers.

pydantic's lax mode turns ``"0.1"`` into 0.1, ``True`` into 1.0 and ``"yes"`` into True.
``check_strict(model, values)`` refuses those before pydantic sees them: a float field takes
an int or a float (not a bool, not a string), an int field an int, a bool field a bool;
tuples are checked entry by entry (a list is fine: JSON has no tuples). Non-finite
numbers are refused by the models' ``allow_inf_nan=False``.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

import torch
from pydantic import BaseModel

__all__ = ["check_strict"]


def _problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not strictly match ``annotation`` (None when it does, or cannot tell)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _problem(get_args(annotation)[0], value)
    if origin in (Union, types.UnionType):
        problems = [_problem(arm, value) for arm in get_args(annotation)]
        return None if any(p is None for p in problems) else problems[0]
    if annotation is type(None):
        return None if value is None else "expected None"
    if annotation is bool:
        return None if isinstance(value, bool) else "expected True or False"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an int"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "expected a number (int or float)"
    if annotation is torch.Tensor:
        return None if isinstance(value, torch.Tensor) else "expected a tensor"
    if origin is tuple and isinstance(value, (tuple, list)):
        args = get_args(annotation)
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            return None  # pydantic reports the length
        for a, v in zip(items, value):
            p = _problem(a, v)
            if p is not None:
                return f"{p} for each entry"
        return None
    return None  # Literal, Any, models: pydantic's own checks


def check_strict(model: type[BaseModel], values: Any) -> Any:
    """``values`` unchanged, or a ValueError naming the first field with a loosely typed value."""
    if not isinstance(values, dict):
        return values
    for name, value in values.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        problem = _problem(field.annotation, value)
        if problem is not None:
            raise ValueError(f"{name}: {problem}, got {value!r} ({type(value).__name__}); no conversion is made")
    return values
