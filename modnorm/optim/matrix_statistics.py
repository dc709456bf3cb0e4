"""What the matrix preconditioners (``matrix_preconditioners.py``, ``kl_shampoo.py``) share: checks
of their hyperparameters, eigendecompositions (inverse roots, eigenbases), the stacked views of a
bucket's state, and Shampoo's Kronecker statistics A, B (``_Factors``), redone in place at the
commit where a running bound proves them finite (``deferred.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .deferred import Deferred, accumulation_bound
from .hparams import Frequency, NonNeg, OptionalBeta, require
from .preconditioner import State, StepContext, check_eps
from .stacked_state import assign, one_stack, stacked

__all__ = ["inverse_root", "eigenbasis"]

Sides = Literal["both", "left", "right"]


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
    """The step reaches ε^-power per side: keep the product of the sides within √(largest float)."""
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
    """The bucket's (B, …) stack of ``key``: a view of the state when it is one stack (``stacked``)."""
    return stacked([s[key] for s in states])


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

    def accumulate(self, states: Sequence[State], G: Tensor, ctx: StepContext | None = None,
                   grads: Sequence[Tensor] = (), need: bool = False) -> None:
        """A ← A + G Gᵀ (or β2 A + (1-β2) G Gᵀ), B likewise with Gᵀ G: one baddbmm per side, into new stacks.

        With ``ctx.defer`` and a proof that the new A, B are finite (``_deferrable``), the update is
        instead redone in place at the commit from ``grads`` (G's rows); the new stacks are
        computed now only when ``need`` (this step reads them), as temporaries shown in the states."""
        beta, alpha = (1.0, 1.0) if self.beta2 is None else (self.beta2, 1.0 - self.beta2)
        keys = [k for k in ("A", "B") if k in states[0]]
        defer = ctx.defer if ctx is not None and grads else None
        bounds = self._deferrable(defer, states, G, grads, keys, beta, alpha) if defer is not None else None
        # only statistics kept as one stack (not on a first step, nor just loaded) are redone in place
        if bounds is not None and all(one_stack([s[k] for s in states]) for k in keys):  # one redo for both sides
            if need:
                for key in keys:
                    new = torch.baddbmm(_stack(states, key), *_sides(G, key), beta=beta, alpha=alpha).unbind(0)
                    defer.replace(states, key, new, None, probe=False)  # finite: proved
            defer.later(functools.partial(_redo_factors, defer, states, grads, G.dtype, beta, alpha, bounds))
            return
        for key in keys:
            assign(states, key, torch.baddbmm(_stack(states, key), *_sides(G, key), beta=beta, alpha=alpha))
            if bounds is not None:  # the bound holds for these values too (kept only if the step commits them)
                defer.record([s[key] for s in states], bounds[key])

    @staticmethod
    def _deferrable(defer: Deferred, states: Sequence[State], G: Tensor, grads: Sequence[Tensor], keys: list[str], beta: float,
                    alpha: float) -> dict[str, float] | None:
        """Bounds proving the new A, B finite, or None: |β S + α G Gᵀ| ≤ β max|S| + α k·max|G|², with
        k the length of G's rows (A) or columns (B) (Cauchy–Schwarz), rounding included."""
        a = defer.known_max(list(grads))  # read (G's rows, the same values): a gradient has no running bound
        if not math.isfinite(a):
            return None
        out = {}
        for key in keys:
            k = G.shape[-1] if key == "A" else G.shape[-2]
            bound = accumulation_bound(defer.known_max([s[key] for s in states]), beta, alpha, k * a * a, k, G.dtype)
            if bound is None:
                return None
            out[key] = bound
        return out

    def corrected(self, states: Sequence[State], key: str, step: int) -> Tensor:
        """The stacked statistic with EMA bias correction 1/(1 - β2^t) (a sum is returned as is)."""
        S = _stack(states, key)
        if self.beta2 is None or self.beta2 == 0.0:
            return S
        return S / (1.0 - self.beta2**step)


def _sides(G: Tensor, key: str) -> tuple[Tensor, Tensor]:
    """The product's operands: G Gᵀ for A (rows), Gᵀ G for B (columns)."""
    return (G, G.mT) if key == "A" else (G.mT, G)


def _redo_factors(defer: Deferred, states: Sequence[State], grads: Sequence[Tensor], dtype: torch.dtype,
                  beta: float, alpha: float, bounds: dict[str, float]) -> None:
    """At the commit: A ← β A + α G Gᵀ and B ← β B + α Gᵀ G in place on the states' stacks (views:
    ``accumulate`` defers only statistics kept as one stack), and their running bounds recorded."""
    G = _stacked_grads(grads, dtype)
    for key, bound in bounds.items():
        _stack(states, key).baddbmm_(*_sides(G, key), beta=beta, alpha=alpha)
        defer.record([s[key] for s in states], bound)


def _basis_bound(defer: Deferred, states: Sequence[State], keys: Sequence[str]) -> float:
    """max |x| over the states' ``keys`` (eigenbases, inverse roots: replaced, never written in place),
    read once per new tensor: the value is kept as its running bound when the step commits."""
    ts = [s[k] for k in keys for s in states]
    q = defer.known_max(ts)  # inf for NaN/inf
    if math.isfinite(q):
        defer.later(lambda: defer.record(ts, q))
    return q


def _copy_into(states: Sequence[State], key: str, X: Tensor) -> None:
    """Assign each state's new ``key`` from the stack X (views of X in the state's dtype; the old ones are not written)."""
    assign(states, key, X)


def _stacked_grads(grads: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([g.to(dtype) for g in grads])
