"""Presets: named optimizers as configurations of the one pipeline.

A preset is a plain function from its hyperparameters to a ``Recipe``, composed of parts
(``parts.py``), and ``preset(function, source=...)`` makes it a ``Preset``::

    def lion(betas: Betas = (0.9, 0.99), weight_decay: NonNeg = 0.0) -> Recipe:
        return everywhere(rule(lmo("sign"), lion_momentum(*betas), decoupled_decay(weight_decay)))

    LION = preset(lion, lr=1e-4, source="Chen et al. 2023 (Lion); lion-pytorch")

The function's parameters are the hyperparameters: each is declared once, its annotation (a
type of ``hparams.py``) giving the validation and the range quoted in error messages, its
default the default. Every preset also has the common fields of ``Hyperparameters`` (lr,
maximize, the step-size stage); ``preset(..., lr=1e-4)`` changes their defaults. Keyword-only
parameters receive what a mixin provides: ``adamw_rule`` (``RoutedAdamW``: the AdamW rule for the
parameters a matrix preset leaves, ``adamw_*`` hyperparameters) and ``polar`` (``Polar``: the
polar-factor options). The registry of presets is ``catalog.PRESETS``; the table of presets
is in docs/optimizer.md and README.md (checked against the registry by the tests).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from .hparams import LR, Allowed, Betas, NonNeg, NsDtype, NsMethod, NsProducts, NsSteps, Positive
from .parts import adam_momentum, decoupled_decay, precondition, rule, sharp
from .recipe import Recipe, UpdateRule
from .strict import check_strict

__all__ = ["Hyperparameters", "Mixin", "RoutedAdamW", "Polar", "Preset", "preset", "adam_rule", "custom_recipe_preset"]


class Hyperparameters(BaseModel):
    """Fields every preset has: the learning rate, ``maximize`` and the global step-size stage
    (``step_size``; ``f_star``, ``max_step``, ``polyak_growth`` configure ``"polyak"``, see
    ``modnorm.optim.step_size``)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True, allow_inf_nan=False, defer_build=True)

    lr: LR = 1e-3
    maximize: bool = False
    step_size: Annotated[Literal["constant", "polyak"], Allowed("{name} one of 'constant', 'polyak'; 'prodigy' for presets that declare it (prodigy)")] = "constant"
    f_star: Annotated[float, Field(allow_inf_nan=False), Allowed("finite {name} (a lower bound of the loss)")] = 0.0
    max_step: Annotated[float, Field(gt=0.0)] | None = None
    polyak_growth: Annotated[float, Field(ge=1.0)] | None = 1.0

    @model_validator(mode="before")
    @classmethod
    def _strict(cls, values: Any) -> Any:
        return check_strict(cls, values)

    @model_validator(mode="after")
    def _polyak_fields_need_polyak(self) -> Hyperparameters:
        """``f_star``/``max_step``/``polyak_growth`` set away from their defaults do nothing unless
        ``step_size="polyak"``: refused rather than silently ignored."""
        if self.step_size != "polyak":
            for name in ("f_star", "max_step", "polyak_growth"):
                if name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name}={getattr(self, name)!r} configures step_size='polyak' but step_size={self.step_size!r}; "
                                     f"pass step_size='polyak' or leave {name} out")
        return self


def adam_rule(preconditioner: str, betas: tuple[float, float], eps: float, weight_decay: float, **fields: Any) -> UpdateRule:
    """Adam's rule with a diagonal ``preconditioner`` ("adam", "sania", "amsgrad"): sharp in Frobenius
    (U = M̂/D²) unless ``fields`` say otherwise; ``fields``: further rule fields (``lr_ratio``, ...)."""
    return rule(sharp("frobenius"), precondition(preconditioner, beta2=betas[1], eps=eps), adam_momentum(betas[0]),
                decoupled_decay(weight_decay), **fields)


class Mixin(BaseModel):
    """Base of hyperparameter groups that presets share (``preset(..., mixins=...)``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, defer_build=True)


class RoutedAdamW(Mixin):
    """AdamW settings for the parameters a matrix preset does not handle (embedding, head, vectors).

    ``adamw_head_width``: the head's (and a table tied to it) AdamW lr becomes
    lr · adamw_lr_ratio · adamw_head_width / fan_in (µP: an Adam-type output layer moves the
    logits by ≈ lr · fan_in per step, so its lr goes as 1/width; set it to the width at which
    the lr was tuned). None (the default): width-independent, as torch.optim.AdamW."""

    adamw_lr_ratio: NonNeg = 1.0
    adamw_head_width: Positive | None = None
    adamw_betas: Betas = (0.9, 0.999)
    adamw_eps: NonNeg = 1e-8
    adamw_weight_decay: NonNeg = 0.0
    routed_rule: Literal["adamw", "adam_sania"] = "adamw"  # adam_sania: D = (V̂ + ε)^½, so that a Polyak
    # step over all parameters stays loss-scale invariant with a SANIA matrix rule

    def adamw_rule(self) -> UpdateRule:
        precond = "sania" if self.routed_rule == "adam_sania" else "adam"
        return adam_rule(precond, self.adamw_betas, self.adamw_eps, self.adamw_weight_decay, lr_ratio=self.adamw_lr_ratio,
                         lr_fan_in=self.adamw_head_width)


class Polar(Mixin):
    """Polar-factor options. ``ns_dtype="auto"``: bf16 where the device multiplies matrices of
    the parameter's size fast (CUDA; on CPUs a one-time probe per size class), else float32;
    float64 parameters stay float64 (``modnorm.polar_dtype``). ``ns_steps=None``: the method's default for that
    dtype (Polar Express: 6 in bf16, 8 in float32/64). ``ns_products="auto"``: batched or 2-D loop products,
    whichever a one-time probe measures faster per call shape (``modnorm.polar_products``; execution only)."""

    ns_method: NsMethod = "polar_express"
    ns_steps: NsSteps | None = None
    ns_dtype: NsDtype = "auto"
    ns_products: NsProducts = "auto"

    def polar(self) -> dict[str, Any]:
        return {"ns_method": self.ns_method, "ns_steps": self.ns_steps, "ns_dtype": self.ns_dtype, "ns_products": self.ns_products}


class NesterovCheck(Mixin):
    """torch.optim.SGD's rule: ``nesterov=True`` needs momentum > 0 and no dampening."""

    @model_validator(mode="after")
    def _nesterov(self) -> Any:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):  # type: ignore[attr-defined]
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (torch.optim.SGD's rule)")
        return self


@dataclass(frozen=True)
class Preset:
    """A named configuration: its hyperparameter model, its recipe builder, its source."""

    name: str
    hyperparameters: type[Hyperparameters]
    build: Callable[[Any], Recipe]
    source: str


@dataclass(frozen=True)
class _Call:
    """``build`` of a function preset: the function called with the validated hyperparameters it names."""

    function: Callable[..., Recipe]
    own: tuple[str, ...]
    provided: tuple[str, ...]

    def __call__(self, h: Hyperparameters) -> Recipe:
        return self.function(**{k: getattr(h, k) for k in self.own}, **{k: getattr(h, k)() for k in self.provided})


def preset(function: Callable[..., Recipe], *, source: str = "", name: str | None = None,
           mixins: tuple[type[BaseModel], ...] = (), **defaults: Any) -> Preset:
    """The ``Preset`` of a plain function (module docstring): its parameters with defaults become the
    fields of a hyperparameter model built on ``Hyperparameters`` and ``mixins``; ``defaults`` replace
    the defaults of inherited fields. The model is ``function.hyperparameters`` (so it pickles by name)."""
    hints = get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    own, provided = [], []
    for p in inspect.signature(function).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            provided.append(p.name)
            continue
        if p.default is p.empty or p.name not in hints:
            raise TypeError(f"preset {function.__name__!r}: hyperparameter {p.name!r} needs a type and a default")
        fields[p.name] = (hints[p.name], p.default)
        own.append(p.name)
    bases = (*mixins, Hyperparameters)  # a mixin may refine a common field (e.g. the step size its stage needs)
    for key, value in defaults.items():
        inherited = next((b.model_fields[key] for b in bases if key in b.model_fields), None)
        if inherited is None:
            raise TypeError(f"preset {function.__name__!r}: {key!r} is no inherited hyperparameter")
        fields[key] = (Annotated[(inherited.annotation, *inherited.metadata)], value)
    model = create_model(f"{function.__name__}_hyperparameters", __base__=bases, __module__=function.__module__, **fields)
    model.__qualname__ = f"{function.__name__}.hyperparameters"
    function.hyperparameters = model  # type: ignore[attr-defined]
    return Preset(name or function.__name__, model, _Call(function, tuple(own), tuple(provided)), source)


@dataclass(frozen=True)
class _FixedRecipe:
    """build() of a user's Recipe: the same recipe whatever the (lr, maximize) hyperparameters."""

    recipe: Recipe

    def __call__(self, hyperparameters: Hyperparameters) -> Recipe:
        return self.recipe


def custom_recipe_preset(recipe: Recipe) -> Preset:
    """A preset for a user's Recipe: group hyperparameters are ``lr`` and ``maximize`` only."""
    return Preset("custom", Hyperparameters, _FixedRecipe(recipe), "user recipe")
