"""Presets of the wider optimizer zoo, with their peers' hyperparameter names and defaults.

=========  =========  ==========================  =========================  =====  ======================
preset     base norm  preconditioner              momentum                   mode   stage after U
=========  =========  ==========================  =========================  =====  ======================
rmsprop    Frobenius  rmsprop: √V (or √(V−ḡ²))+ε  heavy-ball on the update   sharp  —
lion       Sign       none                        lion (β₁-interpolated EMA) lmo    —
lamb       Frobenius  adam, V not bias-corrected  adam_ema (after the ratio) sharp  trust ratio ‖W‖/‖U‖
lars       Frobenius  none                        heavy-ball on the update   sharp  trust ratio c‖W‖/(‖g‖+λ‖W‖)
adamw_sf   Frobenius  adam: (√V̂+ε)^½              schedule_free (iterates)   sharp  y, z iterate update
=========  =========  ==========================  =========================  =====  ======================

``adamw_sf`` is ``adamw_schedulefree`` = schedulefree's AdamWScheduleFree: call
``optimizer.eval()`` before evaluating or saving and ``optimizer.train()`` before training
again (the peer's convention; here the optimizer starts in train mode).

``rmsprop`` = torch.optim.RMSprop (coupled weight decay), ``lion`` = lion-pytorch's Lion
(decoupled weight decay W ← W(1 − ηλ)), ``lamb`` = pytorch-optimizer's Lamb (defaults:
V not bias-corrected, decoupled weight decay, ‖W‖ clamped at 10; M's correction 1/(1−β1^t)
scales the step after the trust ratio, so early steps move by lr·‖W‖/(1−β1^t)), ``lars`` =
pytorch-optimizer's LARS: matrices and kernels get the trust ratio and coupled weight
decay, vectors and scalars plain SGD with momentum. LARS's first momentum step follows
torch.optim.SGD (buffer = U); pytorch-optimizer's starts from (1 − dampening)·U, the same
when ``dampening=0``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from .presets import Hyperparameters, register_preset
from .recipe import Recipe, Rule

__all__ = ["RMSpropHP", "LionHP", "LambHP", "LARSHP"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]


class RMSpropHP(Hyperparameters):
    """torch.optim.RMSprop's names and defaults."""

    lr: float | torch.Tensor = 1e-2
    alpha: Beta = 0.99
    eps: NonNeg = 1e-8
    weight_decay: NonNeg = 0.0
    momentum: Beta = 0.0
    centered: bool = False


def _rmsprop(h: RMSpropHP) -> Recipe:
    rule = Rule(norm="frobenius", preconditioner="rmsprop",
                preconditioner_options={"alpha": h.alpha, "eps": h.eps, "centered": h.centered},
                momentum="heavy_ball" if h.momentum else "none", beta=h.momentum, momentum_on="update",
                mode="sharp", weight_decay=h.weight_decay, weight_decay_mode="coupled")
    return Recipe(default=rule)


class LionHP(Hyperparameters):
    """lion-pytorch's names and defaults: betas = (β₁ of the direction, β₂ of the buffer)."""

    lr: float | torch.Tensor = 1e-4
    betas: tuple[Beta, Beta] = (0.9, 0.99)
    weight_decay: NonNeg = 0.0


def _lion(h: LionHP) -> Recipe:
    rule = Rule(norm="sign", momentum="lion", direction_beta=h.betas[0], beta=h.betas[1], mode="lmo",
                weight_decay=h.weight_decay)
    return Recipe(default=rule)


class LambHP(Hyperparameters):
    """pytorch-optimizer's Lamb names and defaults (eps is both Adam's and the trust ratio's)."""

    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNeg = 1e-6
    weight_decay: NonNeg = 0.0
    trust_clamp: Positive = 10.0


def _lamb(h: LambHP) -> Recipe:
    rule = Rule(norm="frobenius", preconditioner="adam",
                preconditioner_options={"beta2": h.betas[1], "eps": h.eps, "bias_correction": False},
                momentum="adam_ema", beta=h.betas[0], mode="sharp", weight_decay=h.weight_decay,
                trust_ratio="update", trust_clamp=h.trust_clamp, trust_eps=h.eps)
    return Recipe(default=rule)


class LARSHP(Hyperparameters):
    """pytorch-optimizer's LARS names and defaults."""

    weight_decay: NonNeg = 0.0
    momentum: Beta = 0.9
    dampening: NonNeg = 0.0
    trust_coefficient: NonNeg = 1e-3
    nesterov: bool = False


def _lars(h: LARSHP) -> Recipe:
    kind = "none" if h.momentum == 0 else ("nesterov" if h.nesterov else "heavy_ball")
    common = {"norm": "frobenius", "momentum": kind, "beta": h.momentum, "dampening": h.dampening,
              "momentum_on": "update", "mode": "sharp"}
    matrix = Rule(**common, weight_decay=h.weight_decay, weight_decay_mode="coupled",
                  trust_ratio="triangle", trust_coefficient=h.trust_coefficient)
    return Recipe(default=matrix, roles={"vector": Rule(**common)})


class AdamWScheduleFreeHP(Hyperparameters):
    """schedulefree's AdamWScheduleFree names and defaults (β1 > 0: the eval point divides by it)."""

    lr: float | torch.Tensor = 0.0025
    betas: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], Beta] = (0.9, 0.999)
    eps: NonNeg = 1e-8
    weight_decay: NonNeg = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    r: NonNeg = 0.0
    weight_lr_power: NonNeg = 2.0


def _adamw_schedulefree(h: AdamWScheduleFreeHP) -> Recipe:
    rule = Rule(norm="frobenius", preconditioner="adam", preconditioner_options={"beta2": h.betas[1], "eps": h.eps},
                momentum="schedule_free", beta=h.betas[0], mode="sharp", weight_decay=h.weight_decay,
                sf_warmup_steps=h.warmup_steps, sf_r=h.r, sf_weight_lr_power=h.weight_lr_power)
    return Recipe(default=rule)


for _name, _hp, _build, _src in (
    ("adamw_schedulefree", AdamWScheduleFreeHP, _adamw_schedulefree, "Defazio et al. 2024 (schedule-free); schedulefree's AdamWScheduleFree"),
    ("rmsprop", RMSpropHP, _rmsprop, "Tieleman & Hinton 2012 (RMSprop); Graves 2013 (centred); torch.optim.RMSprop"),
    ("lion", LionHP, _lion, "Chen et al. 2023 (Lion, symbolic discovery); lion-pytorch"),
    ("lamb", LambHP, _lamb, "You et al. 2020 (LAMB); pytorch-optimizer's Lamb"),
    ("lars", LARSHP, _lars, "You, Gitman & Ginsburg 2017 (LARS); pytorch-optimizer's LARS"),
):
    register_preset(_name, _hp, _build, _src)
