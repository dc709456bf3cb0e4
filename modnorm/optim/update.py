"""One bucket's step: same-shape parameters that share a rule, updated at once.

    g ← ∓grad (maximize), + λW if weight decay is coupled      (cast to the state dtype)
    d ← momentum(g); c ← its bias correction                   (momentum.py)
    precond.update_many(states, g)                             (statistics of the raw g)
    U ← N.lmo(c·stack d) or N.sharp(c·stack d),  N = precond.norm(base)   (Theorem 1)
    U ← trust ratio · U;  U ← momentum(U) if momentum_on="update"   (update_stages.py; then c·U)
    W ← W (1 − η_r · budget · λ s)  (decoupled weight decay, s = precond.decay_scale);   W ← W − η_r · budget · shape · U

The decoupled decay takes the parameter's budget like the step it accompanies (with
budget 1 it is torch's ``W (1 − lr λ)``): the ratio of decay to step is the same for
every layer, whatever its share of the update.

Entrywise shortcut: a Frobenius base in sharp mode with no preconditioner (U = c·d) or a
preconditioner offering ``entrywise_divisor`` (U = c·d / D², e.g. Adam, SANIA, Adagrad
with ε > 0) never stacks: it works on the per-parameter lists with ``torch._foreach_*``
(the same mathematics as ``DNorm(Frobenius, D).sharp``, without the stack/unbind copies).

``lr`` is a float (eager: torch's rounding) or a 0-d tensor (compiled: a new lr value is a
new input, not a recompile). Everything here is traceable by torch.compile; plans,
bucketing and the step count are resolved before (``ModnormOptimizer._prepare``).
"""

from __future__ import annotations

from collections.abc import Sequence
import itertools
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..norms import Frobenius, Norm
from .momentum import apply_momentum, momentum_scale
from .preconditioner import RESERVED_STATE_KEYS, Identity, Preconditioner, StepContext
from .update_stages import after_direction, schedule_free
from .step_size import Direction

__all__ = ["RuleSpec", "update_bucket", "compiled_update_bucket", "momentum_implied"]

Scalar = float | Tensor


@dataclass(frozen=True)
class RuleSpec:
    """The plain-Python numbers of a ``Rule`` that the step reads (cheap for torch.compile to guard)."""

    momentum: str
    beta: float
    dampening: float
    mode: str
    weight_decay: float
    coupled: bool
    lr_ratio: float
    lr_decay: float
    direction_beta: float = 0.0
    momentum_on: str = "gradient"
    trust_ratio: str = "none"
    trust_coefficient: float = 1.0
    trust_clamp: float | None = None
    trust_eps: float = 0.0
    sf_warmup_steps: int = 0
    sf_r: float = 0.0
    sf_weight_lr_power: float = 2.0

    @classmethod
    def of(cls, rule: Any) -> RuleSpec:
        return cls(rule.momentum, rule.beta, rule.dampening, rule.mode, rule.weight_decay,
                   rule.weight_decay_mode == "coupled", rule.lr_ratio, rule.lr_decay, rule.direction_beta,
                   rule.momentum_on, rule.trust_ratio, rule.trust_coefficient, rule.trust_clamp, rule.trust_eps,
                   rule.sf_warmup_steps, rule.sf_r, rule.sf_weight_lr_power)

    @property
    def staged(self) -> bool:
        """A stage runs between the direction and the update (trust ratio, momentum on the update, schedule-free)."""
        return (self.trust_ratio != "none" or self.momentum == "schedule_free"
                or (self.momentum_on == "update" and self.momentum != "none"))


def _alphas(lr_r: Scalar, c: float, budgets: Sequence[float]) -> Scalar | list[float]:
    """−η_r·c·budget: one scalar when the budgets agree, else one float per parameter."""
    if all(b == budgets[0] for b in budgets):
        return -(lr_r * c) * budgets[0]
    return [-(lr_r * c) * b for b in budgets]  # float lr only (a tensor lr with mixed budgets takes the stacked path)


def momentum_implied(spec: RuleSpec, precond: Preconditioner, state_dtype: torch.dtype) -> bool:
    """Whether the finiteness check may skip the momentum buffers and directions: when the
    preconditioner's new state holds G ⊙ G (or G Gᵀ), finite state means |G| < √max, and a
    momentum buffer (|B| ≤ max|G|/(1-β)) then stays finite in a float32-range dtype."""
    return spec.momentum != "none" and precond.covers_gradient and torch.finfo(state_dtype).max >= 1e38


Computed = tuple[Sequence[Tensor], Any, Any, Any, bool, list[Tensor]]
"""(update, alpha, decay, divisor, fresh, checks): the fields of a ``PendingWrite`` and the
tensors to check besides the new state (see ``update_bucket``)."""


def update_bucket(
    spec: RuleSpec,
    base: Norm,
    precond: Preconditioner,
    budgets: Sequence[float],
    views: list[Tensor],
    grads: list[Tensor],
    states: Sequence[dict[str, Any]],
    step: int,
    lr: Scalar,
    maximize: bool,
    state_dtype: torch.dtype,
    ctx: StepContext,
    sharded: Any = None,
    decays: Sequence[float] | None = None,
    collect: list[Any] | None = None,
) -> Computed:
    """One step of a bucket (see the module docstring), computed aside: new state tensors are
    assigned to the keys of ``states`` (shadow dicts), the parameters are not touched; returns
    the parameter change (``transaction.PendingWrite`` fields) and the update tensors to check.
    The step counters are advanced when the step commits. ``sharded``: local shards (modnorm.distributed);
    ``decays``: each parameter's budget for the decoupled weight decay (default: 1).
    ``collect``: for a global step-size stage (``step_size.py``), append the bucket's
    ``Direction`` (stacked input X and direction U, before budgets); the entrywise shortcuts are
    then skipped, and the returned ``alpha`` is scaled by the stage's factor before the commit."""
    if sharded is not None and (spec.trust_ratio != "none" or spec.momentum == "schedule_free"):
        raise NotImplementedError("trust ratios (lamb, lars) and schedule-free need whole tensors; they do not run on FSDP2 shards")
    if grads[0].dtype != state_dtype:
        grads = [g.to(state_dtype) for g in grads]
    if maximize:
        grads = torch._foreach_neg(grads)
    if precond.warmup_steps:  # statistics-only first steps (SOAP's reference schedule)
        if step <= precond.warmup_steps:
            precond.update_many(states, grads, step - precond.warmup_steps, ctx)
            return [], 0.0, None, None, False, []
        step = step - precond.warmup_steps
    raw = grads
    wd = spec.weight_decay
    if wd and spec.coupled:
        grads = torch._foreach_add(grads, views if views[0].dtype == state_dtype else [v.to(state_dtype) for v in views], alpha=wd)
    staged = spec.staged
    if spec.momentum_on == "gradient":
        d = apply_momentum(spec.momentum, spec.beta, spec.dampening, states, grads, step, spec.direction_beta)
        c = momentum_scale(spec.momentum, spec.beta, step)
    else:
        d, c = grads, 1.0
    lr_r = lr * spec.lr_ratio
    if spec.lr_decay:
        lr_r = lr_r / (1.0 + (step - 1) * spec.lr_decay)
    decay = (_decay(lr_r, spec.weight_decay * precond.decay_scale(views[0].shape), decays)
             if spec.weight_decay and not spec.coupled and spec.momentum != "schedule_free" else None)  # schedule-free decays at y itself
    uniform = all(b == budgets[0] for b in budgets)
    entrywise = (
        spec.mode == "sharp" and type(base) is Frobenius and views[0].dtype == state_dtype
        and (uniform or not isinstance(lr_r, Tensor)) and (sharded is None or not sharded.whole_statistics)
        and not staged and collect is None
    )
    if entrywise and isinstance(precond, Identity):
        return d, _alphas(lr_r, c, budgets), decay, None, False, list(d)
    if entrywise:
        precond.update_many(states, grads, step, ctx)
        D2 = precond.entrywise_divisor(states, step)
        if D2 is not None:  # d and the state are checked; D² > 0 (eps validated against the state dtype)
            return d, _alphas(lr_r, c, budgets), decay, D2, False, [] if momentum_implied(spec, precond, state_dtype) else list(d)
        norm = precond.norm(base, states, step)
        if sharded is not None:
            norm = sharded.norm(norm)
    elif sharded is not None:  # statistics on shards (or whole tensors); dual map via all_to_all to owner ranks
        norm = sharded.precondition(precond, base, grads, step, ctx, reserved=RESERVED_STATE_KEYS)
    else:
        precond.update_many(states, grads, step, ctx)
        norm = precond.norm(base, states, step)
    X = torch.stack(d)  # a copy: the momentum buffers stay untouched
    if c != 1.0 and not staged:  # staged: the bias correction scales the step after the stages
        X.mul_(c)
    U = norm.lmo(X) if spec.mode == "lmo" else norm.sharp(X)
    if collect is not None:
        collect.append(Direction(ctx.params, states, X, U, budgets))
    if staged:
        return _staged(spec, U, views, raw, states, step, lr_r * c, budgets, uniform, decay)
    if uniform:
        alpha: Scalar = -lr_r * budgets[0]
    else:
        U = U * torch.tensor(budgets, dtype=U.dtype, device=U.device).view(-1, *([1] * (U.ndim - 1)))
        alpha = -lr_r
    if U.dtype != views[0].dtype:
        U = U.to(views[0].dtype)
    checks = [U, *d] if spec.momentum == "none" and not precond.covers_gradient else [U]  # d (the gradient) is in no state
    return U.unbind(0), alpha, decay, None, True, checks


def _staged(spec: RuleSpec, U: Tensor, views: list[Tensor], raw: Sequence[Tensor], states: Sequence[dict[str, Any]],
            step: int, lr_c: Scalar, budgets: Sequence[float], uniform: bool, decay: Any) -> Computed:
    """The stages after U (``update_stages``) and the parameter change they give."""
    steps, fresh = after_direction(spec, U, views, raw, states, step, decay)
    if not uniform:
        steps, fresh = torch._foreach_mul(steps, [float(b) for b in budgets]), True
    if steps[0].dtype != views[0].dtype:
        steps, fresh = [u.to(views[0].dtype) for u in steps], True
    if spec.momentum == "schedule_free":
        update, y_decay = schedule_free(spec, views, steps, states, step, lr_c * (budgets[0] if uniform else 1.0))
        return update, 1.0, y_decay, None, True, list(update)
    return steps, -lr_c * budgets[0] if uniform else -lr_c, decay, None, fresh, list(steps)


def _decay(lr_r: Scalar, wd: float, decays: Sequence[float] | None) -> Scalar | list[Scalar]:
    """The decoupled decay factor 1 − η_r · budget · λ: one scalar when the budgets agree, else one per parameter."""
    if decays is None or all(b == decays[0] for b in decays):
        return 1.0 - lr_r * (wd * (decays[0] if decays else 1.0))
    return [1.0 - lr_r * (wd * b) for b in decays]


_copies = itertools.count()


def compiled_update_bucket(options: dict[str, Any]) -> Any:
    """``update_bucket`` under ``torch.compile(**options)``, as a copy with its own code object.

    torch.compile caches graphs per code object (8 by default); one copy per bucket keeps each
    bucket's graphs apart, so a model with many bucket shapes neither recompiles step after step
    nor runs out of cache entries.
    """
    code = update_bucket.__code__.replace(co_name=f"update_bucket_{next(_copies)}")
    fn = types.FunctionType(code, update_bucket.__globals__, code.co_name, update_bucket.__defaults__, update_bucket.__closure__)
    return torch.compile(fn, **options)
