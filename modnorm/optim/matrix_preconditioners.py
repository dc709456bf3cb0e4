"""Matrix (Kronecker-factored) preconditioners: Shampoo, one-sided Shampoo, SOAP, SPlus.

Each keeps left/right statistics of a matrix gradient G (m×n, nn.Linear layout) and
returns an ``LRNorm`` (Theorem 1) around the optimizer's base norm — there is no
separate update formula: the optimizer takes the LMO or sharp of the returned norm.

- ``Shampoo``: A = Σ G Gᵀ, B = Σ Gᵀ G (or EMAs with β2, bias-corrected), refreshed
  eigendecompositions give L⁻¹ = (A + εI)^{-p/2}, R⁻¹ = (B + εI)^{-p/2}; the Frobenius
  sharp is then A^{-p} G B^{-p} (p = 1/4: Shampoo of Gupta et al. 2018).
  ``sides="left"`` keeps R = I (one-sided Shampoo, default p = 1/2: A^{-1/2} G).
- ``KLShampoo`` (KL-minimizing factors, Lin et al. 2025) lives in ``kl_shampoo.py`` and
  shares these helpers.
- ``SOAP``: Shampoo's eigenbases Q_L, Q_R and Adam statistics V of the rotated gradient
  Q_Lᵀ G Q_R; the norm is LRNorm(DNorm(base, D), L = Q_Lᵀ, R = Q_R) with Adam's
  D = (√V̂ + ε)^{1/2} (Vyas et al. 2024), so the Frobenius sharp of a momentum M is
  Q_L [(Q_Lᵀ M Q_R) / (√V̂ + ε)] Q_Rᵀ.
- ``SPlus``: Shampoo's eigenbases around the base norm (Sign for SPlus, Frans et al. 2025):
  lmo(M) = c · Q_L sign(Q_Lᵀ M Q_R) Q_Rᵀ with the shape factor c = 2/(m+n) folded into L.

All statistics live in the per-parameter state dict (tensors only); ``norm`` stacks the
states of same-shape parameters and returns one norm acting on the (B, m, n) stack.
Eigendecompositions use ``torch.linalg.eigh`` in ``root_dtype`` (float32 or float64),
every ``precondition_frequency`` steps (steps 1, 1+k, 1+2k, …).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..norms import Norm
from ..preconditioned import DNorm, LRNorm
from .diagonal import SecondMoment
from .hparams import Frequency, NonNeg, OptionalBeta, Positive, require
from .preconditioner import Preconditioner, State, StepContext, check_eps

__all__ = [
    "Shampoo",
    "SOAP",
    "SPlus",
    "inverse_root",
    "eigenbasis",
]

Sides = Literal["both", "left", "right"]


# ----------------------------------------------------------------------------- helpers


def _check_hp(owner: str, beta2: float | None, eps: float, frequency: int, root_dtype: torch.dtype) -> None:
    require(owner, "beta2", beta2, OptionalBeta)  # None: a running sum
    require(owner, "eps", eps, NonNeg)
    require(owner, "precondition_frequency", frequency, Frequency)
    if root_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{owner}: root_dtype must be torch.float32 or torch.float64, got {root_dtype}")


def _check_matrix(owner: str, param: Tensor) -> None:
    if param.ndim != 2:
        raise ValueError(
            f"{owner}: needs a matrix parameter (d_out, d_in), got shape {tuple(param.shape)}; "
            "route vectors/conv kernels to another preconditioner (e.g. 'adam') or reshape them"
        )


def _check_root_eps(owner: str, eps: float, power: float, sides: int, dtypes: Sequence[torch.dtype]) -> None:
    """The inverse roots reach ε^-power per side: keep their product within √(largest float)."""
    for dtype in dtypes:
        check_eps(owner, eps, dtype, power * sides, max_inverse=torch.finfo(dtype).max ** 0.5)


def _eigh(S: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0) and eigenvectors of a symmetric PSD matrix, in ``dtype``."""
    S = S.to(dtype)
    lam, Q = torch.linalg.eigh(0.5 * (S + S.mT))
    return lam.clamp_min(0.0), Q


def _power_of_eigs(lam: Tensor, power: float, eps: float) -> Tensor:
    """(λ + ε)^(-power); with ε = 0 a pseudo-inverse: eigenvalues ≤ tol map to 0."""
    if eps > 0.0:
        return (lam + eps).pow(-power)
    tol = lam.amax(dim=-1, keepdim=True) * lam.shape[-1] * torch.finfo(lam.dtype).eps
    keep = lam > tol
    return torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).pow(-power), torch.zeros_like(lam))


def inverse_root(S: Tensor, power: float, eps: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(S + εI)^(-power) of a symmetric PSD matrix (batched) by ``torch.linalg.eigh`` in ``dtype``.

    Negative eigenvalues from round-off are clamped to 0; with ε = 0 the pseudo-inverse
    root is returned (null directions map to 0). The result has S's dtype.
    """
    lam, Q = _eigh(S, dtype)
    return ((Q * _power_of_eigs(lam, power, eps).unsqueeze(-2)) @ Q.mT).to(S.dtype)


def eigenbasis(S: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthogonal eigenvectors Q (columns, eigenvalues descending) of a symmetric matrix S."""
    _, Q = _eigh(S, dtype)
    return Q.flip(-1).to(S.dtype)


def _due(step: int, frequency: int) -> bool:
    return (step - 1) % frequency == 0


def _stack(states: Sequence[State], key: str) -> Tensor:
    return torch.stack([s[key] for s in states])


class _Factors:
    """Shampoo's Kronecker statistics A = Σ G Gᵀ, B = Σ Gᵀ G (or EMAs), shared by Shampoo, SOAP and SPlus."""

    def __init__(self, beta2: float | None, sides: Sides) -> None:
        self.beta2, self.sides = beta2, sides

    def init(self, param: Tensor, dtype: torch.dtype) -> State:
        m, n = param.shape
        state: State = {}
        if self.sides in ("both", "left"):
            state["A"] = torch.zeros(m, m, dtype=dtype, device=param.device)
        if self.sides in ("both", "right"):
            state["B"] = torch.zeros(n, n, dtype=dtype, device=param.device)
        return state

    def accumulate(self, states: Sequence[State], G: Tensor) -> None:
        """Add the stacked gradients' outer products (one bmm per side) into each state."""
        for key, outer in (("A", lambda: G @ G.mT), ("B", lambda: G.mT @ G)):
            if key in states[0]:
                S, new = [s[key] for s in states], list(outer().unbind(0))
                S = torch._foreach_add(S, new) if self.beta2 is None else torch._foreach_lerp(S, new, 1.0 - self.beta2)
                for s, x in zip(states, S):
                    s[key] = x

    def corrected(self, states: Sequence[State], key: str, step: int) -> Tensor:
        """The stacked statistic with EMA bias correction 1/(1 - β2^t) (a sum is returned as is)."""
        S = _stack(states, key)
        if self.beta2 is None or self.beta2 == 0.0:
            return S
        return S / (1.0 - self.beta2**step)


def _copy_into(states: Sequence[State], key: str, X: Tensor) -> None:
    """Assign each state's new ``key`` from the stack X (new tensors; the old ones are not written)."""
    for s, x in zip(states, X.to(states[0][key].dtype).unbind(0)):
        s[key] = x.clone()


def _stacked_grads(grads: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([g.to(dtype) for g in grads])


# ----------------------------------------------------------------------------- Shampoo


class Shampoo(Preconditioner):
    """Shampoo: L = (A + εI)^{p/2}, R = (B + εI)^{p/2}, so the Frobenius sharp is A^{-p} G B^{-p}.

    Args:
        beta2: None accumulates sums (original Shampoo); a float in [0, 1) keeps EMAs
            (bias-corrected).
        eps: ε added to the eigenvalues before the inverse root; 0 gives the pseudo-inverse.
        power: p. Shampoo uses 1/4 two-sided, 1/2 one-sided; p = 1 one-sided (A^{-1} G)
            is invariant under left-affine reparametrizations (see ``modnorm.invariance``).
        sides: "both", or "left"/"right" for one-sided Shampoo (the other factor is I).
        precondition_frequency: refresh the inverse roots every k steps (stale in between).
        root_dtype: dtype of ``torch.linalg.eigh`` (float32 or float64).
    """

    updates_in_place = False
    covers_gradient = True

    def __init__(
        self,
        beta2: float | None = None,
        eps: float = 1e-12,
        power: float = 0.25,
        sides: Sides = "both",
        precondition_frequency: int = 1,
        root_dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_hp(type(self).__name__, beta2, eps, precondition_frequency, root_dtype)
        if sides not in ("both", "left", "right"):
            raise ValueError(f"{type(self).__name__}: sides must be 'both', 'left' or 'right', got {sides!r}")
        require(type(self).__name__, "power", power, Positive)
        self.beta2, self.eps, self.power, self.sides = beta2, float(eps), float(power), sides
        self.precondition_frequency, self.root_dtype = precondition_frequency, root_dtype
        self.factors = _Factors(beta2, sides)

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        _check_matrix(type(self).__name__, param)
        state = self.factors.init(param, state_dtype)
        m, n = param.shape
        if "A" in state:
            state["L_inv"] = torch.eye(m, dtype=state_dtype, device=param.device)
        if "B" in state:
            state["R_inv"] = torch.eye(n, dtype=state_dtype, device=param.device)
        return state

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        _check_root_eps(type(self).__name__, self.eps, self.power, 2 if self.sides == "both" else 1, (state_dtype, self.root_dtype))

    def update(self, state: State, grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, None)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        G = _stacked_grads(grads, states[0]["L_inv" if "L_inv" in states[0] else "R_inv"].dtype)
        self.factors.accumulate(states, G)
        if _due(step, self.precondition_frequency):
            for key, inv in (("A", "L_inv"), ("B", "R_inv")):
                if key in states[0]:
                    S = self.factors.corrected(states, key, step)
                    _copy_into(states, inv, inverse_root(S, self.power / 2, self.eps, self.root_dtype))

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        L_inv = _stack(states, "L_inv") if "L_inv" in states[0] else None
        R_inv = _stack(states, "R_inv") if "R_inv" in states[0] else None
        return LRNorm(base, L_inv=L_inv, R_inv=R_inv)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(beta2={self.beta2}, eps={self.eps}, power={self.power}, sides={self.sides!r}, "
            f"precondition_frequency={self.precondition_frequency})"
        )


# ----------------------------------------------------------------------------- eigenbasis methods


class _Eigenbasis(Preconditioner):
    """Shared part of SOAP and SPlus: Shampoo statistics and their eigenbases Q_L, Q_R."""

    updates_in_place = False
    covers_gradient = True

    def __init__(self, shampoo_beta2: float | None, precondition_frequency: int, root_dtype: torch.dtype) -> None:
        _check_hp(type(self).__name__, shampoo_beta2, 0.0, precondition_frequency, root_dtype)
        self.shampoo_beta2, self.precondition_frequency, self.root_dtype = shampoo_beta2, precondition_frequency, root_dtype
        self.factors = _Factors(shampoo_beta2, "both")

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        _check_matrix(type(self).__name__, param)
        state = self.factors.init(param, state_dtype)
        m, n = param.shape
        state["QL"] = torch.eye(m, dtype=state_dtype, device=param.device)
        state["QR"] = torch.eye(n, dtype=state_dtype, device=param.device)
        return state

    def _refresh(self, states: Sequence[State], G: Tensor, step: int) -> None:
        self.factors.accumulate(states, G)
        if _due(step, self.precondition_frequency):
            _copy_into(states, "QL", eigenbasis(_stack(states, "A"), self.root_dtype))
            _copy_into(states, "QR", eigenbasis(_stack(states, "B"), self.root_dtype))

    def update(self, state: State, grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, None)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        self._refresh(states, _stacked_grads(grads, states[0]["A"].dtype), step)


class SOAP(_Eigenbasis):
    """SOAP: Adam in Shampoo's eigenbasis, as LRNorm(DNorm(base, D), L = Q_Lᵀ, R = Q_R).

    Each step: update A, B (EMA with ``shampoo_beta2``); refresh Q_L, Q_R every k steps;
    rotate the gradient G̃ = Q_Lᵀ G Q_R and update Adam's V ← β2 V + (1-β2) G̃² (the
    ``SecondMoment`` preconditioner, fed rotated gradients). D = (√V̂ + ε)^p with V̂
    bias-corrected: p = 1/2 (default) is Adam's D, whose Frobenius sharp divides by
    √V̂ + ε. V is kept as is when the basis is refreshed.

    ``reference=True`` follows SOAP's published code instead: the first step only feeds A, B
    and sets Q = eigh(A), eigh(B) (no update: the current gradient never rotates itself);
    later steps (counted from the second) rotate G with the current basis, update V and
    divide by (√V + ε)/√(1-β2^t); the basis is refreshed after steps k, 2k, … by one power
    iteration and a QR decomposition, Q ← qr(A Q) with the columns sorted by the estimated
    eigenvalues diag(Qᵀ A Q) (and V's rows/columns permuted alike).
    """


    def __init__(
        self,
        beta2: float = 0.95,
        eps: float = 1e-8,
        shampoo_beta2: float | None = 0.95,
        precondition_frequency: int = 10,
        power: float = 0.5,
        root_dtype: torch.dtype = torch.float32,
        reference: bool = False,
    ) -> None:
        super().__init__(shampoo_beta2, precondition_frequency, root_dtype)
        self.adam = SecondMoment(beta2=beta2, eps=eps, inner=0.5, outer=power)
        self.beta2, self.eps, self.power = self.adam.beta2, self.adam.eps, self.adam.outer
        self.reference = bool(reference)
        self.warmup_steps = 1 if self.reference else 0

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        state = super().init_state(param, state_dtype)
        state.update(self.adam.init_state(param, state_dtype))
        return state

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        self.adam.check_state_dtype(state_dtype)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        G = _stacked_grads(grads, states[0]["A"].dtype)
        if not self.reference:
            self._refresh(states, G, step)
        elif step <= 0:  # the warm-up step: statistics and the first basis only
            self.factors.accumulate(states, G)
            _copy_into(states, "QL", eigenbasis(_stack(states, "A"), self.root_dtype))
            _copy_into(states, "QR", eigenbasis(_stack(states, "B"), self.root_dtype))
            return
        elif step > 1 and (step - 1) % self.precondition_frequency == 0:  # the refresh due after step t-1
            self._qr_refresh(states)
        rotated = _stack(states, "QL").mT @ G @ _stack(states, "QR")
        self.adam.update_many(states, list(rotated.unbind(0)), step, ctx)  # type: ignore[arg-type]
        if self.reference:
            self.factors.accumulate(states, G)

    def _qr_refresh(self, states: Sequence[State]) -> None:
        """Q ← qr(S Q) per side, columns first sorted by diag(Qᵀ S Q) descending; V permuted alike."""
        V = _stack(states, self.adam.key)
        for S_key, Q_key, dim in (("A", "QL", -2), ("B", "QR", -1)):
            S, Q = _stack(states, S_key).to(self.root_dtype), _stack(states, Q_key).to(self.root_dtype)
            order = (Q * (S @ Q)).sum(-2).argsort(dim=-1, descending=True)  # (batch, size)
            Q = torch.gather(Q, -1, order.unsqueeze(-2).expand_as(Q))
            V = torch.gather(V, dim, order.unsqueeze(-1 if dim == -2 else -2).expand_as(V))
            _copy_into(states, Q_key, torch.linalg.qr(S @ Q).Q)
        _copy_into(states, self.adam.key, V)

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        if self.reference:  # (√V + ε)/√(1-β2^t): the reference's bias correction, ε outside it
            V = _stack(states, self.adam.key)
            D = ((V.sqrt() + self.eps) / (1.0 - self.beta2**step) ** 0.5) ** self.power
        else:
            D = self.adam.diagonal(states, step)
        return LRNorm(DNorm(base, D), L_inv=_stack(states, "QL"), R_inv=_stack(states, "QR").mT)

    def __repr__(self) -> str:
        return f"SOAP(beta2={self.beta2}, eps={self.eps}, shampoo_beta2={self.shampoo_beta2}, precondition_frequency={self.precondition_frequency})"


class SPlus(_Eigenbasis):
    """The base norm in Shampoo's eigenbasis: LRNorm(base, L = Q_Lᵀ/c, R = Q_R), c = 2/(m+n).

    With the Sign base, lmo(M) = c · Q_L sign(Q_Lᵀ M Q_R) Q_Rᵀ: SPlus's update (Frans et
    al. 2025) without its iterate averaging. ``shape_scale=False`` sets c = 1.
    As in SPlus, the basis used at step t comes from the statistics of steps < t: Q = I at
    step 1, and the refresh due after steps 1, 1+k, … is done at the start of the next
    step, before the current gradient enters A and B.
    """


    def __init__(
        self,
        shampoo_beta2: float | None = 0.999,
        precondition_frequency: int = 100,
        shape_scale: bool = True,
        root_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(shampoo_beta2, precondition_frequency, root_dtype)
        self.shape_scale = bool(shape_scale)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        if step > 1 and _due(step - 1, self.precondition_frequency):  # the refresh due after step t-1's update
            _copy_into(states, "QL", eigenbasis(_stack(states, "A"), self.root_dtype))
            _copy_into(states, "QR", eigenbasis(_stack(states, "B"), self.root_dtype))
        self.factors.accumulate(states, _stacked_grads(grads, states[0]["A"].dtype))

    def _scale(self, m: int, n: int) -> float:
        return 2.0 / (m + n) if self.shape_scale else 1.0

    def decay_scale(self, shape: Sequence[int]) -> float:
        """SPlus scales the weight decay like the update: λ · 2/(m+n)."""
        return self._scale(shape[-2], shape[-1])

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        QL = _stack(states, "QL")
        c = self._scale(QL.shape[-1], states[0]["QR"].shape[-1])
        return LRNorm(base, L_inv=QL * c, R_inv=_stack(states, "QR").mT)

    def __repr__(self) -> str:
        return f"SPlus(shampoo_beta2={self.shampoo_beta2}, precondition_frequency={self.precondition_frequency}, shape_scale={self.shape_scale})"
