"""Diagonal second-moment preconditioners: D built from V, the accumulated G ⊙ G.

Statistics (state key ``exp_avg_sq`` for an EMA, ``sum`` for Adagrad's running sum)::

    V_t = β2 V_{t-1} + (1-β2) G_t ⊙ G_t        (accumulate="ema",  V̂ = V_t/(1-β2^t))
    V_t = V_{t-1} + G_t ⊙ G_t                  (accumulate="sum",  V̂ = V_t)

and the D of the D-norm ‖W‖_D = ‖D ⊙ W‖ (Theorem 1: lmo_D(G) = D⁻¹ ⊙ lmo(D⁻¹ ⊙ G)) is

    D = (V̂^inner + ε)^outer

Registered forms (with a Frobenius base, ``sharp`` gives G/D²):

- ``"adam"``:    inner ½, outer ½ → D² = √V̂ + ε: exactly Adam's M̂/(√V̂ + ε).
  MuAdam uses inner 1, outer ¼: D = (V̂ + ε)^¼ inside the spectral LMO.
- ``"sania"``:   inner 1, outer ½ → D = (V̂ + ε)^½: Adam-SANIA's M̂/(V̂ + ε); MuAdam-SANIA.
- ``"adagrad"``: accumulate "sum", inner ½, outer ½ → G/(√ΣG² + ε): torch.optim.Adagrad.

``normalize=True`` divides D by its RMS over each parameter, D / √mean(D²): the D-norm keeps
its shape and the base norm's size, so an LMO step has the base norm's size whatever the
scale of the gradients (MuAdam's D = V^¼ otherwise makes it ∝ |G|^-½).

ε is added to a fresh tensor each step; V itself is never modified by ε. The new V is a
new tensor assigned to the state key (the old one is not written: a step can be discarded).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..norms import Norm
from ..preconditioned import DNorm
from .hparams import Beta, NonNeg, Positive, require
from .deferred import finiteness_probes
from .preconditioner import Preconditioner, StepContext, check_eps

__all__ = ["SecondMoment", "adam", "sania", "adagrad"]


def _power_(X: list[Tensor], p: float) -> list[Tensor]:
    """X ← X**p in place, with the common exponents as exact root operations."""
    if p == 0.5:
        torch._foreach_sqrt_(X)
    elif p == 0.25:
        torch._foreach_sqrt_(X)
        torch._foreach_sqrt_(X)
    elif p != 1.0:
        torch._foreach_pow_(X, p)
    return X


class SecondMoment(Preconditioner):
    """D = (V̂^inner + ε)^outer from an EMA (or running sum) V of squared gradients.

    Args:
        beta2: EMA factor of V, 0 ≤ β2 < 1 (ignored when ``accumulate="sum"``).
        eps: ε ≥ 0; ε = 0 is allowed (entries where V̂ = 0 then give a zero direction).
        inner, outer: exponents of D = (V̂^inner + ε)^outer, both > 0.
        accumulate: "ema" (Adam, bias-corrected) or "sum" (Adagrad, no correction).
        initial_accumulator_value: V_0 (Adagrad's option), ≥ 0.
        bias_correction: divide an EMA by 1-β2^t (Adam); False uses V itself (RMSprop, LAMB).
        normalize: divide D by its RMS over each parameter (see the module docstring).

    Subclasses may replace V by another statistic of the gradients (``second_moment``):
    AMSGrad's running maximum, RMSprop's centred V − ḡ² (``moment_variants``).
    """

    updates_in_place = False
    covers_gradient = True

    def __init__(
        self,
        beta2: float = 0.999,
        eps: float = 1e-8,
        inner: float = 0.5,
        outer: float = 0.5,
        accumulate: Literal["ema", "sum"] = "ema",
        initial_accumulator_value: float = 0.0,
        bias_correction: bool = True,
        normalize: bool = False,
    ) -> None:
        beta2, eps = require("SecondMoment", "beta2", beta2, Beta), require("SecondMoment", "eps", eps, NonNeg)
        inner, outer = require("SecondMoment", "inner", inner, Positive), require("SecondMoment", "outer", outer, Positive)
        if accumulate not in ("ema", "sum"):
            raise ValueError(f"SecondMoment: accumulate must be 'ema' or 'sum', got {accumulate!r}")
        require("SecondMoment", "initial_accumulator_value", initial_accumulator_value, NonNeg)
        self.beta2, self.eps, self.inner, self.outer = float(beta2), float(eps), float(inner), float(outer)
        self.accumulate = accumulate
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.key = "exp_avg_sq" if accumulate == "ema" else "sum"
        self.bias_correction = bool(bias_correction)
        self.normalize = bool(normalize)

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        V = torch.full_like(param, self.initial_accumulator_value, dtype=state_dtype, memory_format=torch.preserve_format)
        return {self.key: V}

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        """ε must survive the state dtype: D² = (V̂^inner + ε)^(2·outer) > 0 where V̂ = 0."""
        check_eps(type(self).__name__, self.eps, state_dtype, max(1.0, 2.0 * self.outer))

    def update(self, state: dict[str, Tensor], grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, StepContext(step=step))

    def update_many(self, states: Sequence[dict[str, Tensor]], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        """V ← β2 V + (1−β2) g ⊙ g (or V + g ⊙ g), into new tensors; with ``ctx.defer`` they are
        temporaries for this step's norm, redone in place at the commit (``deferred``)."""
        Vs, gs = [s[self.key] for s in states], list(grads)
        new = self._moments(Vs, gs)
        defer = getattr(ctx, "defer", None)
        if defer is not None:
            defer.replace(states, self.key, new, lambda: self._moments_(Vs, gs))
            return
        for s, v in zip(states, new):
            s[self.key] = v

    def _moments(self, Vs: list[Tensor], gs: list[Tensor]) -> list[Tensor]:
        """The new accumulators β2 V + (1−β2) g ⊙ g (or V + g ⊙ g), as new tensors."""
        if self.accumulate == "ema":
            new = torch._foreach_mul(Vs, self.beta2)
            torch._foreach_addcmul_(new, gs, gs, value=1.0 - self.beta2)
            return new
        return torch._foreach_addcmul(Vs, gs, gs, value=1.0)

    def _moments_(self, Vs: list[Tensor], gs: list[Tensor]) -> None:
        """``_moments`` in place (the same kernels, the same bits)."""
        if self.accumulate == "ema":
            torch._foreach_mul_(Vs, self.beta2)
            torch._foreach_addcmul_(Vs, gs, gs, value=1.0 - self.beta2)
        else:
            torch._foreach_addcmul_(Vs, gs, gs, value=1.0)

    def second_moment(self, states: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        """The statistic V that D is built from (not to be modified): here the accumulator itself."""
        return [s[self.key] for s in states]

    def _powers(self, states: Sequence[dict[str, Tensor]], step: int, outer: float, out: Tensor | None = None) -> list[Tensor]:
        """(V̂^inner + ε)^outer per parameter, as fresh tensors (V is not touched); ``out``: formed in
        its rows (a stack; the same kernels in place, the same bits)."""
        Vs = self.second_moment(states)
        p = self.inner  # V̂^p = V^p / bc^p, as torch's Adam computes √V / √bc
        if out is not None:
            D = list(out.unbind(0))
            torch._foreach_copy_(D, Vs)
            return self._powers_(D, step, outer)
        if p == 1.0 and self.accumulate == "ema" and self.bias_correction:  # V / bc, one pass: the same bits as a copy divided
            return self._powers_(torch._foreach_div(Vs, 1.0 - self.beta2**step), step, outer, inner=False, corrected=True)
        if p == 0.5:
            D = torch._foreach_sqrt(Vs)
        else:
            D = torch._foreach_pow(Vs, p) if p != 1.0 else [v.clone() for v in Vs]
        return self._powers_(D, step, outer, inner=False)

    def _powers_(self, D: list[Tensor], step: int, outer: float, inner: bool = True, corrected: bool = False) -> list[Tensor]:
        """V ← (V̂^inner + ε)^outer in place on copies of V (``inner=False``: V^inner is taken already;
        ``corrected``: so is the bias correction)."""
        p = self.inner
        if inner and p == 0.5:
            torch._foreach_sqrt_(D)
        elif inner and p != 1.0:
            torch._foreach_pow_(D, p)
        if self.accumulate == "ema" and self.bias_correction and not corrected:
            bc = 1.0 - self.beta2**step
            torch._foreach_div_(D, math.sqrt(bc) if p == 0.5 else bc**p)
        if self.eps:
            torch._foreach_add_(D, self.eps)
        return _power_(D, outer)

    def diagonal_rows(self, states: Sequence[dict[str, Tensor]], grads: Sequence[Tensor], step: int, ctx: StepContext,
                      use: Callable[[int, Tensor], None]) -> tuple[Callable[[int], Tensor], float] | None:
        """``Preconditioner.diagonal_rows``: per parameter, the new V_i as a one-matrix temporary,
        probed, turned into D_i in place and handed to ``use``; every V is redone in place at the
        commit. Only for this class's own statistic (not a subclass's), without ``normalize`` and
        with ε > 0."""
        defer = getattr(ctx, "defer", None)
        if (defer is None or self.normalize or not self.eps > 0 or type(self).update_many is not SecondMoment.update_many
                or type(self).second_moment is not SecondMoment.second_moment):
            return None
        Vs, gs = [s[self.key] for s in states], list(grads)
        probes = []
        for i in range(len(Vs)):
            new = self._moments([Vs[i]], [gs[i]])
            probes.append(finiteness_probes(new))
            use(i, self._powers_(new, step, self.outer)[0])
        defer.later(lambda: self._moments_(Vs, gs))
        defer.probe_rows(self.key, probes, lambda: all(bool(self._moments([Vs[i]], [gs[i]])[0].isfinite().all()) for i in range(len(Vs))))
        lower = 0.5 * self.eps**self.outer  # V̂^inner + ε ≥ ε after rounding; the roots lose far less than half
        return (lambda i: self._powers([states[i]], step, self.outer)[0]), lower

    def for_loss_scale(self, scale: float) -> SecondMoment:
        """A copy with ε·scale^(2·inner): V scales as scale², so V̂^inner + ε keeps its units."""
        if scale == 1.0 or not self.eps:
            return self
        other = copy.copy(self)
        other.eps = self.eps * scale ** (2.0 * self.inner)
        return other

    def diagonal(self, states: Sequence[dict[str, Tensor]], step: int) -> Tensor:
        """The stacked D, shape (B, *param_shape); a fresh tensor (V is not touched)."""
        Vs = self.second_moment(states)
        D = torch.empty((len(Vs), *Vs[0].shape), dtype=Vs[0].dtype, device=Vs[0].device)
        self._powers(states, step, self.outer, out=D)
        if self.normalize and D.ndim > 1:
            rms = D.square().mean(dim=tuple(range(1, D.ndim)), keepdim=True).sqrt()
            D = D / rms.clamp_min(torch.finfo(D.dtype).tiny)  # an all-zero D (ε = 0, G = 0) stays 0
        return D

    def entrywise_divisor(self, states: Sequence[dict[str, Tensor]], step: int) -> list[Tensor] | None:
        """D² per parameter when ε > 0 (so D > 0): a Frobenius base's sharp is then d / D²."""
        return self._powers(states, step, 2.0 * self.outer) if self.eps > 0 and not self.normalize else None

    def norm(self, base: Norm, states: Sequence[dict[str, Tensor]], step: int) -> Norm:
        return DNorm(base, self.diagonal(states, step), positive=self.eps > 0)

    def __repr__(self) -> str:
        return (
            f"SecondMoment(beta2={self.beta2}, eps={self.eps}, inner={self.inner}, outer={self.outer}, "
            f"accumulate={self.accumulate!r}, bias_correction={self.bias_correction}"
            + (", normalize=True)" if self.normalize else ")")
        )


def adam(beta2: float = 0.999, eps: float = 1e-8, inner: float = 0.5, outer: float = 0.5, bias_correction: bool = True,
         normalize: bool = False) -> SecondMoment:
    """Adam's D = (√V̂ + ε)^½ (sharp of a Frobenius base → M̂/(√V̂+ε)); MuAdam: inner=1, outer=¼;
    LAMB: ``bias_correction=False``."""
    return SecondMoment(beta2=beta2, eps=eps, inner=inner, outer=outer, bias_correction=bias_correction, normalize=normalize)


def sania(beta2: float = 0.999, eps: float = 1e-8, normalize: bool = False) -> SecondMoment:
    """SANIA's D = (V̂ + ε)^½ (sharp of a Frobenius base → M̂/(V̂+ε))."""
    return SecondMoment(beta2=beta2, eps=eps, inner=1.0, outer=0.5, normalize=normalize)


def adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> SecondMoment:
    """Adagrad's D = (√ΣG² + ε)^½ (sharp of a Frobenius base → G/(√ΣG² + ε))."""
    return SecondMoment(eps=eps, accumulate="sum", initial_accumulator_value=initial_accumulator_value)
