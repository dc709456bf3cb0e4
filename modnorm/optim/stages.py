"""The pipeline's stages as keyword-only functions over one bucket (lists of same-shape tensors).

In the order ``update.update_bucket`` runs them (B parameters, t the step count)::

    oriented_gradients   g ← ∓grad, cast to the state dtype
    with_coupled_decay   g ← g + λW                          (coupled weight decay)
    momentum_stage       d ← momentum(g), c its bias correction (``momentum.py``)
    statistics_stage     precond.update_many(states, g); N ← precond.norm(base)   (Theorem 1)
    direction_stage      X ← c·stack(d);  U ← N.lmo(X) or N.sharp(X)
                         (``stacked_direction`` then ``dual_map``: between them a bucket whose
                         statistics are redone at the commit drops their temporaries)
    rule_lr              η_r ← lr · lr_ratio / (1 + (t−1)·lr_decay)
    budget_stage         the step −η_r · s_i · U_i, s_i = budget × shape factor of parameter i
    decay_factor         W ← W (1 − η_r · b_i · λ · precond.decay_scale)      (decoupled weight decay)

``update_stages.py`` holds the optional stages between the direction and the step (trust
ratio, momentum on the update, schedule-free iterates). Every function here is traceable by
torch.compile; none modifies its inputs (new state tensors are assigned to the state dicts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..norms import Norm
from .momentum import apply_momentum, momentum_scale
from .preconditioner import RESERVED_STATE_KEYS, Preconditioner, StepContext

__all__ = [
    "oriented_gradients",
    "with_coupled_decay",
    "momentum_stage",
    "momentum_factor",
    "statistics_stage",
    "direction_stage",
    "stacked_direction",
    "dual_map",
    "rule_lr",
    "budget_stage",
    "entrywise_alpha",
    "decay_factor",
]

Scalar = float | Tensor


def oriented_gradients(grads: list[Tensor], *, maximize: bool, state_dtype: torch.dtype) -> list[Tensor]:
    """g = grad (−grad when maximizing), in the state dtype."""
    if grads[0].dtype != state_dtype:
        grads = [g.to(state_dtype) for g in grads]
    return torch._foreach_neg(grads) if maximize else grads


def with_coupled_decay(grads: list[Tensor], *, views: list[Tensor], weight_decay: float, state_dtype: torch.dtype) -> list[Tensor]:
    """g + λW (torch SGD/Adagrad/RMSprop's L2 weight decay); g itself when λ = 0."""
    if not weight_decay:
        return grads
    weights = views if views[0].dtype == state_dtype else [v.to(state_dtype) for v in views]
    return torch._foreach_add(grads, weights, alpha=weight_decay)


def momentum_stage(spec: Any, *, states: Sequence[dict[str, Any]], grads: list[Tensor], step: int, defer: Any = None,
                   probe: bool = True, out: Tensor | None = None, cast: Any = None) -> tuple[list[Tensor], float]:
    """(d, c): the momentum direction and its bias correction c (direction = c·d); (g, 1) when the
    rule's momentum acts on the update instead (``update_stages.after_direction``). ``defer``,
    ``probe``: the new buffers are redone in place at the commit; ``out``: d is formed in its rows,
    through ``cast`` when narrower (``momentum.apply_momentum``)."""
    if spec.momentum_on != "gradient":
        return apply_momentum("none", 0.0, 0.0, states, grads, step, out=out, cast=cast), 1.0
    d = apply_momentum(spec.momentum, spec.beta, spec.dampening, states, grads, step, spec.direction_beta, defer, probe, out, cast)
    return d, momentum_factor(spec, step)


def momentum_factor(spec: Any, step: int) -> float:
    """The c of ``momentum_stage`` (direction = c·d), known before d is formed."""
    return momentum_scale(spec.momentum, spec.beta, step) if spec.momentum_on == "gradient" else 1.0


def statistics_stage(precond: Preconditioner, *, base: Norm, states: Sequence[dict[str, Any]], grads: list[Tensor],
                     step: int, ctx: StepContext, sharded: Any = None, update: bool = True) -> Norm:
    """Update the preconditioner's statistics from g (unless ``update=False``: already done) and
    return the preconditioned norm N over the stacked (B, *shape) tensor. ``sharded`` (FSDP2 local
    shards): statistics on shards or whole tensors, the dual map on owner ranks (``modnorm.distributed``)."""
    if sharded is not None and update:
        return sharded.precondition(precond, base, grads, step, ctx, reserved=RESERVED_STATE_KEYS)
    if update:
        precond.update_many(states, grads, step, ctx)
    norm = precond.norm(base, states, step)
    return sharded.norm(norm) if sharded is not None else norm


def stacked_direction(d: Sequence[Tensor], *, c: float, correct: bool = True) -> Tensor:
    """X = stack(d), times c when ``correct``: a copy (the momentum buffers stay untouched)."""
    X = torch.stack(list(d))
    if c != 1.0 and correct:
        X.mul_(c)
    return X


def dual_map(norm: Norm, X: Tensor, *, mode: str, narrow: bool = False) -> Tensor:
    """U = N.lmo(X) in "lmo" mode, N.sharp(X) in "sharp" mode. ``narrow``: U is only added to the
    parameters and X is the caller's scratch, so the LMO may return a narrower dtype that upcasts
    exactly and both may overwrite X (``Norm.lmo_step``, ``Norm.sharp_step``)."""
    if mode == "lmo":
        return norm.lmo_step(X) if narrow else norm.lmo(X)
    return norm.sharp_step(X) if narrow else norm.sharp(X)


def direction_stage(norm: Norm, *, d: Sequence[Tensor], c: float, mode: str, correct: bool = True) -> tuple[Tensor, Tensor]:
    """(X, U): ``stacked_direction`` then ``dual_map``."""
    X = stacked_direction(d, c=c, correct=correct)
    return X, dual_map(norm, X, mode=mode)


def rule_lr(lr: Scalar, *, lr_ratio: float, lr_decay: float, step: int) -> Scalar:
    """η_r = lr · lr_ratio, divided by 1 + (t−1)·lr_decay when Adagrad's lr decay is set."""
    lr_r = lr * lr_ratio
    if lr_decay:
        lr_r = lr_r / (1.0 + (step - 1) * lr_decay)
    return lr_r


def _uniform(values: Sequence[float]) -> bool:
    return all(v == values[0] for v in values)


def budget_stage(U: Tensor, *, lr: Scalar, step_scales: Sequence[float]) -> tuple[Tensor, Scalar]:
    """(U', α) with the step α·U' = −η_r · s_i · U_i for each parameter i: α = −η_r·s when the
    step scales agree, else U' = s_i·U_i and α = −η_r."""
    if _uniform(step_scales):
        return U, -lr * step_scales[0]
    scales = torch.tensor(list(step_scales), dtype=U.dtype, device=U.device).view(-1, *([1] * (U.ndim - 1)))
    return U * scales, -lr


def entrywise_alpha(*, lr: Scalar, c: float, step_scales: Sequence[float]) -> Scalar | list[float]:
    """−η_r·c·s for the per-parameter entrywise path: one scalar when the step scales agree, else
    one float per parameter (a float lr only; a tensor lr with mixed scales takes the stacked path)."""
    if _uniform(step_scales):
        return -(lr * c) * step_scales[0]
    return [-(lr * c) * s for s in step_scales]


def decay_factor(*, lr: Scalar, weight_decay: float, decay_budgets: Sequence[float] | None) -> Scalar | list[Scalar]:
    """The decoupled decay factor 1 − η_r · b_i · λ (λ includes the preconditioner's ``decay_scale``):
    one scalar when the budgets b_i agree (b = 1 when not given), else one per parameter."""
    if decay_budgets is None or _uniform(decay_budgets):
        return 1.0 - lr * (weight_decay * (decay_budgets[0] if decay_budgets else 1.0))
    return [1.0 - lr * (weight_decay * b) for b in decay_budgets]
