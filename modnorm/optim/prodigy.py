"""Prodigy (Mishchenko & Defazio 2024): Adam whose step size D is estimated from all parameters.

A global step-size stage that runs *before* the directions (``step_size.StepSizeStage.prepare``).
Per step t, with k the number of steps taken, D = D_k (``prodigy_d``), η_g the lr of
parameter x's group, c_k = √(1 − β2^(k+1)) / (1 − β1^(k+1)) with bias correction (else 1)
and g the descent gradient (∓∇f + λx with coupled decay)::

    δ_x  = (D/D₀)·D·η_g·c_k                                   (D₀ = d0)
    N    ← β3·N + Σ_x δ_x·⟨g, x₀ − x⟩                         (x₀: x at its first step)
    s_x  ← β3·s_x + (D/D₀)·D·g   (safeguard_warmup)   or   β3·s_x + δ_x·g
    D̂    = d_coef · N / Σ_x ‖s_x‖₁
    D'   = max(D, D̂) if D = D₀ else D;   D_max ← max(D_max, D̂);   D_{k+1} = min(D_max, growth_rate·D')

and the pipeline then runs on the loss D·f with ε·D_{k+1} and lr × D·c_k
(``Scaling(loss=D, eps=D_{k+1}, lr=D·c_k)``): for the ``prodigy`` preset (EMA momentum,
Adam's V without bias corrections)

    m ← β1 m + (1−β1)·D·g,   v ← β2 v + (1−β2)·D²·g²,
    x ← x·(1 − η·D·c_k·λ)   (decoupled decay),   x ← x − η·D·c_k · m / (√v + D_{k+1}·ε)

as prodigyopt's ``Prodigy``. With β1 = 0 that peer steps along D_{k+1}·g (the new D), hence
the extra step factor D_{k+1}/D. Parameters of groups with lr = 0 do not enter N and s and do
not move (prodigyopt moves them with the largest lr of the groups). When
Σ‖s‖₁ = 0 (no gradient yet) D stays, N is not updated and nothing moves (the peer returns).
β3 defaults to √β2; ``slice_p`` keeps s and x₀ on every slice_p-th entry only.

State: ``prodigy_s`` and ``prodigy_x0`` per parameter (flattened, sliced), and the global
scalars D, D_max, N and k, replicated in every stepped parameter's state (float64 CPU
tensors, saved by ``state_dict``); a step reads those of the state with the largest k.
Everything is computed into the step's shadow states: a refused step changes nothing.

The stage composes with any direction: the statistics of another preset see D·g and its
step is lr·D·c_k times its direction (e.g. a spectral LMO: Prodigy's D on Muon).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from .hparams import Allowed, Beta, Betas, Frequency, NonNeg, Positive
from .parts import coupled_decay, decoupled_decay, ema, everywhere, precondition, rule, sharp
from .presets import Mixin, preset
from .recipe import Recipe
from .step_size import Scaling, StageInput, StageKind, StepSizeStage

__all__ = ["Prodigy", "ProdigyStage", "PRODIGY", "PRODIGY_STAGE"]

_SCALARS = ("prodigy_d", "prodigy_d_max", "prodigy_numerator", "prodigy_k")


def _scalar(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float64)


def _total(ts: Sequence[Tensor]) -> float:
    """Σ of 0-d tensors as a float, one host read per device."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in ts:
        by_device.setdefault(t.device, []).append(t.double())
    return sum(float(torch.stack(v).sum()) for v in by_device.values())


class Prodigy(StepSizeStage):
    """Prodigy's D estimate as a global stage (module docstring)."""

    runs_before = True
    state_keys = ("prodigy_s", "prodigy_x0", *_SCALARS)
    exact_state = frozenset({"prodigy_x0"})  # the initial parameters (a copy): never rounded to 16 bits

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float | None = math.inf, use_bias_correction: bool = False, safeguard_warmup: bool = False, slice_p: int = 1) -> None:
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.beta3 = math.sqrt(self.beta2) if beta3 is None else float(beta3)
        self.d0, self.d_coef = float(d0), float(d_coef)
        self.growth_rate = math.inf if growth_rate is None else float(growth_rate)
        self.use_bias_correction, self.safeguard_warmup, self.slice_p = bool(use_bias_correction), bool(safeguard_warmup), int(slice_p)

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> Prodigy:
        keys = ("betas", "beta3", "d0", "d_coef", "growth_rate", "use_bias_correction", "safeguard_warmup", "slice_p")
        return cls(**{k: group[k] for k in keys if k in group})

    def _sliced(self, t: Tensor) -> Tensor:
        return t.reshape(-1)[:: self.slice_p]

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        x0 = self._sliced(param.detach()).to(state_dtype, copy=True)
        return {"prodigy_s": torch.zeros_like(x0), "prodigy_x0": x0, "prodigy_d": _scalar(self.d0),
                "prodigy_d_max": _scalar(self.d0), "prodigy_numerator": _scalar(0.0), "prodigy_k": _scalar(0.0)}

    def _current(self, inputs: Sequence[StageInput], states: Iterable[dict[str, Any]]) -> tuple[float, float, float, int]:
        """(D, D_max, N, k) of the newest state (largest k): every stepped parameter holds them."""
        best: dict[str, Any] | None = None
        for s in (*states, *(i.state for i in inputs)):
            if "prodigy_k" in s and (best is None or float(s["prodigy_k"]) > float(best["prodigy_k"])):
                best = s
        if best is None:
            return self.d0, self.d0, 0.0, 0
        return float(best["prodigy_d"]), float(best["prodigy_d_max"]), float(best["prodigy_numerator"]), int(best["prodigy_k"])

    def prepare(self, inputs: Sequence[StageInput], states: Iterable[dict[str, Any]]) -> Scaling:
        d, d_max, numerator, k = self._current(inputs, states)
        bc = math.sqrt(1 - self.beta2 ** (k + 1)) / (1 - self.beta1 ** (k + 1)) if self.use_bias_correction else 1.0
        dots, l1 = [], []
        for x in inputs:
            if x.lr == 0.0:
                continue
            delta = (d / self.d0) * (d * x.lr * bc)
            g = self._sliced(x.grad)
            dots.append(delta * torch.dot(g, x.state["prodigy_x0"] - self._sliced(x.param.detach()).to(g.dtype)).double())
            s = torch.add(x.state["prodigy_s"] * self.beta3, g, alpha=(d / self.d0) * d if self.safeguard_warmup else delta)
            x.state["prodigy_s"] = s
            l1.append(s.abs().sum())
        denominator = _total(l1) if l1 else 0.0
        if denominator == 0.0:  # no gradient information yet: D stays and nothing moves
            return Scaling(loss=d, eps=d, lr=0.0)
        numerator = self.beta3 * numerator + _total(dots)
        d_new = d
        d_hat = self.d_coef * numerator / denominator
        if d == self.d0:
            d_new = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d_new = min(d_max, d_new * self.growth_rate)
        for x in inputs:
            x.state.update(prodigy_d=_scalar(d_new), prodigy_d_max=_scalar(d_max), prodigy_numerator=_scalar(numerator), prodigy_k=_scalar(k + 1))
        return Scaling(loss=d, eps=d_new, lr=d * bc, step=d_new / d if self.beta1 == 0.0 else 1.0)

    def __repr__(self) -> str:
        return (f"Prodigy(betas=({self.beta1}, {self.beta2}), beta3={self.beta3}, d0={self.d0}, d_coef={self.d_coef}, "
                f"growth_rate={self.growth_rate}, use_bias_correction={self.use_bias_correction}, "
                f"safeguard_warmup={self.safeguard_warmup}, slice_p={self.slice_p})")


GrowthRate = Annotated[float, Field(ge=1.0, allow_inf_nan=True), Allowed("{name} ≥ 1, or inf (no cap)")]  # nan fails ≥ 1


class ProdigyStage(Mixin):
    """The stage's hyperparameters, prodigyopt's names and defaults (``growth_rate`` None for the
    peer's inf, so that configurations round-trip through JSON); ``step_size`` is "prodigy" (the
    stage is what makes it Prodigy)."""

    step_size: Literal["prodigy"] = "prodigy"
    beta3: Beta | None = None
    use_bias_correction: bool = False
    safeguard_warmup: bool = False
    d0: Positive = 1e-6
    d_coef: Positive = 1.0
    growth_rate: GrowthRate | None = None
    slice_p: Frequency = 1


def prodigy(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-8, weight_decay: NonNeg = 0.0, decouple: bool = True) -> Recipe:
    """prodigyopt's ``Prodigy`` (``fsdp_in_use`` aside: DTensor parameters are refused): EMA momentum
    and Adam's V without bias corrections, under the stage's D; ``decouple=False``: coupled decay."""
    decay = decoupled_decay(weight_decay) if decouple else coupled_decay(weight_decay)
    return everywhere(rule(sharp("frobenius"), precondition("adam", beta2=betas[1], eps=eps, bias_correction=False), ema(betas[0]), decay))


PRODIGY = preset(prodigy, lr=1.0, mixins=(ProdigyStage,), source="Mishchenko & Defazio 2024 (Prodigy); prodigyopt's Prodigy")
PRODIGY_STAGE = StageKind(Prodigy.from_group,
                          ("betas", "beta3", "d0", "d_coef", "growth_rate", "use_bias_correction", "safeguard_warmup", "slice_p"))
