"""In-place fused steps for the entrywise rules: torch's fused Adam/AdamW/Adagrad/SGD kernels.

A bucket whose rule is one of these (Frobenius base in sharp mode, nothing staged; see
``fused_kind``) skips the compute-aside transaction (``transaction.py``) when one reduction
over its inputs *proves* that the in-place step cannot make a non-finite value. The kernels
compute the same mathematics as the pipeline (``update.update_bucket``'s entrywise shortcut)
in one pass per tensor, with torch's fused rounding (bit for bit ``torch.optim``'s
``fused=True``). The kernels run only when the whole step commits (after the transaction's
own check), so a refused step still changes nothing.

The precondition (M = the largest finite value of the dtype, amax = max |x| over a tensor,
NaN when it holds one; g' = ∓g + λ_c W the gradient with coupled decay λ_c; per parameter)::

    a = amax(g) + λ_c · amax(W) ≤ M / 4            (W read only when λ_c > 0), and
    adam, adamw:  a ≤ √M / 4  and  1 − β2 ≥ 64 · eps(dtype)
                  (V' = β2 V + (1−β2) g'² is then < M for any finite V: a convex combination
                  whose weight on V falls short of 1 by more than the rounding; M' = lerp(M, g') too)
    adagrad:      S⁺ = (S̄ + a²)(1 + 8 eps) ≤ M / 4              (S' = S + g'²)
    sgd:          B⁺ = (β B̄ + |1 − τ| a)(1 + 8 eps) ≤ M / 4      (B' = β B + (1−τ) g'; B⁺ = a(1 + 8 eps)
                  on the first step, where B' = g'; with Nesterov d = g' + β B' ≤ M / 2)

S̄, B̄ are running upper bounds of max |S|, max |B|: the S⁺, B⁺ of the parameter's previous
fused step, kept while its state tensor is the same object (``running_bounds``), else read (amax)
with the gradients. Everything is read in one batch (``torch.aminmax`` per tensor, one
``tolist``); a NaN or ±inf anywhere fails the comparisons. This proves what the
transaction's check of the same step proves (finite new state and direction; the parameters
themselves are checked by neither). When it fails, the bucket takes the transactional path,
which refuses or skips the step exactly as before, naming the parameters.

Assumptions: the state a step starts from is finite, and Adagrad's sum and SGD's buffer are
changed only by this optimizer. Both hold for state this optimizer made (initialised, or
committed by a checked or proven step), for state loaded with ``load_state_dict`` (which
refuses non-finite state) and for a state tensor assigned anew (a new object is read again).
Writing into ``optimizer.state`` tensors in place is not seen: such writes must keep them
finite (and, for those two, not larger).

Taken only on the CPU, for float32/float64 parameters with state of the same dtype, dense
contiguous tensors, no global step-size stage, no ``compile``; everything else (16-bit
parameters with fp32 state, DTensor shards, accelerators, preconditioner subclasses) uses the
transactional path.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..norms import Frobenius, Norm
from .diagonal import SecondMoment
from .moment_variants import AMSGrad
from .preconditioner import Identity, Preconditioner
from .running_bounds import RunningBounds, abs_maxima
from .update import RuleSpec

__all__ = ["FusedBucket", "FusedStep", "fused_kind", "abs_maxima", "admit", "advance"]

_DTYPES = (torch.float32, torch.float64)


def fused_kind(spec: RuleSpec, base: Norm, precond: Preconditioner, dtype: torch.dtype, state_dtype: torch.dtype) -> str | None:
    """"adam", "adamw", "adagrad" or "sgd" when a bucket's rule is exactly what that fused kernel
    computes (and the dtypes allow it); None otherwise (the module docstring)."""
    if (spec.mode != "sharp" or type(base) is not Frobenius or spec.staged or spec.momentum_on != "gradient"
            or dtype != state_dtype or dtype not in _DTYPES):
        return None
    decoupled = bool(spec.weight_decay) and not spec.coupled  # the SGD and Adagrad kernels only add λW to the gradient
    if type(precond) is Identity:
        ok = spec.momentum in ("none", "heavy_ball", "nesterov") and not spec.lr_decay and not decoupled
        return "sgd" if ok else None
    if type(precond) not in (SecondMoment, AMSGrad):
        return None
    p = precond
    if not (p.inner == 0.5 and p.outer == 0.5 and p.eps > 0 and not p.normalize and p.warmup_steps == 0):
        return None
    if p.accumulate == "sum":
        return "adagrad" if spec.momentum == "none" and not decoupled else None
    eps = torch.finfo(dtype).eps
    if spec.momentum != "adam_ema" or spec.lr_decay or not p.bias_correction or 1.0 - p.beta2 < 64 * eps:
        return None
    return "adam" if spec.coupled and spec.weight_decay else "adamw"


_PLAIN = (Tensor, torch.nn.Parameter)


def _state_fits(states: Sequence[dict[str, Any]], dtype: torch.dtype) -> list[list[tuple[str, Tensor]]] | None:
    """Each state's tensors (but the step counter) as (key, tensor), when all are dense contiguous
    CPU tensors of ``dtype`` (state is made like its parameter, or moved to its device and dtype
    when loaded); None otherwise."""
    out = [[(k, v) for k, v in s.items() if k != "step" and isinstance(v, Tensor)] for s in states]
    fits = all(v.is_cpu and v.dtype == dtype and v.is_contiguous() for pairs in out for _, v in pairs)
    return out if fits else None


@dataclass(eq=False)
class FusedBucket:
    """What a bucket's fused step keeps from one step to the next: the kernel, the parameters,
    their state dicts (new dicts on a first step) and the state tensors the kernel takes (checked
    once, when the bucket is formed: ``unchanged`` says whether the dicts still hold them), the rule
    and the per-parameter factors. ``step`` makes a step's ``FusedStep`` from the current gradients
    and lr, re-checking what can change between steps."""

    kind: str
    params: list[Tensor]
    states: list[dict[str, Any]]
    fresh: list[bool]
    tensors: list[list[tuple[str, Tensor]]]  # per parameter, its state's (key, tensor) pairs the checks passed
    dtype: torch.dtype
    spec: RuleSpec
    precond: Preconditioner
    maximize: bool
    step_scales: list[float]
    decay_budgets: list[float]
    calls: list[tuple[float, float, list[int]]] = field(init=False)  # (step scale, decay budget, members): one kernel call each

    def __post_init__(self) -> None:
        groups: dict[tuple[float, float], list[int]] = defaultdict(list)
        for i in reversed(range(len(self.params))):  # last-checked tensors first: their gradients may still be cached
            groups[self.step_scales[i], self.decay_budgets[i]].append(i)
        self.calls = [(scale, budget, idx) for (scale, budget), idx in groups.items()]

    @classmethod
    def of(cls, members: Sequence[tuple[Tensor, Any, dict[str, Any] | None]], maximize: bool,
           state_dtype: Callable[[Tensor], torch.dtype], init_state: Callable[..., None]) -> FusedBucket | None:
        """The bucket, or None when its rule is not a fused kernel's, or its parameters or state do not
        fit one. ``members``: (parameter, its ``Plan``, its state or None before its first step);
        ``init_state(p, plan, state, None)`` fills a first step's state."""
        p0, plan = members[0][0], members[0][1]
        kind = fused_kind(plan.spec, plan.norm, plan.precond, p0.dtype, state_dtype(p0))
        if kind is None:
            return None
        states = []
        for p, pl, original in members:
            if original is None:
                original = {}
                init_state(p, pl, original, None)
            states.append(original)
        params = [m[0] for m in members]
        tensors = _state_fits(states, p0.dtype) if all(type(p) in _PLAIN for p in params) else None  # no subclass (DTensor)
        budgets = [m[1].budget for m in members]
        if tensors is None or not all(math.isfinite(b) for b in budgets):
            return None
        return cls(kind, params, states, [m[2] is None for m in members], tensors, p0.dtype, plan.spec, plan.precond, maximize,
                   [m[1].step_scale for m in members], budgets)

    def unchanged(self) -> bool:
        """Whether every state dict still holds the tensors that were checked."""
        return all(s.get(k) is v for s, pairs in zip(self.states, self.tensors) for k, v in pairs)

    def step(self, step: int, lr: Any, running: RunningBounds) -> FusedStep | None:
        """This step's ``FusedStep``; None when lr is a tensor off the CPU, lr × a step scale is not a
        positive finite number, or a parameter or gradient does not fit the kernel: dense contiguous
        CPU tensors of the state's dtype, a gradient of its parameter's shape (the parameters as the
        pipeline sees them: 0-D as (1,))."""
        if isinstance(lr, Tensor) and lr.device.type != "cpu":
            return None
        lr = float(lr)
        if not all(math.isfinite(lr * scale) and scale > 0 for scale, _, _ in self.calls):
            return None
        dtype, params, grads = self.dtype, self.params, [p.grad for p in self.params]
        if not all(p.is_cpu and p.dtype == dtype and p.is_contiguous() and g.is_cpu and g.dtype == dtype and g.is_contiguous()
                   and g.shape == p.shape for p, g in zip(params, grads)):
            return None
        views = [p.view(1) if p.ndim == 0 else p for p in params]
        grads = [g.view(1) if g.ndim == 0 else g for g in grads]
        out = FusedStep(self.kind, params, views, grads, self.states, self.fresh, self.spec, self.precond, step, lr,
                        self.maximize, self.calls)
        out.bound(running)
        return out


@dataclass(eq=False)
class FusedStep:
    """One bucket's step through a fused kernel: the parameters (as the pipeline sees them: 0-D
    as (1,)), their gradients, their state dicts (new dicts on a first step), and the rule."""

    kind: str
    params: list[Tensor]  # the optimizer's parameters (state keys)
    views: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    fresh: list[bool]
    spec: RuleSpec
    precond: Preconditioner
    step: int
    lr: float
    maximize: bool
    calls: list[tuple[float, float, list[int]]]  # (step scale, decay budget, members): one kernel call each
    known: list[float | None] = field(default_factory=list)  # the running bound of each bounded state tensor (None: read it)
    probes: list[Tensor] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)  # the bounds after this step (set by ``admits``)

    def bound(self, running: RunningBounds) -> None:
        """Set ``known`` from the running bounds and ``probes``: what the precondition reads."""
        key = self._bounded_key()
        if key is not None:
            for st in self.states:
                value = 0.0 if self.step == 1 and self.kind == "sgd" else running.known(st[key])  # a first SGD step does not read B
                self.known.append(value)
        self.probes = self.grads + (self.views if self._coupled() else [])
        self.probes += [st[key] for st, b in zip(self.states, self.known) if b is None]  # type: ignore[index]

    # ------------------------------------------------------------------ the precondition

    def _coupled(self) -> float:
        """λ_c, the coupled weight decay added to the gradient (0 when decay is decoupled)."""
        return self.spec.weight_decay if self.spec.coupled else 0.0

    def _momentum(self) -> float:
        return self.spec.beta if self.spec.momentum != "none" else 0.0

    def _bounded_key(self) -> str | None:
        """The state key whose growth the precondition bounds: Adagrad's sum, SGD's momentum buffer."""
        if self.kind == "adagrad":
            return self.precond.key  # type: ignore[attr-defined]
        return "momentum_buffer" if self.kind == "sgd" and self._momentum() else None

    def admits(self, maxima: Sequence[float]) -> bool:
        """Whether the maxima of ``probes`` prove the step finite (module docstring); sets ``bounds``."""
        n = len(self.grads)
        x = [math.inf if math.isnan(m) else m for m in maxima]
        a = x[:n]
        if self._coupled():
            a = [g + self._coupled() * w for g, w in zip(a, x[n:2 * n])]
        info = torch.finfo(self.views[0].dtype)
        if not all(v <= info.max / 4 for v in a):
            return False
        if self.kind in ("adam", "adamw"):
            return all(v <= math.sqrt(info.max) / 4 for v in a)
        if self._bounded_key() is None:
            return True
        measured = iter(x[2 * n if self._coupled() else n:])
        old = [b if b is not None else next(measured) for b in self.known]
        grow = 1.0 + 8 * info.eps  # the kernel's rounding, so that the running bound stays above the values
        if self.kind == "adagrad":
            self.bounds = [(s + v * v) * grow for s, v in zip(old, a)]
        else:
            beta, coef = (0.0, 1.0) if self.step == 1 else (self._momentum(), abs(1.0 - self.spec.dampening))  # B_1 = g'
            self.bounds = [(beta * s + coef * v) * grow for s, v in zip(old, a)]
        return all(b <= info.max / 4 for b in self.bounds)

    # ------------------------------------------------------------------ the step

    def run(self, state: dict[Tensor, Any], running: RunningBounds) -> None:
        """Update parameters and state in place (one kernel call per distinct step scale and decay
        budget; the step counters are advanced before); first-step state dicts join ``state``, the
        new bounds ``running``. Last-checked tensors first: their gradients may still be cached."""
        for p, s, new in zip(self.params, self.states, self.fresh):
            if new:
                state[p] = s
        key = self._bounded_key()
        if key is not None:
            for s, b in zip(self.states, self.bounds):
                running.record([s[key]], b)
        steps = [s["step"] for s in self.states]
        lr_r = self.lr * self.spec.lr_ratio
        for scale, budget, idx in self.calls:
            lr = lr_r * scale
            pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
            params, grads, states = pick(self.views), pick(self.grads), pick(self.states)
            if self.kind == "sgd":
                beta = self._momentum()
                torch._fused_sgd_(params, grads, [s["momentum_buffer"] for s in states] if beta else [],
                                  weight_decay=self._coupled(), momentum=beta, lr=lr, dampening=self.spec.dampening,
                                  nesterov=self.spec.momentum == "nesterov", maximize=self.maximize, is_first_step=self.step == 1)
            elif self.kind == "adagrad":
                torch._fused_adagrad_(params, grads, [s[self.precond.key] for s in states], pick(steps),  # type: ignore[attr-defined]
                                      lr=lr, lr_decay=self.spec.lr_decay, weight_decay=self._coupled(),
                                      eps=self.precond.eps, maximize=self.maximize)  # type: ignore[attr-defined]
            else:
                self._adam(params, grads, states, pick(steps), lr, budget / scale)

    def _adam(self, params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], steps: list[Tensor], lr: float,
              decay_ratio: float) -> None:
        """Adam (coupled decay λ: g + λW) or AdamW (W ← W(1 − lr·λ·b/s), the pipeline's 1 − η_r·b·λ·decay_scale)."""
        p: Any = self.precond
        amsgrad = type(p) is AMSGrad
        common = dict(lr=lr, beta1=self.spec.beta, beta2=p.beta2, eps=p.eps, amsgrad=amsgrad, maximize=self.maximize)
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s[p.key] for s in states]
        maxes = [s["max_exp_avg_sq"] for s in states] if amsgrad else []
        if self.kind == "adam":
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, maxes, steps, weight_decay=self.spec.weight_decay, **common)
            return
        wd = self.spec.weight_decay * p.decay_scale(tuple(params[0].shape)) * decay_ratio if not self.spec.coupled else 0.0
        torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, maxes, steps, weight_decay=wd, **common)


def advance(steps: Sequence[FusedStep]) -> None:
    """Advance the step counters of every parameter of ``steps`` by one (one foreach add of a 0-D
    one: on the CPU a third of the time of adding the number 1.0, the same sums)."""
    counters = [s["step"] for f in steps for s in f.states]
    if counters:
        one = torch.ones((), dtype=counters[0].dtype)
        torch._foreach_add_(counters, [one] * len(counters))


def admit(steps: Sequence[FusedStep]) -> tuple[list[FusedStep], list[FusedStep]]:
    """(admitted, refused): one batched reduction over every step's probes decides each."""
    maxima = abs_maxima([t for s in steps for t in s.probes])
    admitted, refused, at = [], [], 0
    for s in steps:
        n = len(s.probes)
        (admitted if s.admits(maxima[at:at + n]) else refused).append(s)
        at += n
    return admitted, refused
