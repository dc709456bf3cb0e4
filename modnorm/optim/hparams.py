"""Hyperparameter types: each range declared once, as an annotated type, from which both the
validation (pydantic) and the error message's "allowed" text follow.

    Beta      0 ≤ β < 1             NonNeg     ≥ 0              Positive   > 0
    Frequency int ≥ 1               NsSteps    1 ≤ n < 100      Betas      (β1, β2), each 0 ≤ β < 1
    LR        finite ≥ 0, a float or a 1-element floating tensor

``allowed(model, field)`` words a field's range from its annotation ("0 ≤ momentum < 1",
"eps ≥ 0", "ns_method one of ...", "betas = (β1, β2) with 0 ≤ β < 1"). ``require_nonneg`` is
the one "a (finite) number ≥ 0" check of the optimizer package (for lr and budgets, which
may be tensors); ``require(owner, name, value, Type)`` checks a constructor's argument
against the same types (preconditioners built directly, not through a preset).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError

from ..polar import METHODS

__all__ = [
    "ConfigError", "Beta", "NonNeg", "Positive", "Frequency", "NsSteps", "Betas", "LR", "NsMethod", "NsDtype", "NsProducts", "RootDtype",
    "Symbol", "Allowed", "allowed", "require", "require_nonneg",
]


class ConfigError(ValueError):
    """A bad optimizer configuration; the message names the field and the fix."""


@dataclass(frozen=True)
class Symbol:
    """How an entry of this type is named inside a tuple's range text (β of ``Betas``)."""

    text: str


@dataclass(frozen=True)
class Allowed:
    """A range text for a type whose check is a function (``{name}``: the field's name)."""

    text: str


def require_nonneg(value: Any, what: str, *, finite: bool = True) -> Any:
    """``value`` when it is a real number ≥ 0 (finite unless ``finite=False``; a 1-element
    floating tensor counts, read only on the CPU); else a ValueError naming ``what``."""
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.is_floating_point()
        number = float(value) if ok and value.device.type == "cpu" else 0.0
    else:
        ok, number = isinstance(value, (int, float)) and not isinstance(value, bool), value
    if not (ok and number >= 0.0 and (math.isfinite(number) or not finite)):
        kind = "a finite number ≥ 0" if finite else "a number ≥ 0"
        raise ValueError(f"{what} must be {kind}, got {value!r}")
    return value


def _checked_lr(v: float | torch.Tensor) -> float | torch.Tensor:
    if isinstance(v, torch.Tensor) and (v.numel() != 1 or not v.is_floating_point()):
        raise ValueError(f"a tensor lr must be a floating tensor with exactly 1 element, got {v.dtype} of shape {tuple(v.shape)}")
    require_nonneg(float(v) if isinstance(v, torch.Tensor) else v, "lr")
    return v


Beta = Annotated[float, Field(ge=0.0, lt=1.0), Symbol("β")]
NonNeg = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Frequency = Annotated[int, Field(ge=1)]
NsSteps = Annotated[int, Field(ge=1, lt=100)]
Betas = tuple[Beta, Beta]
LR = Annotated[float | torch.Tensor, AfterValidator(_checked_lr), Allowed("finite {name} ≥ 0 (float or 1-element floating tensor)")]
NsMethod = Literal[METHODS]  # type: ignore[valid-type]
def _dtype_name(value: Any) -> Any:
    """A torch.dtype given for a dtype option, as its name (``torch.bfloat16`` → "bfloat16")."""
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value


NsDtype = Annotated[Literal["auto", "float32", "float64", "bfloat16", "float16"] | None, BeforeValidator(_dtype_name)]
NsProducts = Literal["auto", "batched", "loop"]
RootDtype = Annotated[Literal["float32", "float64"], BeforeValidator(_dtype_name)]


def _bounds(metadata: Any, name: str) -> str | None:
    """"lo ≤ name < hi" from annotated-types bounds (None without bounds)."""
    lo = hi = ""
    for m in metadata:
        if isinstance(m, at.Ge):
            lo = f"{m.ge:g} ≤ "
        elif isinstance(m, at.Gt):
            lo = f"{m.gt:g} < "
        elif isinstance(m, at.Lt):
            hi = f" < {m.lt:g}"
        elif isinstance(m, at.Le):
            hi = f" ≤ {m.le:g}"
    if not (lo or hi):
        return None
    if lo and not hi:  # "name ≥ 0" reads better than "0 ≤ name"
        value, sign = lo[:-3], lo[-2]
        return f"{name} {'≥' if sign == '≤' else '>'} {value}"
    return f"{lo}{name}{hi}"


def _metadata(annotation: Any) -> tuple[Any, list[Any]]:
    """(the bare type, its Annotated metadata, FieldInfo constraints unpacked)."""
    if get_origin(annotation) is not Annotated:
        return annotation, []
    base, *extra = get_args(annotation)
    out: list[Any] = []
    for m in extra:
        out.extend(getattr(m, "metadata", None) or [m])
    return base, out


def _describe(annotation: Any, name: str) -> str | None:
    base, meta = _metadata(annotation)
    for m in meta:
        if isinstance(m, Allowed):
            return m.text.format(name=name)
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(base) if a is not type(None)]
        inner = _describe(arms[0], name) if len(arms) == 1 else None
        return f"{inner} or None" if inner and len(arms) < len(get_args(base)) else inner
    if origin is Literal:
        return f"{name} one of " + ", ".join(repr(a) for a in get_args(base))
    if origin is tuple:
        entries = get_args(base)
        _, em = _metadata(entries[0]) if entries else (None, [])
        symbol = next((m.text for m in em if isinstance(m, Symbol)), "x")
        bound = _bounds(em, symbol)
        if bound is None:
            return None
        names = ", ".join(f"{symbol}{i + 1}" for i in range(len(entries)))
        return f"{name} = ({names}) with {bound}"
    return _bounds(meta, name)


OptionalBeta = Beta | None
_ADAPTERS: dict[int, tuple[Any, TypeAdapter]] = {}  # id(type) → (type, adapter): the type kept alive with its id


def require(owner: str, name: str, value: Any, kind: Any) -> Any:
    """``value`` (a float for a float type) when it has the hyperparameter type ``kind``, checked
    strictly (no bool for a number, no string); else a ValueError "{owner}: {name} must satisfy {range}"."""
    if id(kind) not in _ADAPTERS:
        _ADAPTERS[id(kind)] = (kind, TypeAdapter(kind))
    try:
        return _ADAPTERS[id(kind)][1].validate_python(value, strict=True)
    except ValidationError:
        raise ValueError(f"{owner}: {name} must satisfy {_describe(kind, name)}, got {value!r}") from None


def allowed(model: type[BaseModel], name: str) -> str | None:
    """The allowed range of ``model``'s field ``name``, in words (None when its type says nothing)."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    annotation = field.annotation
    if field.metadata:
        annotation = Annotated[(annotation, *field.metadata)]
    return _describe(annotation, name)
