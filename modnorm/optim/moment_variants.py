"""Second-moment variants: AMSGrad's running maximum and RMSprop's (centred) EMA.

Both are ``SecondMoment`` preconditioners (D² = √V̂ + ε with a Frobenius base in sharp
mode) whose V is another statistic of the gradients:

- ``"amsgrad"``:  V_t = β2 V_{t-1} + (1-β2) G²,  V^max_t = max(V^max_{t-1}, V_t);
  D² = √V^max / √(1-β2^t) + ε  (torch.optim.AdamW(amsgrad=True); state ``max_exp_avg_sq``).
- ``"rmsprop"``:  V_t = α V_{t-1} + (1-α) G², no bias correction; ``centered=True`` also keeps
  ḡ_t = α ḡ_{t-1} + (1-α) G and uses V − ḡ² (torch.optim.RMSprop; state ``square_avg``, ``grad_avg``).

RMSprop's momentum acts on the preconditioned direction (buffer ← μ·buffer + G/D²): that
is the rule's ``momentum_on="update"``, not part of the preconditioner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .diagonal import SecondMoment
from .hparams import Beta, require
from .preconditioner import StepContext

__all__ = ["AMSGrad", "RMSprop"]


class AMSGrad(SecondMoment):
    """Adam's D built from the running maximum of the bias-uncorrected EMA V."""

    def __init__(self, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(beta2=beta2, eps=eps)

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        state = super().init_state(param, state_dtype)
        state["max_exp_avg_sq"] = torch.zeros_like(state[self.key])
        return state

    def update_many(self, states: Sequence[dict[str, Tensor]], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        super().update_many(states, grads, step, ctx)
        new = torch._foreach_maximum([s["max_exp_avg_sq"] for s in states], [s[self.key] for s in states])
        for s, m in zip(states, new):  # out of place, as the built-ins (a failed step is discarded)
            s["max_exp_avg_sq"] = m

    def second_moment(self, states: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        return [s["max_exp_avg_sq"] for s in states]

    def __repr__(self) -> str:
        return f"AMSGrad(beta2={self.beta2}, eps={self.eps})"


class RMSprop(SecondMoment):
    """RMSprop's D² = √V + ε (or √(V − ḡ²) + ε when centred), V an uncorrected EMA with factor α."""

    def __init__(self, alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> None:
        require("RMSprop", "alpha", alpha, Beta)
        super().__init__(beta2=alpha, eps=eps, bias_correction=False)
        self.key = "square_avg"
        self.centered = bool(centered)

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        state = super().init_state(param, state_dtype)
        if self.centered:
            state["grad_avg"] = torch.zeros_like(state[self.key])
        return state

    def update_many(self, states: Sequence[dict[str, Tensor]], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        super().update_many(states, grads, step, ctx)
        if self.centered:
            new = torch._foreach_lerp([s["grad_avg"] for s in states], list(grads), 1.0 - self.beta2)
            for s, m in zip(states, new):
                s["grad_avg"] = m

    def second_moment(self, states: Sequence[dict[str, Tensor]]) -> list[Tensor]:
        Vs = [s[self.key] for s in states]
        if not self.centered:
            return Vs
        means = [s["grad_avg"] for s in states]
        return torch._foreach_addcmul(Vs, means, means, value=-1.0)

    def __repr__(self) -> str:
        return f"RMSprop(alpha={self.beta2}, eps={self.eps}, centered={self.centered})"
