"""Presets: named optimizers as configurations of the one pipeline.

Each preset is a pydantic hyperparameter model plus a function from validated
hyperparameters to a ``Recipe`` (base norm × preconditioner × momentum × mode per role).
The table (also in docs/optimizer.md):

============  =============================  ================  ===============  =====  ==================
preset        base norm (hidden / conv)      preconditioner    momentum         mode   others routed to
============  =============================  ================  ===============  =====  ==================
sgd           Frobenius                      none              heavy-ball/nest.  sharp  —
adamw         Frobenius                      adam (√V̂+ε)^½    adam_ema         sharp  —
  amsgrad     Frobenius                      amsgrad (max V)   adam_ema         sharp  —
adagrad       Frobenius                      adagrad           none             sharp  —
adam_sania    Frobenius                      sania (V̂+ε)^½    adam_ema         sharp  —
signsgd       Sign                           none              none / ema       lmo    —
muon          Spectral ("original" scale)    none              ema(+nesterov)   lmo    AdamW
polargrad     Spectral (scale 1)             none              ema              sharp  AdamW
scion         declared (modular norm)        none              ema              lmo    —
muadam        Spectral (RMS→RMS)             adam (V̂+ε)^¼     adam_ema         lmo    AdamW
muadam_sania  Spectral (RMS→RMS)             sania (V̂+ε)^½    adam_ema         lmo    AdamW
============  =============================  ================  ===============  =====  ==================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..polar import METHODS
from .recipe import NsMethod, Recipe, Rule
from .strict import check_strict

__all__ = ["Hyperparameters", "Preset", "PRESETS", "register_preset", "custom_recipe_preset"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]
NsDtype = Literal["auto", "float32", "float64", "bfloat16", "float16"] | None

# Allowed ranges, quoted in error messages.
RANGES: dict[str, str] = {
    "lr": "finite lr ≥ 0 (float or 1-element floating tensor)",
    "betas": "betas = (β1, β2) with 0 ≤ β < 1",
    "adamw_betas": "adamw_betas = (β1, β2) with 0 ≤ β < 1",
    "momentum": "0 ≤ momentum < 1",
    "eps": "eps ≥ 0",
    "adamw_eps": "adamw_eps ≥ 0",
    "weight_decay": "weight_decay ≥ 0",
    "adamw_weight_decay": "adamw_weight_decay ≥ 0",
    "adamw_lr_ratio": "adamw_lr_ratio ≥ 0",
    "dampening": "dampening ≥ 0",
    "lr_decay": "lr_decay ≥ 0",
    "initial_accumulator_value": "initial_accumulator_value ≥ 0",
    "ns_steps": "1 ≤ ns_steps < 100",
    "ns_method": f"ns_method one of {METHODS}",
    "ns_dtype": "ns_dtype one of auto, float32, float64, bfloat16, float16 or None",
    "adjust_lr_fn": "adjust_lr_fn one of 'original', 'match_rms_adamw', 'rms' or None",
    "scale": "scale one of 'rms', 'original', 'match_rms_adamw', 'none'",
    "step_size": "step_size one of 'constant', 'polyak'",
    "f_star": "f_star a finite number (a lower bound of the loss)",
    "max_step": "max_step > 0 or None (no cap)",
    "polyak_growth": "polyak_growth ≥ 1 or None (no cap)",
    "routed_rule": "routed_rule one of 'adamw', 'adam_sania'",
}


class Hyperparameters(BaseModel):
    """Fields every preset has: the learning rate, ``maximize`` and the global step-size stage
    (``step_size``; ``f_star``, ``max_step``, ``polyak_growth`` configure ``"polyak"``, see
    ``modnorm.optim.step_size``)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True, allow_inf_nan=False, defer_build=True)

    lr: float | torch.Tensor = 1e-3
    maximize: bool = False
    step_size: Literal["constant", "polyak"] = "constant"
    f_star: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    max_step: Annotated[float, Field(gt=0.0)] | None = None
    polyak_growth: Annotated[float, Field(ge=1.0)] | None = 1.0

    @model_validator(mode="before")
    @classmethod
    def _strict(cls, values: Any) -> Any:
        return check_strict(cls, values)

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float | torch.Tensor) -> float | torch.Tensor:
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or not v.is_floating_point():
                raise ValueError(f"a tensor lr must be a floating tensor with exactly 1 element, got {v.dtype} of shape {tuple(v.shape)}")
            if not (math.isfinite(float(v)) and float(v) >= 0.0):
                raise ValueError(f"lr must be a finite number ≥ 0, got {float(v)}")
            return v
        if not (math.isfinite(v) and v >= 0.0):
            raise ValueError(f"lr must be a finite number ≥ 0, got {v}")
        return v


class _RoutedAdamW(BaseModel):
    """AdamW settings for the parameters a matrix preset does not handle (embedding, head, vectors)."""

    adamw_lr_ratio: NonNeg = 1.0
    adamw_betas: tuple[Beta, Beta] = (0.9, 0.999)
    adamw_eps: NonNeg = 1e-8
    adamw_weight_decay: NonNeg = 0.0
    routed_rule: Literal["adamw", "adam_sania"] = "adamw"  # adam_sania: D = (V̂ + ε)^½, so that a Polyak
    # step over all parameters stays loss-scale invariant with a SANIA matrix rule

    def adamw_rule(self) -> Rule:
        precond = "sania" if self.routed_rule == "adam_sania" else "adam"
        return _adam_rule(precond, self.adamw_betas, self.adamw_eps, self.adamw_weight_decay, self.adamw_lr_ratio)


class _Polar(BaseModel):
    """Polar-factor options. ``ns_dtype="auto"``: bf16 where the device multiplies matrices of
    the parameter's size fast (CUDA; on CPUs a one-time probe per size class), else float32;
    float64 parameters stay float64 (``modnorm.polar_dtype``). ``ns_steps=None``: the method's default for that
    dtype (Polar Express: 6 in bf16, 8 in float32/64)."""

    ns_method: NsMethod = "polar_express"
    ns_steps: Annotated[int, Field(ge=1, lt=100)] | None = None
    ns_dtype: NsDtype = "auto"


def _adam_rule(precond: str, betas: tuple[float, float], eps: float, wd: float, lr_ratio: float = 1.0, **norm: Any) -> Rule:
    options: dict[str, Any] = {"beta2": betas[1], "eps": eps}
    return Rule(
        norm=norm.pop("norm", "frobenius"),
        preconditioner=precond,
        preconditioner_options={**options, **norm.pop("precond_extra", {})},
        momentum="adam_ema",
        beta=betas[0],
        mode=norm.pop("mode", "sharp"),
        weight_decay=wd,
        lr_ratio=lr_ratio,
        **norm,
    )


def _matrix_recipe(matrix_rule: Rule, other_rule: Rule) -> Recipe:
    """Hidden matrices and conv kernels get ``matrix_rule``; everything else ``other_rule``."""
    return Recipe(default=other_rule, roles={"hidden": matrix_rule, "conv": matrix_rule})


# ---------------------------------------------------------------- elementwise presets


class SGD(Hyperparameters):
    momentum: Beta = 0.0
    dampening: NonNeg = 0.0
    nesterov: bool = False
    weight_decay: NonNeg = 0.0

    @model_validator(mode="after")
    def _nesterov(self) -> SGD:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0 (torch.optim.SGD's rule)")
        return self


def _sgd(h: SGD) -> Recipe:
    kind = "none" if h.momentum == 0 else ("nesterov" if h.nesterov else "heavy_ball")
    rule = Rule(norm="frobenius", momentum=kind, beta=h.momentum, dampening=h.dampening, mode="sharp",
                weight_decay=h.weight_decay, weight_decay_mode="coupled")
    return Recipe(default=rule)


class AdamW(Hyperparameters):
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNeg = 1e-8
    weight_decay: NonNeg = 1e-2
    amsgrad: bool = False


def _adamw(h: AdamW) -> Recipe:
    return Recipe(default=_adam_rule("amsgrad" if h.amsgrad else "adam", h.betas, h.eps, h.weight_decay))


class Adagrad(Hyperparameters):
    lr: float | torch.Tensor = 1e-2
    lr_decay: NonNeg = 0.0
    weight_decay: NonNeg = 0.0
    initial_accumulator_value: NonNeg = 0.0
    eps: NonNeg = 1e-10


def _adagrad(h: Adagrad) -> Recipe:
    rule = Rule(norm="frobenius", preconditioner="adagrad",
                preconditioner_options={"eps": h.eps, "initial_accumulator_value": h.initial_accumulator_value},
                mode="sharp", weight_decay=h.weight_decay, weight_decay_mode="coupled", lr_decay=h.lr_decay)
    return Recipe(default=rule)


class AdamSania(Hyperparameters):
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNeg = 1e-8
    weight_decay: NonNeg = 0.0


def _adam_sania(h: AdamSania) -> Recipe:
    return Recipe(default=_adam_rule("sania", h.betas, h.eps, h.weight_decay))


class SignSGD(Hyperparameters):
    momentum: Beta = 0.0
    weight_decay: NonNeg = 0.0


def _signsgd(h: SignSGD) -> Recipe:
    rule = Rule(norm="sign", momentum="ema" if h.momentum else "none", beta=h.momentum, mode="lmo", weight_decay=h.weight_decay)
    return Recipe(default=rule)


# ---------------------------------------------------------------- spectral presets


class Muon(Hyperparameters, _RoutedAdamW):
    """torch.optim.Muon's hyperparameter names and defaults, plus the AdamW rule for the rest.

    One difference: ``ns_dtype="auto"`` (torch always computes Newton–Schulz in bf16) — bf16
    on CUDA and where a CPU multiplies bf16 matrices of that size fast, float32 elsewhere,
    float64 for float64 parameters. ``ns_dtype="bfloat16"`` reproduces torch.optim.Muon bit for bit."""

    weight_decay: NonNeg = 0.1
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
    eps: NonNeg = 1e-7
    ns_steps: Annotated[int, Field(ge=1, lt=100)] = 5
    adjust_lr_fn: Literal["original", "match_rms_adamw", "rms"] | None = None
    ns_dtype: NsDtype = "auto"


def _muon(h: Muon) -> Recipe:
    # torch.optim.Muon scales the lr by the shape factor; the same as Spectral(scale=...)'s LMO, and
    # folding it into the lr keeps torch's rounding, so the trajectories agree bit for bit.
    matrix = Rule(norm="spectral", scale="none", lr_adjust=h.adjust_lr_fn or "original", ns_coefficients=(h.ns_coefficients,),
                  ns_steps=h.ns_steps, ns_dtype=h.ns_dtype, ns_eps=h.eps,
                  momentum="ema_nesterov" if h.nesterov else "ema", beta=h.momentum, mode="lmo", weight_decay=h.weight_decay)
    return _matrix_recipe(matrix, h.adamw_rule())


class PolarGrad(Hyperparameters, _RoutedAdamW, _Polar):
    momentum: Beta = 0.9
    weight_decay: NonNeg = 0.0


def _polargrad(h: PolarGrad) -> Recipe:
    matrix = Rule(norm="spectral", scale="none", ns_method=h.ns_method, ns_steps=h.ns_steps, ns_dtype=h.ns_dtype,
                  momentum="ema" if h.momentum else "none", beta=h.momentum, mode="sharp", weight_decay=h.weight_decay)
    return _matrix_recipe(matrix, h.adamw_rule())


class Scion(Hyperparameters, _Polar):
    momentum: Beta = 0.9
    weight_decay: NonNeg = 0.0


def _scion(h: Scion) -> Recipe:
    rule = Rule(norm="declared", ns_method=h.ns_method, ns_steps=h.ns_steps, ns_dtype=h.ns_dtype,
                momentum="ema" if h.momentum else "none", beta=h.momentum, mode="lmo", weight_decay=h.weight_decay)
    return Recipe(default=rule)


class MuAdam(Hyperparameters, _RoutedAdamW, _Polar):
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNeg = 1e-8
    weight_decay: NonNeg = 0.0
    scale: Literal["rms", "original", "match_rms_adamw", "none"] = "rms"
    mode: Literal["lmo", "sharp"] = "lmo"  # sharp: ‖D⁻¹M‖_*·D⁻¹ polar(D⁻¹M), of degree 0 in the gradient for D = V^¼


def _muadam_recipe(h: MuAdam, precond: str, extra: dict[str, float]) -> Recipe:
    matrix = _adam_rule(precond, h.betas, h.eps, h.weight_decay, norm="spectral", mode=h.mode, scale=h.scale,
                        ns_method=h.ns_method, ns_steps=h.ns_steps, ns_dtype=h.ns_dtype, precond_extra=extra)
    return _matrix_recipe(matrix, h.adamw_rule())


def _muadam(h: MuAdam) -> Recipe:
    return _muadam_recipe(h, "adam", {"inner": 1.0, "outer": 0.25})


def _muadam_sania(h: MuAdam) -> Recipe:
    return _muadam_recipe(h, "sania", {})


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Preset:
    """A named configuration: its hyperparameter model, its recipe builder, its source."""

    name: str
    hyperparameters: type[Hyperparameters]
    build: Callable[[Any], Recipe]
    source: str


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, hyperparameters: type[Hyperparameters], build: Callable[[Any], Recipe], source: str = "") -> None:
    """Add a preset: ``build(validated_hyperparameters) -> Recipe``."""
    if not issubclass(hyperparameters, Hyperparameters):
        raise TypeError(f"register_preset({name!r}): hyperparameters must subclass modnorm.optim.Hyperparameters")
    PRESETS[name] = Preset(name, hyperparameters, build, source)


for _name, _hp, _build, _src in (
    ("sgd", SGD, _sgd, "Robbins & Monro 1951; Polyak 1964 (heavy ball); Nesterov 1983; torch.optim.SGD"),
    ("adamw", AdamW, _adamw, "Kingma & Ba 2015; Loshchilov & Hutter 2019; torch.optim.AdamW"),
    ("adagrad", Adagrad, _adagrad, "Duchi, Hazan & Singer 2011; torch.optim.Adagrad"),
    ("adam_sania", AdamSania, _adam_sania, "Abdukhakimov et al. 2024 (SANIA)"),
    ("signsgd", SignSGD, _signsgd, "Bernstein et al. 2018 (signSGD, Signum)"),
    ("muon", Muon, _muon, "Jordan et al. 2024 (Muon); torch.optim.Muon"),
    ("polargrad", PolarGrad, _polargrad, "Lau, Long & Su 2025 (PolarGrad)"),
    ("scion", Scion, _scion, "Pethick et al. 2025 (Scion); Large, Bernstein et al. 2024 (modular norm)"),
    ("muadam", MuAdam, _muadam, "Veprikov et al. 2025 (Preconditioned Norms), Algorithm 1, p = 1/4"),
    ("muadam_sania", MuAdam, _muadam_sania, "Veprikov et al. 2025 (Preconditioned Norms), Algorithm 1, p = 1/2"),
):
    register_preset(_name, _hp, _build, _src)


@dataclass(frozen=True)
class _FixedRecipe:
    """build() of a user's Recipe: the same recipe whatever the (lr, maximize) hyperparameters."""

    recipe: Recipe

    def __call__(self, hyperparameters: Hyperparameters) -> Recipe:
        return self.recipe


def custom_recipe_preset(recipe: Recipe) -> Preset:
    """A preset for a user's Recipe: group hyperparameters are ``lr`` and ``maximize`` only."""
    return Preset("custom", Hyperparameters, _FixedRecipe(recipe), "user recipe")
