"""One bucket's step: same-shape parameters that share a rule, updated at once, by composing
the stages of ``stages.py`` (and ``update_stages.py``)::

    g ← ∓grad (maximize), + λW if weight decay is coupled      (cast to the state dtype)
    d ← momentum(g); c ← its bias correction                   (momentum.py)
    precond.update_many(states, g)                             (statistics of g)
    U ← N.lmo(c·stack d) or N.sharp(c·stack d),  N = precond.norm(base)   (Theorem 1)
    U ← trust ratio · U;  U ← momentum(U) if momentum_on="update"   (update_stages.py; then c·U)
    W ← W (1 − η_r · budget · λ s)  (decoupled weight decay, s = precond.decay_scale);   W ← W − η_r · budget · shape · U

The decoupled decay takes the parameter's budget like the step it accompanies (with
budget 1 it is torch's ``W (1 − lr λ)``): the ratio of decay to step is the same for
every layer, whatever its share of the update.

Sharp at the commit: in sharp mode with a momentum whose direction is its new buffer, a
preconditioner that bounds its sharp (``Preconditioner.sharp_growth``: SOAP, Shampoo) lets the
step prove U finite from max |M̂| and form it at the commit instead (``_sharp_at_commit``).

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
import math
import types
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..norms import Frobenius, Norm
from .deferred import accumulation_bound
from .momentum import NEW_BUFFER_KINDS, buffers_at_commit, momentum_key, new_buffer
from .preconditioner import Identity, Preconditioner, StepContext
from .stages import (budget_stage, decay_factor, dual_map, entrywise_alpha, momentum_factor, momentum_stage, oriented_gradients, rule_lr,
                     stacked_direction, statistics_stage, with_coupled_decay)
from .step_size import Direction
from .update_stages import after_direction, schedule_free

__all__ = ["RuleSpec", "BucketStep", "update_bucket", "compiled_update_bucket", "momentum_implied"]

Scalar = float | Tensor


@dataclass(frozen=True)
class RuleSpec:
    """The plain-Python numbers of an ``UpdateRule`` that the step reads (cheap for torch.compile to guard)."""

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


def momentum_implied(spec: RuleSpec, precond: Preconditioner, state_dtype: torch.dtype) -> bool:
    """Whether the finiteness check may skip the momentum buffers and directions: when the
    preconditioner's new state holds G ⊙ G (or G Gᵀ), finite state means |G| < √max, and a
    momentum buffer (|B| ≤ max|G|/(1-β)) then stays finite in a float32-range dtype."""
    return spec.momentum != "none" and precond.covers_gradient and torch.finfo(state_dtype).max >= 1e38


class BucketStep(NamedTuple):
    """A bucket's computed parameter change (the fields of ``transaction.PendingWrite``) and the
    tensors the finiteness check reads besides the new state (``bound``: their max |x| must not
    exceed it)."""

    update: Sequence[Tensor]
    alpha: Any
    decay: Any
    divisor: Any
    fresh: bool
    checks: list[Tensor]
    scale: float = 1.0
    rows: Any = None
    bound: float = math.inf
    form: Any = None


NO_STEP = BucketStep([], 0.0, None, None, False, [])
"""A statistics-only step (a preconditioner's warm-up): nothing is written to the parameters."""


def update_bucket(
    *,
    spec: RuleSpec,
    base: Norm,
    precond: Preconditioner,
    views: list[Tensor],
    grads: list[Tensor],
    states: Sequence[dict[str, Any]],
    step: int,
    lr: Scalar,
    maximize: bool,
    state_dtype: torch.dtype,
    ctx: StepContext,
    step_scales: Sequence[float],
    decay_budgets: Sequence[float] | None = None,
    sharded: Any = None,
    collect: list[Any] | None = None,
) -> BucketStep:
    """One step of a bucket (see the module docstring), computed aside: new state tensors are
    assigned to the keys of ``states`` (shadow dicts), the parameters are not touched; returns
    the parameter change and the update tensors to check. The step counters are advanced when
    the step commits.

    ``step_scales``: each parameter's budget × its rule's shape factor (``lr_adjust``), the factor
    on its step; ``decay_budgets``: each parameter's budget, the factor on its decoupled weight
    decay (default 1); ``sharded``: local shards (modnorm.distributed); ``collect``: for a global
    step-size stage (``step_size.py``), append the bucket's ``Direction`` (stacked input X and
    direction U, before the step scales); the entrywise shortcuts are then skipped, and the
    returned ``alpha`` is scaled by the stage's factor before the commit."""
    if sharded is not None and (spec.trust_ratio != "none" or spec.momentum == "schedule_free"):
        raise NotImplementedError("trust ratios (lamb, lars) and schedule-free need whole tensors; they do not run on FSDP2 shards")
    raw = oriented_gradients(grads, maximize=maximize, state_dtype=state_dtype)
    if precond.warmup_steps:  # statistics-only first steps (SOAP's reference schedule)
        if step <= precond.warmup_steps:
            precond.update_many(states, raw, step - precond.warmup_steps, ctx)
            return NO_STEP
        step = step - precond.warmup_steps
    g = with_coupled_decay(raw, views=views, weight_decay=spec.weight_decay if spec.coupled else 0.0, state_dtype=state_dtype)
    lr_r = rule_lr(lr, lr_ratio=spec.lr_ratio, lr_decay=spec.lr_decay, step=step)
    # the entrywise shortcut (module docstring): U = c·d or c·d/D², per parameter, never stacked
    updated, D2 = False, None
    entrywise = _entrywise(spec, base, views, state_dtype, step_scales, lr_r, sharded, collect)
    if entrywise and not isinstance(precond, Identity):
        precond.update_many(states, g, step, ctx)
        updated = True
        D2 = precond.entrywise_divisor(states, step)  # D² > 0 (eps validated against the state dtype), or None
    shortcut = entrywise and (isinstance(precond, Identity) or D2 is not None)
    # the stacked path forms d in X, so its new buffers may be redone at the commit (``deferred``);
    # the shortcut keeps d as the update: deferring them would save nothing
    defer = None if shortcut or spec.staged else ctx.defer
    # a U that is only added (float lr, one step scale, nothing staged or collected) may stay in
    # Newton–Schulz's bf16: W + α·U upcasts it exactly, and holding it until the commit takes half
    narrow = not spec.staged and collect is None and sharded is None and isinstance(lr_r, float) and len(set(step_scales)) == 1
    # d the new momentum buffer: no bucket of it formed now, and no U held until the commit where a
    # sharp's bound proves it finite (``_sharp_at_commit``) or an LMO is held in parts (``_lmo_in_parts``)
    decay = _decay(spec, precond, views, lr_r, decay_budgets)
    if defer is not None and narrow and spec.momentum in NEW_BUFFER_KINDS and views[0].dtype == state_dtype:
        early = None
        if spec.mode == "sharp":
            if not updated:
                precond.update_many(states, g, step, ctx)
                updated = True
            early = _sharp_at_commit(spec, base, precond, g, states, step, ctx, lr=lr_r, step_scales=step_scales, decay=decay)
        elif momentum_implied(spec, precond, state_dtype) and base.parts_input(g[0]) is not None:
            early = _lmo_in_parts(spec, base, precond, g, states, step, ctx, lr=lr_r, step_scales=step_scales, decay=decay)
        if early is not None:
            return early
    stack, cast = None, None
    if defer is not None:  # deferred buffers: d is formed in the stack itself (``momentum.apply_momentum``)
        dtype = g[0].dtype
        into = base.step_input(g[0]) if narrow and spec.mode == "lmo" and isinstance(precond, Identity) else None
        if into is not None and momentum_factor(spec, step) == 1.0:
            dtype, cast = into  # stacked directly in the LMO's narrower input dtype
        stack = torch.empty((len(g), *g[0].shape), dtype=dtype, device=g[0].device)
    d, c = momentum_stage(spec, states=states, grads=g, step=step, defer=defer, probe=not momentum_implied(spec, precond, state_dtype),
                          out=stack, cast=cast)
    if shortcut:
        alpha = entrywise_alpha(lr=lr_r, c=c, step_scales=step_scales)
        if D2 is None:  # no preconditioner: U = c·d
            return BucketStep(d, alpha, decay, None, False, list(d))
        checks = [] if momentum_implied(spec, precond, state_dtype) else list(d)  # d and the state are checked
        return BucketStep(d, alpha, decay, D2, False, checks)
    norm = statistics_stage(precond, base=base, states=states, grads=g, step=step, ctx=ctx, sharded=sharded, update=not updated)
    staged = spec.staged  # staged: the bias correction c scales the step after the stages
    X = stacked_direction(d, c=c, correct=not staged) if stack is None else stack
    if ctx.defer is not None:  # the redone statistics' temporaries are read: check and drop them now
        if spec.momentum != "none":
            d = []
        ctx.defer.end_bucket(", ".join(ctx.names))
    if stack is not None and c != 1.0:  # after the probe: the stack's rows may have been the temporaries
        X.mul_(c)
    U = dual_map(norm, X, mode=spec.mode, narrow=narrow)
    if collect is not None:
        collect.append(Direction(ctx.params, states, X, U, step_scales))
    if staged:
        return _staged(spec, U, views=views, grads=raw, states=states, step=step, lr=lr_r * c, step_scales=step_scales, decay=decay)
    U, alpha = budget_stage(U, lr=lr_r, step_scales=step_scales)
    if U.dtype != views[0].dtype and not (narrow and torch.finfo(U.dtype).bits < torch.finfo(views[0].dtype).bits):
        U = U.to(views[0].dtype)
    checks = [U, *g] if spec.momentum == "none" and not precond.covers_gradient else [U]  # d = g is in no state (and the stack may be overwritten)
    return BucketStep(U.unbind(0), alpha, decay, None, True, checks)


def _lmo_in_parts(spec: RuleSpec, base: Norm, precond: Preconditioner, g: list[Tensor], states: Sequence[dict[str, Any]], step: int,
                  ctx: StepContext, *, lr: float, step_scales: Sequence[float], decay: Any) -> BucketStep | None:
    """``_in_parts`` with the direction formed a matrix at a time in the LMO's narrower input dtype
    (``Norm.parts_input``): X_i = narrow(D_i⁻¹ ⊙ c·B'_i) from one-matrix temporaries B'_i (the new
    momentum buffer, d itself for these kinds) and D_i (``Preconditioner.diagonal_rows``), so no
    float32 stack of the bucket exists; the buffers are redone in place at the commit
    (``momentum.buffers_at_commit``; their finiteness is implied by the statistics'). The same
    kernels on the same values: the bits of the float32 stack narrowed by the LMO itself. None:
    ``diagonal_rows`` not offered (nothing done)."""
    dtype, cast = base.parts_input(g[0])  # type: ignore[misc]
    X = torch.empty((len(g), *g[0].shape), dtype=dtype, device=g[0].device)
    c = momentum_factor(spec, step)
    bufs = [s[momentum_key(spec.momentum)] for s in states]

    def narrowed(i: int, D: Tensor) -> None:  # X_i ← narrow(D_i⁻¹ ⊙ c·B'_i)
        row = new_buffer(spec.momentum, spec.beta, spec.dampening, bufs[i], g[i], step)
        cast(X[i], (row.mul_(c) if c != 1.0 else row).div_(D))

    rows = precond.diagonal_rows(states, g, step, ctx, narrowed)
    if rows is None:
        return None
    buffers_at_commit(spec.momentum, spec.beta, spec.dampening, states, g, step, ctx.defer)
    return _in_parts(X, rows, base, ctx, lr=lr, step_scales=step_scales, decay=decay, dtype=g[0].dtype)


def _in_parts(X: Tensor, rows: tuple[Any, float], base: Norm, ctx: StepContext, *, lr: float, step_scales: Sequence[float],
              decay: Any, dtype: torch.dtype) -> BucketStep:
    """A D-preconditioned LMO, U = D⁻¹ ⊙ lmo(D⁻¹ ⊙ c·X) (``DNorm``), held in parts until the commit.
    X holds D⁻¹ ⊙ c·X already, narrowed (``_lmo_in_parts``); the base's ``lmo_parts`` orthogonalizes
    it in place and gives O and its scale s; D_i is formed again from the committed statistics when
    the write is applied (``PendingWrite.rows``): only O is held. The same kernels on the same
    values as ``DNorm.lmo_step``: the same bits. The check bounds max |O| so that
    |U| ≤ max|O|·s / lower stays below half the largest value of U's ``dtype``."""
    divide, lower = rows
    ctx.defer.end_bucket(", ".join(ctx.names))  # probe the statistics' temporaries (the rows are already dropped)
    parts = base.lmo_parts(X)
    assert parts is not None  # ``parts_input`` said so
    O, s = parts
    _, alpha = budget_stage(O, lr=lr, step_scales=step_scales)
    update = O.unbind(0)
    return BucketStep(update, alpha, decay, None, True, list(update), s, divide, torch.finfo(dtype).max * lower / (2.0 * s))


def _decay(spec: RuleSpec, precond: Preconditioner, views: list[Tensor], lr: Scalar, decay_budgets: Sequence[float] | None) -> Any:
    """The decoupled weight decay's factor (None without; schedule-free decays at y itself, ``update_stages.schedule_free``)."""
    if spec.weight_decay and not spec.coupled and spec.momentum != "schedule_free":
        return decay_factor(lr=lr, weight_decay=spec.weight_decay * precond.decay_scale(views[0].shape), decay_budgets=decay_budgets)
    return None


def _sharp_at_commit(spec: RuleSpec, base: Norm, precond: Preconditioner, g: list[Tensor], states: Sequence[dict[str, Any]],
                     step: int, ctx: StepContext, *, lr: float, step_scales: Sequence[float], decay: Any) -> BucketStep | None:
    """U = N.sharp(c · stack B') formed at the commit (``PendingWrite.form``) from the committed
    momentum B' (redone in place there: ``momentum.buffers_at_commit``) and statistics, when the
    preconditioner bounds its sharp (``Preconditioner.sharp_growth``, called after its statistics
    are updated) and that bound proves U finite: growth · c · max|B'| ≤ M/4, with max|B'| bounded
    from max|B| and max|g| (one read; B's bound is then kept for the next step, valid while only
    the optimizer writes B, as ``running_bounds`` assumes). Nothing of the
    bucket's size is held until the commit. The same kernels on the same values: the bits of
    forming U now. None: not offered or not proved (the caller forms U now)."""
    offer = precond.sharp_growth(base, states, g[0].shape, step, ctx.defer)
    if offer is None:
        return None
    growth, premises = offer
    bufs = [s[momentum_key(spec.momentum)] for s in states]
    a = ctx.defer.known_max([*bufs, *g])
    dtype = g[0].dtype
    kept = 1.0 - (spec.dampening if spec.momentum == "heavy_ball" else spec.beta)  # B' = β B + kept·g (lerp: kept = 1 − β)
    bound = accumulation_bound(a, spec.beta, kept, a, 1, dtype)
    c = momentum_factor(spec, step)
    if bound is None or growth * c * bound * (1.0 + 4 * torch.finfo(dtype).eps) > torch.finfo(dtype).max / 4:
        return None
    buffers_at_commit(spec.momentum, spec.beta, spec.dampening, states, g, step, ctx.defer)
    ctx.defer.later(lambda: ctx.defer.record(bufs, bound))  # after the redo: B' is within ``bound``

    def form() -> list[Tensor]:
        X = torch.stack(bufs)
        if c != 1.0:
            X.mul_(c)
        return list(dual_map(precond.norm(base, states, step), X, mode="sharp", narrow=True).unbind(0))

    return BucketStep([], -lr * step_scales[0], decay, None, True, list(premises), form=form)


def _entrywise(spec: RuleSpec, base: Norm, views: list[Tensor], state_dtype: torch.dtype, step_scales: Sequence[float],
               lr: Scalar, sharded: Any, collect: Any) -> bool:
    """Whether the bucket may skip the stack (the module docstring's entrywise shortcut)."""
    return (spec.mode == "sharp" and type(base) is Frobenius and views[0].dtype == state_dtype
            and (all(s == step_scales[0] for s in step_scales) or not isinstance(lr, Tensor))
            and (sharded is None or not sharded.whole_statistics) and not spec.staged and collect is None)


def _staged(spec: RuleSpec, U: Tensor, *, views: list[Tensor], grads: Sequence[Tensor], states: Sequence[dict[str, Any]],
            step: int, lr: Scalar, step_scales: Sequence[float], decay: Any) -> BucketStep:
    """The stages after U (``update_stages``) and the parameter change they give; ``lr``: η_r·c."""
    uniform = all(s == step_scales[0] for s in step_scales)
    steps, fresh = after_direction(spec, U, views, grads, states, step, decay)
    if not uniform:
        steps, fresh = torch._foreach_mul(steps, [float(s) for s in step_scales]), True
    if steps[0].dtype != views[0].dtype:
        steps, fresh = [u.to(views[0].dtype) for u in steps], True
    if spec.momentum == "schedule_free":
        update, y_decay = schedule_free(spec, views, steps, states, step, lr * (step_scales[0] if uniform else 1.0))
        return BucketStep(update, 1.0, y_decay, None, True, list(update))
    return BucketStep(steps, -lr * step_scales[0] if uniform else -lr, decay, None, fresh, list(steps))


_copies = itertools.count()


def compiled_update_bucket(options: dict[str, Any]) -> Any:
    """``update_bucket`` under ``torch.compile(**options)``, as a copy with its own code object.

    torch.compile caches graphs per code object (8 by default); one copy per bucket keeps each
    bucket's graphs apart, so a model with many bucket shapes neither recompiles step after step
    nor runs out of cache entries.
    """
    code = update_bucket.__code__.replace(co_name=f"update_bucket_{next(_copies)}")
    fn = types.FunctionType(code, update_bucket.__globals__, code.co_name, update_bucket.__defaults__, update_bucket.__closure__)
    fn.__kwdefaults__ = update_bucket.__kwdefaults__
    return torch.compile(fn, **options)
