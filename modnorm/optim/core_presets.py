"""The core presets: torch.optim's elementwise methods and the spectral (Muon family) ones.

Each is one function from its hyperparameters (declared once, in the signature) to a
``Recipe`` composed of parts (``parts.py``); ``preset`` adds the common hyperparameters
(lr, maximize, step-size stage) and, through mixins, the routed AdamW rule (``adamw_rule``) and
the polar-factor options (``polar``).
"""

from __future__ import annotations

from typing import Any, Literal

from .hparams import Beta, Betas, NonNeg, NsDtype, NsProducts, NsSteps
from .parts import coupled_decay, decoupled_decay, ema, everywhere, heavy_ball, lmo, matrices, precondition, rule, sharp, steepest
from .presets import NesterovCheck, Polar, Preset, RoutedAdamW, adam_rule, preset
from .recipe import Recipe, UpdateRule

__all__ = ["CORE_PRESETS"]


def sgd(momentum: Beta = 0.0, dampening: NonNeg = 0.0, nesterov: bool = False, weight_decay: NonNeg = 0.0) -> Recipe:
    return everywhere(rule(sharp("frobenius"), heavy_ball(momentum, dampening=dampening, nesterov=nesterov), coupled_decay(weight_decay)))


def adamw(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-8, weight_decay: NonNeg = 1e-2, amsgrad: bool = False) -> Recipe:
    return everywhere(adam_rule("amsgrad" if amsgrad else "adam", betas, eps, weight_decay))


def adagrad(lr_decay: NonNeg = 0.0, weight_decay: NonNeg = 0.0, initial_accumulator_value: NonNeg = 0.0, eps: NonNeg = 1e-10) -> Recipe:
    return everywhere(rule(sharp("frobenius"), precondition("adagrad", eps=eps, initial_accumulator_value=initial_accumulator_value),
                           coupled_decay(weight_decay), lr_decay=lr_decay))


def adam_sania(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-8, weight_decay: NonNeg = 0.0) -> Recipe:
    return everywhere(adam_rule("sania", betas, eps, weight_decay))


def signsgd(momentum: Beta = 0.0, weight_decay: NonNeg = 0.0) -> Recipe:
    return everywhere(rule(lmo("sign"), ema(momentum), decoupled_decay(weight_decay)))


def muon(weight_decay: NonNeg = 0.1, momentum: Beta = 0.95, nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315), eps: NonNeg = 1e-7, ns_steps: NsSteps = 5,
         adjust_lr_fn: Literal["original", "match_rms_adamw", "rms"] | None = None, ns_dtype: NsDtype = "auto",
         ns_products: NsProducts = "auto", *, adamw_rule: UpdateRule) -> Recipe:
    """torch.optim.Muon's hyperparameter names and defaults, plus the AdamW rule for the rest.

    One difference: ``ns_dtype="auto"`` (torch always computes Newton–Schulz in bf16) — bf16
    on CUDA and where a CPU multiplies bf16 matrices of that size fast, float32 elsewhere,
    float64 for float64 parameters. ``ns_dtype="bfloat16"`` reproduces torch.optim.Muon bit for bit.
    ``ns_products="auto"``: a bucket's products batched or as torch's 2-D loop, whichever is measured faster.
    torch.optim.Muon scales the lr by the shape factor; the same as Spectral(scale=...)'s LMO, and
    folding it into the lr (``lr_adjust``) keeps torch's rounding, so the trajectories agree bit for bit."""
    spectral = lmo("spectral", scale="none", lr_adjust=adjust_lr_fn or "original", ns_coefficients=(ns_coefficients,),
                   ns_steps=ns_steps, ns_dtype=ns_dtype, ns_eps=eps, ns_products=ns_products)
    momentum_part = {"momentum": "ema_nesterov" if nesterov else "ema", "beta": momentum}  # a buffer even at β = 0, as torch's
    return matrices(rule(spectral, momentum_part, decoupled_decay(weight_decay)), adamw_rule)


def polargrad(momentum: Beta = 0.9, weight_decay: NonNeg = 0.0, *, adamw_rule: UpdateRule, polar: dict[str, Any]) -> Recipe:
    return matrices(rule(sharp("spectral", scale="none", **polar), ema(momentum), decoupled_decay(weight_decay)), adamw_rule)


def scion(momentum: Beta = 0.9, weight_decay: NonNeg = 0.0, *, polar: dict[str, Any]) -> Recipe:
    return everywhere(rule(lmo("declared", **polar), ema(momentum), decoupled_decay(weight_decay)))


def _muadam_rule(preconditioner: str, betas: tuple[float, float], eps: float, weight_decay: float, scale: str, mode: str,
                 polar: dict[str, Any], **extra: Any) -> UpdateRule:
    """D-preconditioned spectral steepest descent (Theorem 1): Adam's M̂ and V around the spectral LMO."""
    return rule(steepest("spectral", mode, scale=scale, **polar), precondition(preconditioner, beta2=betas[1], eps=eps, **extra),
                {"momentum": "adam_ema", "beta": betas[0]}, decoupled_decay(weight_decay))


Scale = Literal["rms", "original", "match_rms_adamw", "none"]
Mode = Literal["lmo", "sharp"]


def muadam(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-8, weight_decay: NonNeg = 0.0, scale: Scale = "rms", mode: Mode = "lmo",
           normalize: bool = False, *, adamw_rule: UpdateRule, polar: dict[str, Any]) -> Recipe:
    """D = (V̂ + ε)^¼. ``mode="sharp"``: ‖D⁻¹M‖_*·D⁻¹ polar(D⁻¹M), of degree 0 in the gradient.
    ``normalize``: D / RMS(D) per parameter, so that the step's size is the base norm's (lr · s in
    RMS→RMS) whatever the gradients' scale (otherwise it goes as |G|^-½)."""
    extra = {"normalize": True} if normalize else {}
    return matrices(_muadam_rule("adam", betas, eps, weight_decay, scale, mode, polar, inner=1.0, outer=0.25, **extra), adamw_rule)


def muadam_sania(betas: Betas = (0.9, 0.999), eps: NonNeg = 1e-8, weight_decay: NonNeg = 0.0, scale: Scale = "rms", mode: Mode = "lmo",
                 normalize: bool = False, *, adamw_rule: UpdateRule, polar: dict[str, Any]) -> Recipe:
    """D = (V̂ + ε)^½ (SANIA's); ``normalize`` as muadam's (it gives up the invariance under W → cW)."""
    return matrices(_muadam_rule("sania", betas, eps, weight_decay, scale, mode, polar, **({"normalize": True} if normalize else {})), adamw_rule)


CORE_PRESETS: tuple[Preset, ...] = (
    preset(sgd, mixins=(NesterovCheck,), source="Robbins & Monro 1951; Polyak 1964 (heavy ball); Nesterov 1983; torch.optim.SGD"),
    preset(adamw, source="Kingma & Ba 2015; Loshchilov & Hutter 2019; torch.optim.AdamW"),
    preset(adagrad, lr=1e-2, source="Duchi, Hazan & Singer 2011; torch.optim.Adagrad"),
    preset(adam_sania, source="Abdukhakimov et al. 2024 (SANIA)"),
    preset(signsgd, source="Bernstein et al. 2018 (signSGD, Signum)"),
    preset(muon, mixins=(RoutedAdamW,), source="Jordan et al. 2024 (Muon); torch.optim.Muon"),
    preset(polargrad, mixins=(RoutedAdamW, Polar), source="Lau, Long & Su 2025 (PolarGrad)"),
    preset(scion, mixins=(Polar,), source="Pethick et al. 2025 (Scion); Large, Bernstein et al. 2024 (modular norm)"),
    preset(muadam, mixins=(RoutedAdamW, Polar), source="Veprikov et al. 2025 (Preconditioned Norms), Algorithm 1, p = 1/4"),
    preset(muadam_sania, mixins=(RoutedAdamW, Polar), source="Veprikov et al. 2025 (Preconditioned Norms), Algorithm 1, p = 1/2"),
)
