"""Presets of the wider optimizer zoo, with their peers' hyperparameter names and defaults.

``adamw_schedulefree`` = schedulefree's AdamWScheduleFree: call
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

from pydantic import Field

from .hparams import Beta, Betas, NonNeg, Positive
from .parts import (adam_momentum, coupled_decay, decoupled_decay, everywhere, heavy_ball, lion_momentum, lmo, precondition, rule, sharp,
                    trust_ratio)
from .presets import Preset, preset
from .recipe import Recipe

__all__ = ["ZOO_PRESETS"]


def rmsprop(alpha: Beta = 0.99, eps: NonNeg = 1e-8, weight_decay: NonNeg = 0.0, momentum: Beta = 0.0, centered: bool = False) -> Recipe:
    """torch.optim.RMSprop's names and defaults."""
    return everywhere(rule(sharp("frobenius"), precondition("rmsprop", alpha=alpha, eps=eps, centered=centered),
                           heavy_ball(momentum, on="update"), coupled_decay(weight_decay)))


def lion(betas: Betas = (0.9, 0.99), weight_decay: NonNeg = 0.0) -> Recipe:
    """lion-pytorch's names and defaults: betas = (β₁ of the direction, β₂ of the buffer)."""
    return everywhere(rule(lmo("sign"), lion_momentum(*betas), decoupled_decay(weight_decay)))


def lamb(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-6, weight_decay: NonNeg = 0.0, trust_clamp: Positive = 10.0) -> Recipe:
    """pytorch-optimizer's Lamb names and defaults (eps is both Adam's and the trust ratio's)."""
    return everywhere(rule(sharp("frobenius"), precondition("adam", beta2=betas[1], eps=eps, bias_correction=False),
                           adam_momentum(betas[0]), decoupled_decay(weight_decay), trust_ratio("update", clamp=trust_clamp, eps=eps)))


def lars(weight_decay: NonNeg = 0.0, momentum: Beta = 0.9, dampening: NonNeg = 0.0, trust_coefficient: NonNeg = 1e-3,
         nesterov: bool = False) -> Recipe:
    """pytorch-optimizer's LARS names and defaults; vectors take plain SGD with momentum."""
    direction = (sharp("frobenius"), heavy_ball(momentum, dampening=dampening, nesterov=nesterov, on="update"))
    matrix = rule(*direction, coupled_decay(weight_decay), trust_ratio("triangle", coefficient=trust_coefficient))
    return Recipe(default=matrix, roles={"vector": rule(*direction)})


def adamw_schedulefree(betas: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], Beta] = (0.9, 0.999), eps: NonNeg = 1e-8,
                       weight_decay: NonNeg = 0.0, warmup_steps: Annotated[int, Field(ge=0)] = 0, r: NonNeg = 0.0,
                       weight_lr_power: NonNeg = 2.0) -> Recipe:
    """schedulefree's AdamWScheduleFree names and defaults (β1 > 0: the eval point divides by it)."""
    return everywhere(rule(sharp("frobenius"), precondition("adam", beta2=betas[1], eps=eps),
                           {"momentum": "schedule_free", "beta": betas[0]}, decoupled_decay(weight_decay),
                           sf_warmup_steps=warmup_steps, sf_r=r, sf_weight_lr_power=weight_lr_power))


ZOO_PRESETS: tuple[Preset, ...] = (
    preset(adamw_schedulefree, lr=0.0025, source="Defazio et al. 2024 (schedule-free); schedulefree's AdamWScheduleFree"),
    preset(rmsprop, lr=1e-2, source="Tieleman & Hinton 2012 (RMSprop); Graves 2013 (centred); torch.optim.RMSprop"),
    preset(lion, lr=1e-4, source="Chen et al. 2023 (Lion, symbolic discovery); lion-pytorch"),
    preset(lamb, source="You et al. 2020 (LAMB); pytorch-optimizer's Lamb"),
    preset(lars, source="You, Gitman & Ginsburg 2017 (LARS); pytorch-optimizer's LARS"),
)
