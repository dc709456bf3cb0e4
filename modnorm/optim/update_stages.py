"""Stages between the direction U = lmo/sharp(d) and the parameter update: the trust ratio and
momentum on the update.

Trust ratio (LAMB, LARS): U ← r · U per parameter, with

    r = c · min(‖W‖, clamp) / (den + ε),   r = 1 where ‖W‖ = 0 or den = 0,
    den = ‖U‖                    (``trust_ratio="update"``, LAMB),
    den = ‖g‖ + λ‖W‖             (``trust_ratio="triangle"``, LARS: the triangle bound of ‖g + λW‖),

all norms Frobenius over the whole tensor, W after decoupled weight decay. The step
η·r·U then has size η·c·‖W‖ (exactly, for "update" and ε = 0): every layer moves by
the same fraction η·c of its own weight norm. In the modular norm's terms the trust
ratio is a per-layer budget that the weights set at run time, instead of the static
budgets that ``modnorm.budgets`` derives from the network's structure (which the
presets of this family leave off: ``budgets=False`` reproduces the peers).

Schedule-free iterates (momentum kind "schedule_free"; Defazio et al. 2024), replacing
W ← W − η·U: with the step k = t − 1, η_k = η·min(1, (k+1)/warmup), η_max = max_k η_k,
weight w = (k+1)^r · η_max^p, c = w / Σw, and U' = U + λy (decay at y):

    y ← (1 − c)·y + c·z + η_k (β(1 − c) − 1)·U',     z ← z − η_k·U'

y is the parameter during training; ``ModnormOptimizer.eval()`` sets it to the averaged
iterate x = lerp(y, z, 1 − 1/β) and ``train()`` back to y = lerp(x, z, 1 − β) (exact inverses).

Momentum on the update (RMSprop, LARS): the rule's momentum kind runs on U instead of
on the gradient (``momentum_on="update"``): buffer ← β·buffer + (1-τ)·U, and the buffer
(or Nesterov's U + β·buffer) is the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .momentum import apply_momentum, momentum_key

__all__ = ["trust_ratios", "after_direction", "schedule_free", "schedule_free_swap", "ScheduleFreeModes"]


def trust_ratios(spec: Any, U: Sequence[Tensor], views: Sequence[Tensor], grads: Sequence[Tensor], decay: Any = None) -> Tensor:
    """The per-parameter trust ratios r (a 1-D tensor), see the module docstring; ``decay``: the
    decoupled-decay factor(s) the parameters are about to be multiplied by (‖W‖ is taken after it)."""
    w = torch.stack(torch._foreach_norm(list(views))).to(U[0].dtype)
    if decay is not None:
        w = w * (torch.tensor(decay, dtype=w.dtype) if isinstance(decay, list) else decay)
    if spec.trust_ratio == "update":
        den = torch.stack(torch._foreach_norm(list(U)))
    else:
        den = torch.stack(torch._foreach_norm(list(grads))).to(w.dtype) + spec.weight_decay * w
    wc = w.clamp(max=spec.trust_clamp) if spec.trust_clamp is not None else w
    r = spec.trust_coefficient * wc / (den + spec.trust_eps)
    return torch.where((w == 0) | (den == 0), torch.ones_like(r), r)


def after_direction(spec: Any, U: Tensor, views: Sequence[Tensor], grads: Sequence[Tensor],
                    states: Sequence[dict[str, Any]], step: int, decay: Any = None) -> tuple[list[Tensor], bool]:
    """Apply the trust ratio and the update momentum to the stacked U (B, *shape).

    Returns the per-parameter steps and whether they are fresh tensors (not momentum buffers).
    """
    if spec.trust_ratio != "none":
        r = trust_ratios(spec, U.unbind(0), views, grads, decay)
        U = U * r.view(-1, *([1] * (U.ndim - 1)))
    steps = list(U.unbind(0))
    if spec.momentum_on != "update" or spec.momentum in ("none", "schedule_free"):
        return steps, True
    out = apply_momentum(spec.momentum, spec.beta, spec.dampening, states, steps, step, spec.direction_beta)
    buffers = {id(s.get(momentum_key(spec.momentum))) for s in states}
    return out, not any(id(o) in buffers for o in out)


def schedule_free(spec: Any, views: Sequence[Tensor], U: Sequence[Tensor], states: Sequence[dict[str, Any]],
                  step: int, lr: Any) -> tuple[list[Tensor], float]:
    """The schedule-free iterate update (module docstring), computed aside: new z and averaging
    scalars are assigned to the states; returns (A, f) with y_new = f·y + A (``lr`` includes the budget)."""
    k, lr = step - 1, float(lr)
    lr_k = lr * min(1.0, (k + 1) / spec.sf_warmup_steps) if spec.sf_warmup_steps else lr
    lr_max = max(lr_k, float(states[0]["sf_lr_max"]))  # a bucket shares its step count and lr: one weight for all
    weight = (k + 1) ** spec.sf_r * lr_max**spec.sf_weight_lr_power
    weight_sum = float(states[0]["sf_weight_sum"]) + weight
    c = weight / weight_sum if weight_sum else 0.0
    coef = lr_k * (spec.beta * (1 - c) - 1)
    zs = [s["z"] for s in states]
    # U' = U + λy;  y ← (1-c)y + c z + coef·U' = (1 - c + coef·λ) y + (c z + coef·U);  z ← z − η_k U'
    A = torch._foreach_mul(zs, c)
    torch._foreach_add_(A, list(U), alpha=coef)
    new_z = torch._foreach_add(zs, list(U), alpha=-lr_k)
    if spec.weight_decay:
        torch._foreach_add_(new_z, list(views), alpha=-lr_k * spec.weight_decay)
    for s, z in zip(states, new_z):
        s["z"] = z
        s["sf_lr_max"] = torch.tensor(lr_max, dtype=torch.float64)
        s["sf_weight_sum"] = torch.tensor(weight_sum, dtype=torch.float64)
    return A, 1.0 - c + coef * spec.weight_decay


def schedule_free_swap(p: Tensor, z: Tensor, beta: float, to_eval: bool) -> None:
    """Move ``p`` in place between the training iterate y and the averaged iterate
    x = (y − (1−β) z)/β used for evaluation (``to_eval``), and back: y = β x + (1−β) z."""
    p.lerp_(z.view_as(p).to(p.dtype), 1.0 - 1.0 / beta if to_eval else 1.0 - beta)


class ScheduleFreeModes:
    """``train()`` / ``eval()`` of an optimizer with schedule-free rules (a mixin of
    ``ModnormOptimizer``): the parameters hold the training iterate y or the average x."""

    param_groups: list[dict[str, Any]]
    state: Any
    _eval_mode: bool

    @torch.no_grad()
    def train(self) -> None:
        """Schedule-free rules: parameters back to the training iterate y (no-op when already there)."""
        self._schedule_free_switch(to_eval=False)

    @torch.no_grad()
    def eval(self) -> None:
        """Schedule-free rules: parameters to the averaged iterate x (evaluate, checkpoint); ``train()`` undoes it."""
        self._schedule_free_switch(to_eval=True)

    def _schedule_free_switch(self, to_eval: bool) -> None:
        if getattr(self, "_eval_mode", False) == to_eval:
            return
        for gi, group in enumerate(self.param_groups):
            for p, plan in zip(group["params"], self._plans(gi, group)):
                if plan.rule.momentum == "schedule_free" and "z" in self.state.get(p, {}):
                    schedule_free_swap(p, self.state[p]["z"], plan.rule.beta, to_eval)
        self._eval_mode = to_eval
