"""Numerical check of Theorem 2 (invariance under reparametrization).

Two problems with the same minimizers up to a change of variables W = T(W'):

- scale:  T(W') = A ⊙ W'              (A entrywise positive, log-uniform in [0.1, 10])
- affine: T(W') = A_L W' A_R          (A_L, A_R random invertible, condition number ≤ ~10;
          ``reparam_sides="left"`` keeps A_R = I, ``"right"`` keeps A_L = I)

``check_invariance`` runs the optimizer on L(W) from W_0 and on L_new(W') = L(T(W'))
from W'_0 = T⁻¹(W_0), maps the second trajectory back and reports the relative iterate
mismatch max_t ‖T(W'_t) − W_t‖_F / ‖W_t − W_0‖_F (all parameters together): ≈ round-off
for an invariant method, O(1) for one that is not.

Theory (Theorem 2, gradients transform as G' = A ⊙ G, resp. A_Lᵀ G A_Rᵀ): a method is
invariant when its preconditioned norm transforms with the variables — D ↦ A ⊙ D for
scale, L ↦ U·L·A_L and R ↦ A_R·R·V (U, V orthogonal, allowed when the base norm is
orthogonally invariant: Frobenius, spectral) for affine — and every other step
(momentum, decoupled weight decay, the lr) is linear. ``predicted_invariance`` derives
this from the preset's rule for hidden matrices:

- a D-preconditioner D = (V̂^a + ε)^b (V̂ the EMA of G²) is scale-equivariant iff ε = 0
  and a·b = 1/2 (MuAdam-SANIA, Adam-SANIA; not Adam or MuAdam, a·b = 1/4);
- Shampoo with L⁻¹ = A^{-p/2} (A = Σ G Gᵀ): under A_L the statistic becomes A_Lᵀ A A_L and
  (A_Lᵀ A A_L)^{p/2} = U A^{p/2} A_L only for p = 1, so one-sided Shampoo with power 1
  (sharp A⁻¹G) and ε = 0 is invariant under reparametrizations of its own side; the
  right factor B = Σ Gᵀ G becomes Σ Gᵀ A_L A_Lᵀ G, not a function of B, so two-sided
  Shampoo (any p) and SOAP/SPlus are not affine invariant;
- KL-Shampoo's factor recursion is affine-equivariant, but its identity initialization
  is not, so it is not predicted invariant;
- coupled weight decay (g + λW) and unpreconditioned rules are never invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .optim.catalog import PRESETS, get_preconditioner
from .optim.factory import optimizer
from .optim.kl_shampoo import KLShampoo
from .optim.matrix_preconditioners import Shampoo

__all__ = ["check_invariance", "InvarianceReport", "predicted_invariance", "KINDS"]

Kind = Literal["scale", "affine"]
KINDS: tuple[str, ...] = ("scale", "affine")
# Square weights: G Gᵀ and Gᵀ G are invertible from the first step on, so ε = 0 needs no
# pseudo-inverse (a pseudo-inverse of a singular statistic does not transform).
SHAPES: tuple[tuple[int, int], ...] = ((6, 6), (6, 6))


@dataclass(frozen=True)
class InvarianceReport:
    """Outcome of ``check_invariance``.

    Attributes:
        preset, kind, sides, steps: what was run (sides: the affine factors that were random).
        mismatch: max over steps of ‖T(W'_t) − W_t‖_F / ‖W_t − W_0‖_F.
        final_mismatch: the same at the last step.
        predicted: whether Theorem 2 predicts invariance (None: unknown, e.g. a callable preset).
        reason: the derivation behind ``predicted``.
    """

    preset: str
    kind: str
    sides: str
    steps: int
    mismatch: float
    final_mismatch: float
    predicted: bool | None
    reason: str

    def invariant(self, tol: float = 1e-8) -> bool:
        """Whether the measured mismatch is below ``tol``."""
        return self.mismatch <= tol


# ----------------------------------------------------------------------------- theory


def _hidden_rule(preset: str, hp: dict[str, Any]) -> Any:
    if preset not in PRESETS:
        raise KeyError(f"check_invariance: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    p = PRESETS[preset]
    return p.build(p.hyperparameters(**hp)).rule_for("hidden")


def predicted_invariance(preset: str, kind: Kind, reparam_sides: str = "both", **hp: Any) -> tuple[bool, str]:
    """(predicted, reason) per the module docstring, for the preset's rule on hidden matrices."""
    rule = _hidden_rule(preset, hp)
    if rule.weight_decay > 0 and rule.weight_decay_mode == "coupled":
        return False, "coupled weight decay g + λW does not transform like the gradient"
    name, options = rule.preconditioner, dict(rule.preconditioner_options)
    if name in ("none", "declared"):
        return False, f"preconditioner {name!r}: the norm does not move with the variables"
    P = get_preconditioner(name, **options)
    eps = float(getattr(P, "eps", 0.0))
    if kind == "scale":
        inner, outer = getattr(P, "inner", None), getattr(P, "outer", None)
        if inner is None or outer is None:
            return False, f"{type(P).__name__} is not an elementwise second-moment D; a Kronecker/eigenbasis norm does not move with A ⊙ W"
        if eps != 0.0:
            return False, f"D = (V̂^{inner} + ε)^{outer} with ε = {eps} > 0: only approximately A ⊙ D"
        if abs(inner * outer - 0.5) > 1e-12:
            return False, f"D = V̂^{inner * outer} maps to A^{2 * inner * outer} ⊙ D, not A ⊙ D"
        return True, "D = V̂^{1/2} maps to A ⊙ D under G ↦ A ⊙ G (Theorem 2, scale)"
    base_ok = rule.norm in ("frobenius", "spectral")
    if type(P) is Shampoo:
        side = P.sides
        if side == "both":
            return False, "two-sided Shampoo: B = Σ GᵀG becomes Σ Gᵀ A_L A_Lᵀ G under A_L, not a function of B"
        if reparam_sides != side:
            return False, f"one-sided ({side}) Shampoo does not transform under a reparametrization of side(s) {reparam_sides!r}"
        if P.power != 1.0:
            return False, f"(A_Lᵀ A A_L)^{P.power / 2} ≠ U·A^{P.power / 2}·A_L unless power = 1"
        if eps != 0.0:
            return False, f"ε = {eps} > 0 regularizes A + εI, which does not transform"
        if not base_ok:
            return False, f"base norm {rule.norm!r} is not orthogonally invariant"
        return True, "one-sided Shampoo with power 1: L = A^{1/2} ↦ U·L·A_L (Theorem 2, affine)"
    if type(P) is KLShampoo:
        return False, "KL-Shampoo's factor recursion is equivariant, but its identity initialization is not"
    return False, f"{type(P).__name__}: statistics do not transform as L ↦ L A_L, R ↦ A_R R"


# ----------------------------------------------------------------------------- the experiment


def _problem(seed: int, dtype: torch.dtype) -> tuple[Callable[[Sequence[Tensor]], Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, SHAPES[0][1], generator=g, dtype=dtype)
    Y = torch.randn(32, SHAPES[1][0], generator=g, dtype=dtype)
    W0 = [torch.randn(*s, generator=g, dtype=dtype) / s[1] ** 0.5 for s in SHAPES]

    def loss(Ws: Sequence[Tensor]) -> Tensor:
        return 0.5 * ((torch.tanh(X @ Ws[0].mT) @ Ws[1].mT - Y) ** 2).sum()

    return loss, W0


def _random_invertible(k: int, g: torch.Generator, dtype: torch.dtype) -> Tensor:
    Q1 = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=dtype))[0]
    Q2 = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=dtype))[0]
    s = 10.0 ** (torch.rand(k, generator=g, dtype=dtype) - 0.5)
    return (Q1 * s) @ Q2


def _transforms(kind: str, sides: str, seed: int, dtype: torch.dtype) -> tuple[Callable[[Tensor, int], Tensor], Callable[[Tensor, int], Tensor]]:
    """T(W', i) and T⁻¹(W, i) for parameter i."""
    g = torch.Generator().manual_seed(seed + 1)
    if kind == "scale":
        A = [10.0 ** (2 * torch.rand(*s, generator=g, dtype=dtype) - 1) for s in SHAPES]
        return (lambda W, i: A[i] * W), (lambda W, i: W / A[i])
    eye = [(torch.eye(m, dtype=dtype), torch.eye(n, dtype=dtype)) for m, n in SHAPES]
    AL = [_random_invertible(m, g, dtype) if sides in ("both", "left") else eye[i][0] for i, (m, _) in enumerate(SHAPES)]
    AR = [_random_invertible(n, g, dtype) if sides in ("both", "right") else eye[i][1] for i, (_, n) in enumerate(SHAPES)]
    return (
        (lambda W, i: AL[i] @ W @ AR[i]),
        (lambda W, i: torch.linalg.solve(AL[i], torch.linalg.solve(AR[i].mT, W.mT).mT)),
    )


def _trajectory(make: Callable[[list[Tensor]], torch.optim.Optimizer], loss: Callable[[Sequence[Tensor]], Tensor], start: list[Tensor], steps: int) -> list[list[Tensor]]:
    params = [w.clone().requires_grad_(True) for w in start]
    opt = make(params)
    out = []
    def closure() -> Tensor:
        opt.zero_grad()
        value = loss(params)
        value.backward()
        return value

    for _ in range(steps):
        opt.step(closure)  # the closure hands the loss to a step-size stage that needs it (Polyak)
        out.append([p.detach().clone() for p in params])
    return out


def check_invariance(
    preset: str | Callable[[list[Tensor]], torch.optim.Optimizer],
    kind: Kind = "scale",
    steps: int = 30,
    seed: int = 0,
    reparam_sides: Literal["both", "left", "right"] = "both",
    dtype: torch.dtype = torch.float64,
    **hp: Any,
) -> InvarianceReport:
    """Run ``preset`` on L(W) and on L(T(W')) and compare the iterates (module docstring).

    Args:
        preset: a preset name of ``modnorm.optimizer`` (hyperparameters ``**hp``; ``lr``
            defaults to 1e-2) or a callable ``params -> torch.optim.Optimizer``.
        kind: "scale" (W = A ⊙ W') or "affine" (W = A_L W' A_R).
        steps: optimizer steps per run.
        seed: seed of the data, the initial point and the transformation.
        reparam_sides: for "affine", which factors are random ("left": A_R = I; "right": A_L = I).
        dtype: float64 (default) so that an invariant method shows round-off only.
    """
    if kind not in KINDS:
        raise ValueError(f"check_invariance: kind must be one of {KINDS}, got {kind!r}")
    if reparam_sides not in ("both", "left", "right"):
        raise ValueError(f"check_invariance: reparam_sides must be 'both', 'left' or 'right', got {reparam_sides!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"check_invariance: steps must be a positive int, got {steps!r}")
    if isinstance(preset, str):
        hp.setdefault("lr", 1e-2)
        kwargs = dict(hp)
        name = preset
        predicted, reason = predicted_invariance(preset, kind, reparam_sides, **hp)

        def make(params: list[Tensor]) -> torch.optim.Optimizer:
            return optimizer(params, name, **kwargs)

    elif callable(preset):
        make, name, predicted, reason = preset, getattr(preset, "__name__", "callable"), None, "callable preset: no prediction"
    else:
        raise TypeError(f"check_invariance: preset must be a preset name or a callable params -> optimizer, got {type(preset).__name__}")

    loss, W0 = _problem(seed, dtype)
    T, T_inv = _transforms(kind, reparam_sides, seed, dtype)
    start_new = [T_inv(w, i) for i, w in enumerate(W0)]
    reference = _trajectory(make, loss, W0, steps)
    mapped = _trajectory(make, lambda Ws: loss([T(w, i) for i, w in enumerate(Ws)]), start_new, steps)
    ratios = []
    for ref, new in zip(reference, mapped):
        err = torch.sqrt(sum(((T(w, i) - r) ** 2).sum() for i, (w, r) in enumerate(zip(new, ref))))
        moved = torch.sqrt(sum(((r - w0) ** 2).sum() for r, w0 in zip(ref, W0)))
        ratios.append(float(err / moved.clamp_min(torch.finfo(dtype).tiny)))
    return InvarianceReport(name, kind, reparam_sides if kind == "affine" else "-", steps, max(ratios), ratios[-1], predicted, reason)
