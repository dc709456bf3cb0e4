"""KFAC, EKFAC and the KFAC-preconditioned spectral LMO: preconditioners declared by the layers.

For a layer with weight W (d_out × d_in; a Conv2d kernel flattened to d_out × C·kh·kw) the
layer statistics (``kfac_hooks``) give the input factor A = E[a aᵀ] and the output-gradient
factor S = E[g gᵀ] (empirical Fisher, exact GGN or its Monte-Carlo estimate, ``fisher``),
the Fisher block being ≈ S ⊗ A. Both are EMAs with ``stat_decay`` (the first step copies);
eigendecompositions S = Q_S Λ_S Q_Sᵀ, A = Q_A Λ_A Q_Aᵀ are refreshed every ``update_freq`` steps.

- ``"kfac"``: the (L, R)-preconditioned norm with L = S^½, R = A^½, whose Frobenius sharp is
  S⁻¹ G A⁻¹. With damping δ it is written in the shared eigenbasis,
  LRNorm(DNorm(base, D), L = Q_Sᵀ, R = Q_A) with D = (λ_S λ_Aᵀ + δ)^½, so that the sharp is
  Q_S [(Q_Sᵀ G Q_A) / (λ_S λ_Aᵀ + δ)] Q_Aᵀ = (S ⊗ A + δI)⁻¹ G (δ = 0: S⁻¹ G A⁻¹ exactly).
- ``"ekfac"``: the same eigenbasis with a diagonal re-estimated every step (George et al.
  2018): D² = EMA of the per-sample squared rotated gradients E[(Q_Sᵀ ∇W_n Q_A)²] + δ,
  ∇W_n = s·g_n a_nᵀ from the layer's rows (an Adam-style second moment in KFAC's basis).
- ``"kfac_spectral"``: LRNorm(Spectral, L = (S + √δ I)^½, R = (A + √δ I)^½) in LMO mode:
  S^{-½} polar(S^{-½} G A^{-½}) A^{-½} — the KFAC-preconditioned spectral LMO, as MuAdam is
  the Adam-preconditioned one.

The optimizer must run eagerly (``compile=True`` is refused) since statistics are matched
to parameters by identity. Under ``torch.distributed`` (DDP) the batch factors and the
EKFAC diagonal are averaged over ranks with ``all_reduce`` before the EMA; sharded
(FSDP2/DTensor) parameters are not supported and raise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..norms import Frobenius, Norm, SpectralConv
from ..preconditioned import DNorm, LRNorm
from .kfac_hooks import LayerStatistics, Rows
from .hparams import Beta, Frequency, NonNeg, require
from .preconditioner import Preconditioner, State, StepContext

__all__ = ["KFAC", "FISHERS", "FlatNorm"]

FISHERS = ("empirical", "ggn", "mc")
FORMS = ("kfac", "ekfac", "kfac_spectral")


class FlatNorm(Norm):
    """A matrix norm applied to a kernel (d_out, *k) flattened to (d_out, prod k)."""

    def __init__(self, inner: Norm, ndim: int) -> None:
        self.inner, self.ndim = inner, ndim

    def _apply(self, fn: str, X: Tensor) -> Tensor:
        self._check(X)
        lead = X.shape[: X.ndim - self.ndim]
        Y = getattr(self.inner, fn)(X.reshape(*lead, X.shape[-self.ndim], -1))
        return Y if fn in ("value", "dual") else Y.reshape(X.shape)

    def value(self, W: Tensor) -> Tensor:
        return self._apply("value", W)

    def dual(self, G: Tensor) -> Tensor:
        return self._apply("dual", G)

    def lmo(self, G: Tensor) -> Tensor:
        return self._apply("lmo", G)

    def sharp(self, G: Tensor) -> Tensor:
        return self._apply("sharp", G)

    def __repr__(self) -> str:
        return f"FlatNorm({self.inner!r}, ndim={self.ndim})"


def _matrix_base(base: Norm) -> Norm:
    """The base norm acting on the flattened (d_out, d_in) matrix."""
    if base.ndim == 2:
        return base
    if isinstance(base, Frobenius):
        return Frobenius(ndim=2)
    if isinstance(base, SpectralConv):
        return base.spectral
    raise ValueError(f"KFAC: cannot flatten the base norm {base!r} of a kernel; use a Frobenius or spectral rule")


def _stack(states: Sequence[State], key: str) -> Tensor:
    return torch.stack([s[key] for s in states])


class KFAC(Preconditioner):
    """KFAC-family preconditioner (``form`` = "kfac" | "ekfac" | "kfac_spectral"); see the module docstring.

    Args:
        model: the nn.Module whose nn.Linear / nn.Conv2d layers are hooked.
        damping: δ ≥ 0 (see the forms); δ = 0 needs full-rank factors.
        stat_decay: EMA factor of the factors (and EKFAC's diagonal), 0 ≤ β < 1.
        update_freq: steps between eigendecompositions (steps 1, 1+k, …), ≥ 1.
        fisher: "empirical" (the training backward), "ggn" or "mc" (``curvature_backward``).
        root_dtype: torch.float32 or torch.float64 for the eigendecompositions.
    """

    eager_only = True
    exact_state = frozenset({"kfac_QA", "kfac_QS", "kfac_lamA", "kfac_lamS"})  # eigendecompositions: never rounded to 16 bits

    def __init__(self, model: nn.Module, damping: float = 1e-3, stat_decay: float = 0.95, update_freq: int = 10,
                 fisher: str = "empirical", form: str = "kfac", root_dtype: torch.dtype = torch.float32) -> None:
        require("KFAC", "damping", damping, NonNeg)
        require("KFAC", "stat_decay", stat_decay, Beta)
        require("KFAC", "update_freq", update_freq, Frequency)
        if fisher not in FISHERS:
            raise ValueError(f"KFAC: fisher must be one of {FISHERS}, got {fisher!r}")
        if form not in FORMS:
            raise ValueError(f"KFAC: form must be one of {FORMS}, got {form!r}")
        self.stats = LayerStatistics.of(model)
        self.damping, self.stat_decay, self.update_freq = float(damping), float(stat_decay), update_freq
        self.fisher, self.form, self.root_dtype = fisher, form, root_dtype

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        module = self.stats.module_of(param)
        if module is None or param.ndim not in (2, 4):
            raise ValueError(
                f"KFAC: a parameter of shape {tuple(param.shape)} is not the weight of a supported layer of the model "
                "(nn.Linear, or nn.Conv2d with groups=1 and zero padding); route its role to another rule"
            )
        d_out, d_in = param.shape[0], math.prod(param.shape[1:])
        z = lambda *s: torch.zeros(*s, dtype=state_dtype, device=param.device)  # noqa: E731
        eye = lambda k: torch.eye(k, dtype=state_dtype, device=param.device)  # noqa: E731
        state = {"kfac_A": z(d_in, d_in), "kfac_S": z(d_out, d_out), "kfac_QA": eye(d_in), "kfac_QS": eye(d_out),
                 "kfac_lamA": z(d_in), "kfac_lamS": z(d_out)}
        if self.form == "ekfac":
            state["kfac_diag"] = z(d_out, d_in)
        return state

    # ------------------------------------------------------------------ statistics

    def _selected(self, rows: Rows) -> list[tuple[Tensor, float]]:
        want_curvature = self.fisher != "empirical"
        return [(g, s) for g, s, curvature in rows.grads if curvature == want_curvature]

    def _batch_factors(self, forwards: list[Rows], label: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if not forwards or not any(self._selected(r) for r in forwards):
            how = ("run the forward pass in training mode and loss.backward() before optimizer.step()" if self.fisher == "empirical"
                   else "call modnorm.optim.kfac_hooks.curvature_backward(model, output, loss) before optimizer.step()")
            raise RuntimeError(f"KFAC ({self.fisher} Fisher): no layer statistics for parameter {label!r}; {how}")
        k = len(forwards)
        A = sum(r.a.T.to(dtype) @ r.a.to(dtype) / r.a.shape[0] for r in forwards) / k
        S = sum(s * (g.T.to(dtype) @ g.to(dtype)) for r in forwards for g, s in self._selected(r)) / k
        return A, S

    def _ekfac_batch(self, forwards: list[Rows], QS: Tensor, QA: Tensor) -> Tensor:
        """(1/k) Σ s Σ_rows (Q_Sᵀ g)² (Q_Aᵀ a)²ᵀ: the per-sample second moment in the eigenbasis."""
        total = 0.0
        for r in forwards:
            a2 = (r.a.to(QA.dtype) @ QA) ** 2
            for g, s in self._selected(r):
                total = total + s * (((g.to(QS.dtype) @ QS) ** 2).T @ a2)
        return total / len(forwards)

    def _ema_(self, state: State, key: str, batch: Tensor, step: int) -> None:
        if step == 1:
            state[key].copy_(batch)
        else:
            state[key].lerp_(batch.to(state[key].dtype), 1.0 - self.stat_decay)

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        if len(ctx.params) != len(states):
            raise RuntimeError("KFAC matches statistics to parameters and needs an eager step; build the optimizer with compile=False")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        for i, (state, p) in enumerate(zip(states, ctx.params)):
            label = ctx.names[i] if ctx.names else f"#{i}"
            if hasattr(p, "placements"):
                raise RuntimeError(f"KFAC: parameter {label!r} is sharded ({type(p).__name__}); KFAC supports DDP, not FSDP")
            forwards = self.stats.take(self.stats.module_of(p))
            A, S = self._batch_factors(forwards, label, state["kfac_A"].dtype)
            if distributed:
                for X in (A, S):
                    dist.all_reduce(X)
                    X.div_(dist.get_world_size())
            self._ema_(state, "kfac_A", A, step)
            self._ema_(state, "kfac_S", S, step)
            if (step - 1) % self.update_freq == 0:
                for side in ("A", "S"):
                    M = state[f"kfac_{side}"].to(self.root_dtype)
                    lam, Q = torch.linalg.eigh(0.5 * (M + M.mT))
                    state[f"kfac_lam{side}"].copy_(lam.clamp_min(0.0))
                    state[f"kfac_Q{side}"].copy_(Q)
            if self.form == "ekfac":
                diag = self._ekfac_batch(forwards, state["kfac_QS"], state["kfac_QA"])
                if distributed:
                    dist.all_reduce(diag)
                    diag.div_(dist.get_world_size())
                self._ema_(state, "kfac_diag", diag, step)

    # ------------------------------------------------------------------ norm

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        matrix = _matrix_base(base)
        QS, QA = _stack(states, "kfac_QS"), _stack(states, "kfac_QA")
        lamS, lamA = _stack(states, "kfac_lamS"), _stack(states, "kfac_lamA")
        if self.form == "kfac_spectral":
            root = math.sqrt(self.damping)
            L_inv = (QS * (lamS + root).rsqrt().unsqueeze(-2)) @ QS.mT
            R_inv = (QA * (lamA + root).rsqrt().unsqueeze(-2)) @ QA.mT
            norm: Norm = LRNorm(matrix, L_inv=L_inv, R_inv=R_inv)
        else:
            D2 = _stack(states, "kfac_diag") if self.form == "ekfac" else lamS.unsqueeze(-1) * lamA.unsqueeze(-2)
            norm = LRNorm(DNorm(matrix, (D2 + self.damping).sqrt(), positive=self.damping > 0), L_inv=QS, R_inv=QA.mT)
        return norm if base.ndim == 2 else FlatNorm(norm, base.ndim)

    def __repr__(self) -> str:
        return (f"KFAC(form={self.form!r}, damping={self.damping}, stat_decay={self.stat_decay}, "
                f"update_freq={self.update_freq}, fisher={self.fisher!r})")
