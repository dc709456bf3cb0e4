"""Matrix (Kronecker-factored) preconditioners: Shampoo, one-sided Shampoo, SOAP, SPlus.

Each keeps left/right statistics of a matrix gradient G (m×n, nn.Linear layout) and
returns an ``LRNorm`` (Theorem 1) around the optimizer's base norm — there is no
separate update formula: the optimizer takes the LMO or sharp of the returned norm.

- ``Shampoo``: A = Σ G Gᵀ, B = Σ Gᵀ G (or EMAs with β2, bias-corrected), refreshed
  eigendecompositions give the inverse roots P_A = (A + εI)^{-p}, P_B = (B + εI)^{-p}
  (state ``A_inv_root``, ``B_inv_root``), and the norm is the LRNorm with
  L⁻¹ = P_A^{1/2}, R⁻¹ = P_B^{1/2} (``GramLRNorm``): its Frobenius sharp is
  P_A G P_B = A^{-p} G B^{-p}, two products a step (p = 1/4: Shampoo of Gupta et al. 2018);
  other bases and LMOs form the square roots (one eigh per side and step).
  ``sides="left"`` keeps R = I (one-sided Shampoo, default p = 1/2: A^{-1/2} G).
- ``KLShampoo`` (KL-minimizing factors, Lin et al. 2025) lives in ``kl_shampoo.py``; both share
  the statistics and eigendecompositions of ``matrix_statistics.py``.
- ``SOAP``: Shampoo's eigenbases Q_L, Q_R and Adam statistics V of the rotated gradient
  Q_Lᵀ G Q_R; the norm is LRNorm(DNorm(base, D), L = Q_Lᵀ, R = Q_R) with Adam's
  D = (√V̂ + ε)^{1/2} (Vyas et al. 2024), so the Frobenius sharp of a momentum M is
  Q_L [(Q_Lᵀ M Q_R) / (√V̂ + ε)] Q_Rᵀ.
- ``SPlus``: Shampoo's eigenbases around the base norm (Sign for SPlus, Frans et al. 2025):
  lmo(M) = c · Q_L sign(Q_Lᵀ M Q_R) Q_Rᵀ with the shape factor c = 2/(m+n) folded into L.

All statistics live in the per-parameter state dict (tensors only), as views into one
stack per bucket (``stacked_state``): the step reads the (B, …) stacks without copying
them and ``norm`` returns one norm acting on the (B, m, n) stack.
Eigendecompositions use ``torch.linalg.eigh`` in ``root_dtype`` (float32 or float64),
every ``precondition_frequency`` steps (steps 1, 1+k, 1+2k, …).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..norms import Frobenius, Norm
from ..preconditioned import DNorm, GramLRNorm, LRNorm
from .deferred import Deferred
from .diagonal import SecondMoment
from .hparams import Positive, require
from .matrix_statistics import (Sides, _basis_bound, _check_hp, _check_matrix, _check_root_eps, _copy_into, _due, _Factors, _stack,
                                _stacked_grads, eigenbasis, inverse_root)
from .preconditioner import Preconditioner, State, StepContext

__all__ = [
    "Shampoo",
    "SOAP",
    "SPlus",
    "inverse_root",
    "eigenbasis",
]


# ----------------------------------------------------------------------------- Shampoo


class Shampoo(Preconditioner):
    """Shampoo: L = (A + εI)^{p/2}, R = (B + εI)^{p/2}, so the Frobenius sharp is A^{-p} G B^{-p}.

    The state keeps A, B and the inverse roots (A + εI)^{-p}, (B + εI)^{-p}, formed at each
    refresh; the norm is ``GramLRNorm`` of those (the Frobenius sharp is two products).

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
    exact_state = frozenset({"A_inv_root", "B_inv_root"})  # inverse roots: recomputed from A, B, not accumulated

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
            state["A_inv_root"] = torch.eye(m, dtype=state_dtype, device=param.device)
        if "B" in state:
            state["B_inv_root"] = torch.eye(n, dtype=state_dtype, device=param.device)
        return state

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        _check_root_eps(type(self).__name__, self.eps, self.power, 2 if self.sides == "both" else 1, (state_dtype, self.root_dtype))

    def upgrade_state(self, state: State) -> State | None:
        """Earlier versions kept L_inv = (A + εI)^(-p/2) (and R_inv for B) and applied each twice;
        this one keeps their square (A + εI)^(-p) as ``A_inv_root`` (``B_inv_root``), formed in
        ``root_dtype`` (symmetric by construction: L_inv·L_invᵀ)."""
        if not {"L_inv", "R_inv"} & set(state):
            return None
        new = {k: v for k, v in state.items() if k not in ("L_inv", "R_inv")}
        for old, key in (("L_inv", "A_inv_root"), ("R_inv", "B_inv_root")):
            if isinstance(state.get(old), Tensor):
                half = state[old].to(self.root_dtype)
                new[key] = (half @ half.mT).to(state[old].dtype)
        return new

    def update(self, state: State, grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, None)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        G = _stacked_grads(grads, states[0]["A" if "A" in states[0] else "B"].dtype)
        due = _due(step, self.precondition_frequency)
        self.factors.accumulate(states, G, ctx, grads, need=due)
        if due:  # the inverse roots, once per refresh
            for key in ("A", "B"):
                if key in states[0]:
                    S = self.factors.corrected(states, key, step)
                    _copy_into(states, f"{key}_inv_root", inverse_root(S, self.power, self.eps, self.root_dtype))

    def sharp_growth(self, base: Norm, states: Sequence[State], shape: Sequence[int], step: int,
                     defer: Deferred | None) -> tuple[float, list[Tensor]] | None:
        """U = P_A X P_B: with ‖P‖₂ ≤ ‖P‖_F ≤ k·max|P| (k×k; taken ≥ 1, 1 for an identity side), every
        intermediate and ‖U‖_F are at most ‖P_A‖₂ ‖P_B‖₂ √(mn) max|X|; (1 + (m+n+8)·eps)³ covers the
        rounding of the two products. Frobenius base only; no premise beyond finite inverse roots (read)."""
        if type(base) is not Frobenius or defer is None:
            return None
        keys = [k for k in ("A_inv_root", "B_inv_root") if k in states[0]]
        m, n = shape[-2:]
        q = _basis_bound(defer, states, keys)
        sides = [max(1.0, states[0][k].shape[-1] * q) for k in keys]
        grow = (1.0 + (m + n + 8) * torch.finfo(states[0][keys[0]].dtype).eps) ** 3
        growth = math.prod(sides) * math.sqrt(m * n) * grow
        return (growth, []) if math.isfinite(growth) else None

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        P_A = _stack(states, "A_inv_root") if "A_inv_root" in states[0] else None
        P_B = _stack(states, "B_inv_root") if "B_inv_root" in states[0] else None
        return GramLRNorm(base, P_L=P_A, P_R=P_B)

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
    exact_state = frozenset({"QL", "QR"})  # eigenbases stay orthogonal: never rounded to 16 bits

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

    def _refresh(self, states: Sequence[State], G: Tensor, step: int, ctx: StepContext | None = None,
                 grads: Sequence[Tensor] = ()) -> None:
        due = _due(step, self.precondition_frequency)
        self.factors.accumulate(states, G, ctx, grads, need=due)
        if due:
            _copy_into(states, "QL", eigenbasis(_stack(states, "A"), self.root_dtype))
            _copy_into(states, "QR", eigenbasis(_stack(states, "B"), self.root_dtype))

    def update(self, state: State, grad: Tensor, step: int) -> None:
        self.update_many([state], [grad], step, None)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext | None) -> None:
        self._refresh(states, _stacked_grads(grads, states[0]["A"].dtype), step, ctx, grads)


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
            self._refresh(states, G, step, ctx, grads)
        elif step <= 0:  # the warm-up step: statistics and the first basis only
            self.factors.accumulate(states, G, ctx, grads, need=True)
            _copy_into(states, "QL", eigenbasis(_stack(states, "A"), self.root_dtype))
            _copy_into(states, "QR", eigenbasis(_stack(states, "B"), self.root_dtype))
            return
        elif step > 1 and (step - 1) % self.precondition_frequency == 0:  # the refresh due after step t-1
            self._qr_refresh(states)
        if self.reference:
            self.factors.accumulate(states, G, ctx, grads)  # the reference feeds A, B after the refresh (the rotation does not read them)
        bucket = {self.adam.key: _stack(states, self.adam.key)}  # Adam's statistics of the rotated stack, as one stack
        rotated = _stack(states, "QL").mT @ G
        del G  # released before the second product: one temporary of the bucket's size less
        rotated = rotated @ _stack(states, "QR")  # V of the rotated G: computed aside (no redo)
        self.adam.update_many([bucket], [rotated], step, StepContext(step=step))  # type: ignore[arg-type]
        _copy_into(states, self.adam.key, bucket[self.adam.key])

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
        V = _stack(states, self.adam.key)
        if self.reference:  # (√V + ε)/√(1-β2^t): the reference's bias correction, ε outside it
            D = V.sqrt().add_(self.eps).div_((1.0 - self.beta2**step) ** 0.5).pow_(self.power)
        else:
            D = self.adam._powers([{self.adam.key: V}], step, self.adam.outer)[0]  # (V̂^½ + ε)^p on the stack
        # D ≥ ε^p > 0 with ε > 0 (V ≥ 0): plain division
        return LRNorm(DNorm(base, D, positive=self.eps > 0), L_inv=_stack(states, "QL"), R_inv=_stack(states, "QR").mT)

    def sharp_growth(self, base: Norm, states: Sequence[State], shape: Sequence[int], step: int,
                     defer: Deferred | None) -> tuple[float, list[Tensor]] | None:
        """U = Q_L ((Q_Lᵀ X Q_R) ⊘ D ⊘ D) Q_Rᵀ with D ≥ ε^p where V ≥ 0 (the premise: 0, else inf).
        With q = ‖Q‖₂ ≤ ‖Q‖_F ≤ k·max|Q| (k×k), every intermediate and ‖U‖_F are at most
        (q_L q_R)² √(mn) max|X| / min(ε^{2p}, 1) (q's taken ≥ 1); (1 + (m+n+8)·eps)⁶ covers the
        rounding of the four products and the two divisions. Frobenius base and ε > 0 only."""
        if type(base) is not Frobenius or self.eps <= 0 or defer is None:
            return None
        V = _stack(states, self.adam.key)
        m, n = shape[-2:]
        q = _basis_bound(defer, states, ("QL", "QR"))
        lower = min(self.eps ** (2 * self.power), 1.0)
        grow = (1.0 + (m + n + 8) * torch.finfo(V.dtype).eps) ** 6
        growth = (max(1.0, m * q) * max(1.0, n * q)) ** 2 * math.sqrt(m * n) / lower * grow
        if not math.isfinite(growth):
            return None
        return growth, [torch.where(V.amin() >= 0, 0.0, math.inf).float().view(1)]  # D ≥ ε^p needs V ≥ 0 (NaN: inf)

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
        self.factors.accumulate(states, _stacked_grads(grads, states[0]["A"].dtype), ctx, grads)

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
