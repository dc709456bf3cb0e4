"""KL-Shampoo (Lin et al. 2025): Kronecker factors that minimize a KL divergence.

Each factor is accumulated from the gradient whitened by the other factor:
S_a ← β2 S_a + (1-β2)/n · G S_b⁻¹ Gᵀ, S_b ← β2 S_b + (1-β2)/m · Gᵀ S_a⁻¹ G (both from the
previous factors), and the Frobenius sharp is S_a^{-p} G S_b^{-p} (p = 1/2: the paper's
S_a^{-1/2} G S_b^{-1/2}). The paper writes the rate of the new term as β2; here β2 is the
decay (paper's 1 - β2).

Two schedules:

- default: S_a = S_b = ``init``·I at the start; S⁻¹ is the exact (S + εI)⁻¹ of the factor's
  eigendecomposition, refreshed by ``eigh`` every k steps (steps 1, 1+k, …);
  L⁻¹ = (S_a + εI)^{-p/2}, R⁻¹ = (S_b + εI)^{-p/2}.
- ``reference=True``: the authors' published schedule. The first step only sets
  S = (1-β2)/n · G Gᵀ (resp. /m · Gᵀ G), Q = eigh(S) (eigenvalues descending) and the
  eigenvalue estimates d = ``init`` (no update). Each later step t uses S⁻¹ ≈ Q diag(1/d) Qᵀ
  in the factor update, then tracks d ← β2 d + (1-β2) diag(Qᵀ new-term Q), i.e.
  d_a ← β2 d_a + (1-β2)·mean_j (Q_aᵀ G Q_b)²_ij / d_b,j (and alike for d_b), with d^{-1/2}
  clamped at c = max(10, min(dim, 4000)) (d ≥ 1/c²); the basis is refreshed after steps
  k, 2k, … by one power iteration and a QR decomposition, Q ← qr(S Q). The step's norm
  uses Q and d as of before its gradient: sharp Q_a [(Q_aᵀ M Q_b) / ((d_a d_bᵀ)^p + ε)] Q_bᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..norms import Norm
from ..preconditioned import DNorm, LRNorm
from .matrix_statistics import (
    _check_hp,
    _check_matrix,
    _check_root_eps,
    _copy_into,
    _due,
    _eigh,
    _power_of_eigs,
    _stack,
    _stacked_grads,
    eigenbasis,
)
from .hparams import Positive, require
from .preconditioner import Preconditioner, State, StepContext

__all__ = ["KLShampoo"]


def _clamp_floor(dim: int) -> float:
    """The reference's smallest eigenvalue estimate 1/c², c = max(10, min(dim, 4000)) bounding d^{-1/2}."""
    return 1.0 / float(max(10, min(dim, 4000))) ** 2


class KLShampoo(Preconditioner):
    """KL-Shampoo factors (Lin et al. 2025) with L⁻¹ = (S_a + εI)^{-p/2}, R⁻¹ = (S_b + εI)^{-p/2}.

    Update, from the factors' cached eigendecompositions (refreshed every k steps):
    S_a ← β2 S_a + (1-β2)/n · G (S_b + εI)⁻¹ Gᵀ and S_b ← β2 S_b + (1-β2)/m · Gᵀ (S_a + εI)⁻¹ G,
    with S_a = S_b = ``init``·I at the start. The Frobenius sharp is S_a^{-p} G S_b^{-p}:
    p = 1/2 (default) is the paper's update, p = 1 the affine-equivariant S_a⁻¹ G S_b⁻¹.
    State: the factors and their eigendecompositions (Q, λ) per side.

    ``reference=True`` follows the authors' published code: a statistics-only first step
    (S from G₁, Q = eigh(S), eigenvalue estimates d = ``init``), then S⁻¹ ≈ Q diag(1/d) Qᵀ
    with d tracked every step as the EMA of diag(Qᵀ new-term Q) (d^{-1/2} clamped at
    max(10, min(dim, 4000))), Q refreshed after steps k, 2k, … by Q ← qr(S Q), and the sharp
    Q_a [(Q_aᵀ M Q_b) / ((d_a d_bᵀ)^p + ε)] Q_bᵀ with ε outside the root (no damping inside S).
    """

    updates_in_place = False
    covers_gradient = True
    exact_state = frozenset({"Qa", "Qb", "la", "lb"})  # eigenbases and eigenvalues: never rounded to 16 bits

    def __init__(
        self,
        beta2: float = 0.95,
        eps: float = 1e-12,
        power: float = 0.5,
        init: float = 1.0,
        precondition_frequency: int = 1,
        root_dtype: torch.dtype = torch.float32,
        reference: bool = False,
    ) -> None:
        _check_hp("KLShampoo", beta2, eps, precondition_frequency, root_dtype)
        require("KLShampoo", "power", power, Positive)
        require("KLShampoo", "init", init, Positive)  # the factors' initial multiple of I
        if not isinstance(reference, bool):
            raise TypeError(f"KLShampoo: reference must be a bool, got {reference!r}")
        self.beta2, self.eps, self.power, self.init = float(beta2), float(eps), float(power), float(init)
        self.precondition_frequency, self.root_dtype, self.reference = precondition_frequency, root_dtype, reference
        self.warmup_steps = 1 if reference else 0
        if reference:
            self.exact_state = KLShampoo.exact_state | {"la_step", "lb_step"}

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        _check_matrix("KLShampoo", param)
        m, n = param.shape
        kw = {"dtype": state_dtype, "device": param.device}
        start = 0.0 if self.reference else self.init  # the reference's factors start at 0, its d at init
        state = {
            "Sa": torch.eye(m, **kw) * start,
            "Sb": torch.eye(n, **kw) * start,
            "Qa": torch.eye(m, **kw),
            "la": torch.full((m,), self.init, **kw),
            "Qb": torch.eye(n, **kw),
            "lb": torch.full((n,), self.init, **kw),
        }
        if self.reference:  # the estimates the current step's norm uses (before its gradient)
            state["la_step"], state["lb_step"] = state["la"].clone(), state["lb"].clone()
        return state

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        _check_root_eps("KLShampoo", self.eps, max(self.power, 1.0), 1, (state_dtype, self.root_dtype))  # (S + εI)⁻¹ whitens

    def _whitened_outer(self, X: Tensor, Q: Tensor, inv_lam: Tensor) -> Tensor:
        """X Q diag(inv_lam) Qᵀ Xᵀ: X S⁻¹ Xᵀ for S = Q diag(λ) Qᵀ."""
        Y = X @ Q
        return (Y * inv_lam.unsqueeze(-2)) @ Y.mT

    def _accumulate(self, states: Sequence[State], G: Tensor, inv_a: Tensor, inv_b: Tensor) -> None:
        m, n = G.shape[-2:]
        new_a = self._whitened_outer(G, _stack(states, "Qb"), inv_b) / n
        new_b = self._whitened_outer(G.mT, _stack(states, "Qa"), inv_a) / m
        _copy_into(states, "Sa", torch.lerp(_stack(states, "Sa"), new_a, 1.0 - self.beta2))
        _copy_into(states, "Sb", torch.lerp(_stack(states, "Sb"), new_b, 1.0 - self.beta2))

    def update(self, state: State, grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, None)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        G = _stacked_grads(grads, states[0]["Sa"].dtype)
        if self.reference:
            self._reference_update(states, G, step)
            return
        inv = {k: _power_of_eigs(_stack(states, k), 1.0, self.eps) for k in ("la", "lb")}
        self._accumulate(states, G, inv["la"], inv["lb"])
        if _due(step, self.precondition_frequency):
            for S, Q, lam in (("Sa", "Qa", "la"), ("Sb", "Qb", "lb")):
                l, V = _eigh(_stack(states, S), self.root_dtype)
                _copy_into(states, Q, V)
                _copy_into(states, lam, l)

    def _reference_update(self, states: Sequence[State], G: Tensor, step: int) -> None:
        if step <= 0:  # the warm-up step: the factors from G alone and their eigenbases; d stays at init
            self._accumulate(states, G, torch.ones_like(_stack(states, "la")), torch.ones_like(_stack(states, "lb")))
            # (with Q = I and 1/d = 1 the whitened outer products are G Gᵀ and Gᵀ G)
            for S, Q in (("Sa", "Qa"), ("Sb", "Qb")):
                _copy_into(states, Q, eigenbasis(_stack(states, S), self.root_dtype))
            return
        if step > 1 and (step - 1) % self.precondition_frequency == 0:  # the refresh due after step t-1
            for S, Q in (("Sa", "Qa"), ("Sb", "Qb")):
                S_, Q_ = _stack(states, S).to(self.root_dtype), _stack(states, Q).to(self.root_dtype)
                _copy_into(states, Q, torch.linalg.qr(S_ @ Q_).Q)
        la, lb = _stack(states, "la"), _stack(states, "lb")
        _copy_into(states, "la_step", la)
        _copy_into(states, "lb_step", lb)
        P2 = (_stack(states, "Qa").mT @ G @ _stack(states, "Qb")).square()  # (Q_aᵀ G Q_b)², before the update
        self._accumulate(states, G, 1.0 / la, 1.0 / lb)
        m, n = G.shape[-2:]
        new_la = torch.lerp(la, (P2 / lb.unsqueeze(-2)).mean(-1), 1.0 - self.beta2).clamp_min(_clamp_floor(m))
        new_lb = torch.lerp(lb, (P2 / la.unsqueeze(-1)).mean(-2), 1.0 - self.beta2).clamp_min(_clamp_floor(n))
        _copy_into(states, "la", new_la)
        _copy_into(states, "lb", new_lb)

    def _inv_root(self, states: Sequence[State], Q: str, lam: str) -> Tensor:
        Qs, ls = _stack(states, Q), _stack(states, lam)
        return (Qs * _power_of_eigs(ls, self.power / 2, self.eps).unsqueeze(-2)) @ Qs.mT

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        if self.reference:  # sharp divides by D² = (d_a d_bᵀ)^p + ε in the eigenbasis
            d = _stack(states, "la_step").unsqueeze(-1) * _stack(states, "lb_step").unsqueeze(-2)
            D = (d.pow(self.power) + self.eps).sqrt()
            return LRNorm(DNorm(base, D, positive=True), L_inv=_stack(states, "Qa"), R_inv=_stack(states, "Qb").mT)
        return LRNorm(base, L_inv=self._inv_root(states, "Qa", "la"), R_inv=self._inv_root(states, "Qb", "lb"))

    def __repr__(self) -> str:
        return (
            f"KLShampoo(beta2={self.beta2}, eps={self.eps}, power={self.power}, "
            f"precondition_frequency={self.precondition_frequency}, reference={self.reference})"
        )
