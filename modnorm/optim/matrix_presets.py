"""Presets built on the matrix and Hessian preconditioners (same pipeline as every preset).

Only hidden matrices (role "hidden") take the matrix rule; embeddings, heads, vectors
and conv kernels go to the AdamW rule (``adamw_*`` hyperparameters). ``sophia`` needs the
Hessian-vector products: ``loss_fn=`` (params dict → loss, torch.func) with
``loss_params=dict(model.named_parameters())``, or ``from_graph=True`` (train with
``loss.backward(create_graph=True)``). ``loss_fn`` and ``loss_params`` belong to the running
program: ``state_dict()`` leaves them out (it loads with ``weights_only=True``) and
``load_state_dict`` keeps the optimizer's own. Every estimate of a step is computed before
any parameter changes (the step commits at the end), so results do not depend on the order
or grouping of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import model_validator

from .hparams import Beta, Frequency, NonNeg, Positive, RootDtype
from .parts import adam_momentum, decoupled_decay, everywhere, hidden_only, lmo, precondition, rule, sharp
from .presets import Mixin, Polar, Preset, RoutedAdamW, adam_rule, preset
from .recipe import DTYPES, Recipe, UpdateRule

__all__ = ["MATRIX_PRESETS"]


def shampoo(momentum: Beta = 0.9, beta2: Beta | None = None, eps: NonNeg = 1e-12, power: Positive = 0.25,
            sides: Literal["both", "left", "right"] = "both", precondition_frequency: Frequency = 1, root_dtype: RootDtype = "float32",
            weight_decay: NonNeg = 0.0, *, adamw_rule: UpdateRule) -> Recipe:
    """Shampoo; ``beta2=None`` accumulates sums, ``eps`` regularizes A + εI, ``power`` p of A^{-p} G B^{-p}."""
    return hidden_only(rule(sharp("frobenius"), precondition("shampoo", beta2=beta2, eps=eps, power=power, sides=sides,
                                                              precondition_frequency=precondition_frequency, root_dtype=DTYPES[root_dtype]),
                            adam_momentum(momentum), decoupled_decay(weight_decay)), adamw_rule)


def shampoo_one_sided(momentum: Beta = 0.9, beta2: Beta | None = None, eps: NonNeg = 1e-12, power: Positive = 0.5,
                      sides: Literal["both", "left", "right"] = "left", precondition_frequency: Frequency = 1,
                      root_dtype: RootDtype = "float32", weight_decay: NonNeg = 0.0, *, adamw_rule: UpdateRule) -> Recipe:
    """Shampoo with R = I: L = (Σ G Gᵀ)^{1/4}, the step A^{-1/2} G."""
    return shampoo(momentum, beta2, eps, power, sides, precondition_frequency, root_dtype, weight_decay, adamw_rule=adamw_rule)


def kl_shampoo(momentum: Beta = 0.9, beta2: Beta = 0.95, eps: NonNeg = 1e-12, power: Positive = 0.5, init: Positive = 1.0,
               precondition_frequency: Frequency = 1, root_dtype: RootDtype = "float32", weight_decay: NonNeg = 0.0,
               reference: bool = False, *, adamw_rule: UpdateRule) -> Recipe:
    """KL-Shampoo; ``reference=True``: the authors' schedule (``KLShampoo(reference=True)``)
    with their momentum, an EMA without bias correction (``"ema"``); their defaults are
    ``init=0.1, eps=1e-8, precondition_frequency=10, weight_decay=0.01``."""
    options = precondition("kl_shampoo", beta2=beta2, eps=eps, power=power, init=init, reference=reference,
                           precondition_frequency=precondition_frequency, root_dtype=DTYPES[root_dtype])
    moment = {"momentum": "ema", "beta": momentum} if reference else adam_momentum(momentum)
    return hidden_only(rule(sharp("frobenius"), options, moment, decoupled_decay(weight_decay)), adamw_rule)


def soap(momentum: Beta = 0.95, beta2: Beta = 0.95, shampoo_beta2: Beta | None = 0.95, eps: NonNeg = 1e-8,
         precondition_frequency: Frequency = 10, root_dtype: RootDtype = "float32", weight_decay: NonNeg = 0.01,
         reference: bool = False, *, adamw_rule: UpdateRule) -> Recipe:
    """SOAP's defaults: betas (0.95, 0.95), Shampoo β = β2, refresh every 10 steps, wd 0.01. ``reference=True``:
    SOAP's published schedule (``SOAP(reference=True)``), and the other parameters take Adam with SOAP's own
    betas, eps and weight decay (not the ``adamw_*`` ones)."""
    options = precondition("soap", beta2=beta2, eps=eps, shampoo_beta2=shampoo_beta2, precondition_frequency=precondition_frequency,
                           root_dtype=DTYPES[root_dtype], reference=reference)
    other = adam_rule("adam", (momentum, beta2), eps, weight_decay, lr_ratio=1.0) if reference else adamw_rule
    return hidden_only(rule(sharp("frobenius"), options, adam_momentum(momentum), decoupled_decay(weight_decay)), other)


def splus(momentum: Beta = 0.9, shampoo_beta2: Beta | None = 0.999, precondition_frequency: Frequency = 100, shape_scale: bool = True,
          root_dtype: RootDtype = "float32", weight_decay: NonNeg = 0.0, others: Literal["sign", "adamw"] = "sign",
          others_scale: NonNeg = 1e-3, *, adamw_rule: UpdateRule) -> Recipe:
    """SPlus without iterate averaging; the 2/(m+n) width scaling is part of the norm (and
    scales the weight decay). Other parameters: SPlus's sign(M) · ``others_scale``
    (``others="sign"``), or the AdamW rule (``others="adamw"``, ``adamw_*`` hyperparameters)."""
    matrix = rule(lmo("sign"), precondition("splus", shampoo_beta2=shampoo_beta2, precondition_frequency=precondition_frequency,
                                            shape_scale=shape_scale, root_dtype=DTYPES[root_dtype]),
                  {"momentum": "ema", "beta": momentum}, decoupled_decay(weight_decay))
    sign = rule(lmo("sign"), precondition("none"), {"momentum": "ema", "beta": momentum}, decoupled_decay(weight_decay), lr_ratio=others_scale)
    return hidden_only(matrix, sign if others == "sign" else adamw_rule)


class HessianSource(Mixin):
    """The Hessian-diagonal estimate (``hessian.py``): from ``loss_fn`` + ``loss_params`` or ``from_graph=True``."""

    beta2: Beta = 0.99
    eps: Positive = 1e-12
    every: Frequency = 10
    samples: Frequency = 1
    seed: int = 0
    loss_fn: Callable[..., Any] | None = None
    loss_params: Mapping[str, Any] | None = None
    from_graph: bool = False

    @model_validator(mode="after")
    def _source(self) -> HessianSource:
        if (self.loss_fn is None) == (not self.from_graph):
            raise ValueError(
                "the Hessian estimate needs exactly one source: loss_fn=<params dict -> loss> with "
                "loss_params=dict(model.named_parameters()), or from_graph=True with loss.backward(create_graph=True)"
            )
        if self.loss_fn is not None and self.loss_params is None:
            raise ValueError("loss_fn needs loss_params=dict(model.named_parameters()) (the tensors loss_fn takes)")
        return self

    def hessian(self) -> dict[str, Any]:
        return precondition("hessian", loss_fn=self.loss_fn, params=self.loss_params, beta2=self.beta2, eps=self.eps, power=0.5,
                            every=self.every, samples=self.samples, seed=self.seed, from_graph=self.from_graph)


def sophia(momentum: Beta = 0.965, weight_decay: NonNeg = 0.0, *, hessian: dict[str, Any]) -> Recipe:
    """Hessian-diagonal preconditioning (G / max(|h|, ε)) for every parameter."""
    return everywhere(rule(sharp("frobenius"), hessian, adam_momentum(momentum), decoupled_decay(weight_decay)))


def sophia_spectral(momentum: Beta = 0.965, weight_decay: NonNeg = 0.0, *, hessian: dict[str, Any], adamw_rule: UpdateRule,
                    polar: dict[str, Any]) -> Recipe:
    """|h|^{-½} polar(|h|^{-½} G) on hidden matrices, AdamW elsewhere."""
    return hidden_only(rule(lmo("spectral", scale="rms", **polar), hessian, adam_momentum(momentum), decoupled_decay(weight_decay)), adamw_rule)


MATRIX_PRESETS: tuple[Preset, ...] = (
    preset(shampoo, mixins=(RoutedAdamW,), source="Gupta, Koren & Singer 2018 (Shampoo)"),
    preset(shampoo_one_sided, mixins=(RoutedAdamW,), source="Gupta et al. 2018; one-sided variant (R = I)"),
    preset(kl_shampoo, mixins=(RoutedAdamW,), source="Lin et al. 2025 (KL-Shampoo)"),
    preset(soap, lr=3e-3, mixins=(RoutedAdamW,), source="Vyas et al. 2024 (SOAP)"),
    preset(splus, lr=0.1, mixins=(RoutedAdamW,), source="Frans, Levine & Abbeel 2025 (SPlus), without iterate averaging"),
    preset(sophia, mixins=(RoutedAdamW, Polar, HessianSource), source="Liu et al. 2023 (Sophia, Hutchinson estimator), without clipping"),
    preset(sophia_spectral, mixins=(RoutedAdamW, Polar, HessianSource),
           source="Hessian-diagonal D around the spectral LMO (Theorem 1)"),
)
