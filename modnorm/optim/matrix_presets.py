"""Presets built on the matrix and Hessian preconditioners (same pipeline as every preset).

=================  ===============  =====================================  ==========  =====  =========
preset             base (hidden)    preconditioner                         momentum    mode   others
=================  ===============  =====================================  ==========  =====  =========
shampoo            Frobenius        shampoo: A^{-1/4} G B^{-1/4}           adam_ema    sharp  AdamW
shampoo_one_sided  Frobenius        shampoo (sides="left"): A^{-1/2} G     adam_ema    sharp  AdamW
kl_shampoo         Frobenius        kl_shampoo: S_a^{-1/2} G S_b^{-1/2}    adam_ema    sharp  AdamW
soap               Frobenius        soap: Adam in Shampoo's eigenbasis     adam_ema    sharp  AdamW
splus              Sign             splus: eigenbasis, 2/(m+n) scale       ema         lmo    sign·1e-3
sophia             Frobenius        hessian: G / max(|h|, ε)               adam_ema    sharp  same rule
sophia_spectral    Spectral (RMS)   hessian: |h|^{-½} polar(|h|^{-½} G)    adam_ema    lmo    AdamW
=================  ===============  =====================================  ==========  =====  =========

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
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator

from .presets import Hyperparameters, _adam_rule, _Polar, _RoutedAdamW, register_preset
from .recipe import DTYPES, Recipe, Rule

__all__ = ["ShampooHP", "ShampooOneSidedHP", "KLShampooHP", "SOAPHP", "SPlusHP", "SophiaHP"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
Frequency = Annotated[int, Field(ge=1)]
RootDtype = Literal["float32", "float64"]


def _hidden_only(matrix: Rule, other: Rule) -> Recipe:
    return Recipe(default=other, roles={"hidden": matrix})


def _rule(h: Any, norm: str, precond: str, options: dict[str, Any], momentum: str, mode: str, **extra: Any) -> Rule:
    return Rule(norm=norm, preconditioner=precond, preconditioner_options=options, momentum=momentum,
                beta=h.momentum, mode=mode, weight_decay=h.weight_decay, **extra)


class ShampooHP(Hyperparameters, _RoutedAdamW):
    """Shampoo; ``beta2=None`` accumulates sums, ``eps`` regularizes A + εI, ``power`` p of A^{-p} G B^{-p}."""

    momentum: Beta = 0.9
    beta2: Beta | None = None
    eps: NonNeg = 1e-12
    power: Positive = 0.25
    sides: Literal["both", "left", "right"] = "both"
    precondition_frequency: Frequency = 1
    root_dtype: RootDtype = "float32"
    weight_decay: NonNeg = 0.0


class ShampooOneSidedHP(ShampooHP):
    power: Positive = 0.5
    sides: Literal["both", "left", "right"] = "left"


def _shampoo(h: ShampooHP) -> Recipe:
    options = {"beta2": h.beta2, "eps": h.eps, "power": h.power, "sides": h.sides,
               "precondition_frequency": h.precondition_frequency, "root_dtype": DTYPES[h.root_dtype]}
    return _hidden_only(_rule(h, "frobenius", "shampoo", options, "adam_ema", "sharp"), h.adamw_rule())


class KLShampooHP(Hyperparameters, _RoutedAdamW):
    """KL-Shampoo; ``reference=True``: the authors' schedule (``KLShampoo(reference=True)``)
    with their momentum, an EMA without bias correction (``"ema"``); their defaults are
    ``init=0.1, eps=1e-8, precondition_frequency=10, weight_decay=0.01``."""

    momentum: Beta = 0.9
    beta2: Beta = 0.95
    eps: NonNeg = 1e-12
    power: Positive = 0.5
    init: Positive = 1.0
    precondition_frequency: Frequency = 1
    root_dtype: RootDtype = "float32"
    weight_decay: NonNeg = 0.0
    reference: bool = False


def _kl_shampoo(h: KLShampooHP) -> Recipe:
    options = {"beta2": h.beta2, "eps": h.eps, "power": h.power, "init": h.init, "reference": h.reference,
               "precondition_frequency": h.precondition_frequency, "root_dtype": DTYPES[h.root_dtype]}
    momentum = "ema" if h.reference else "adam_ema"
    return _hidden_only(_rule(h, "frobenius", "kl_shampoo", options, momentum, "sharp"), h.adamw_rule())


class SOAPHP(Hyperparameters, _RoutedAdamW):
    """SOAP's defaults: betas (0.95, 0.95), Shampoo β = β2, refresh every 10 steps, wd 0.01."""

    lr: float | torch.Tensor = 3e-3
    momentum: Beta = 0.95
    beta2: Beta = 0.95
    shampoo_beta2: Beta | None = 0.95
    eps: NonNeg = 1e-8
    precondition_frequency: Frequency = 10
    root_dtype: RootDtype = "float32"
    weight_decay: NonNeg = 0.01
    reference: bool = False


def _soap(h: SOAPHP) -> Recipe:
    """``reference=True``: SOAP's published schedule (``SOAP(reference=True)``), and the other
    parameters take Adam with SOAP's own betas, eps and weight decay (not the ``adamw_*`` ones)."""
    options = {"beta2": h.beta2, "eps": h.eps, "shampoo_beta2": h.shampoo_beta2,
               "precondition_frequency": h.precondition_frequency, "root_dtype": DTYPES[h.root_dtype], "reference": h.reference}
    other = _adam_rule("adam", (h.momentum, h.beta2), h.eps, h.weight_decay) if h.reference else h.adamw_rule()
    return _hidden_only(_rule(h, "frobenius", "soap", options, "adam_ema", "sharp"), other)


class SPlusHP(Hyperparameters, _RoutedAdamW):
    """SPlus without iterate averaging; the 2/(m+n) width scaling is part of the norm (and
    scales the weight decay). Other parameters: SPlus's sign(M) · ``others_scale``
    (``others="sign"``), or the AdamW rule (``others="adamw"``, ``adamw_*`` hyperparameters)."""

    lr: float | torch.Tensor = 0.1
    momentum: Beta = 0.9
    shampoo_beta2: Beta | None = 0.999
    precondition_frequency: Frequency = 100
    shape_scale: bool = True
    root_dtype: RootDtype = "float32"
    weight_decay: NonNeg = 0.0
    others: Literal["sign", "adamw"] = "sign"
    others_scale: NonNeg = 1e-3


def _splus(h: SPlusHP) -> Recipe:
    options = {"shampoo_beta2": h.shampoo_beta2, "precondition_frequency": h.precondition_frequency,
               "shape_scale": h.shape_scale, "root_dtype": DTYPES[h.root_dtype]}
    other = (_rule(h, "sign", "none", {}, "ema", "lmo", lr_ratio=h.others_scale) if h.others == "sign" else h.adamw_rule())
    return _hidden_only(_rule(h, "sign", "splus", options, "ema", "lmo"), other)


class SophiaHP(Hyperparameters, _RoutedAdamW, _Polar):
    """Hessian-diagonal preconditioning; needs ``loss_fn`` + ``params`` or ``from_graph=True``."""

    momentum: Beta = 0.965
    beta2: Beta = 0.99
    eps: Positive = 1e-12
    every: Frequency = 10
    samples: Frequency = 1
    seed: int = 0
    loss_fn: Callable[..., Any] | None = None
    loss_params: Mapping[str, Any] | None = None
    from_graph: bool = False
    weight_decay: NonNeg = 0.0

    @model_validator(mode="after")
    def _source(self) -> SophiaHP:
        if (self.loss_fn is None) == (not self.from_graph):
            raise ValueError(
                "the Hessian estimate needs exactly one source: loss_fn=<params dict -> loss> with "
                "loss_params=dict(model.named_parameters()), or from_graph=True with loss.backward(create_graph=True)"
            )
        if self.loss_fn is not None and self.loss_params is None:
            raise ValueError("loss_fn needs loss_params=dict(model.named_parameters()) (the tensors loss_fn takes)")
        return self

    def options(self) -> dict[str, Any]:
        return {"loss_fn": self.loss_fn, "params": self.loss_params, "beta2": self.beta2, "eps": self.eps, "power": 0.5,
                "every": self.every, "samples": self.samples, "seed": self.seed, "from_graph": self.from_graph}


def _sophia(h: SophiaHP) -> Recipe:
    return Recipe(default=_rule(h, "frobenius", "hessian", h.options(), "adam_ema", "sharp"))


def _sophia_spectral(h: SophiaHP) -> Recipe:
    matrix = _rule(h, "spectral", "hessian", h.options(), "adam_ema", "lmo", scale="rms",
                   ns_method=h.ns_method, ns_steps=h.ns_steps, ns_dtype=h.ns_dtype)
    return _hidden_only(matrix, h.adamw_rule())


for _name, _hp, _build, _src in (
    ("shampoo", ShampooHP, _shampoo, "Gupta, Koren & Singer 2018 (Shampoo)"),
    ("shampoo_one_sided", ShampooOneSidedHP, _shampoo, "Gupta et al. 2018; one-sided variant (R = I)"),
    ("kl_shampoo", KLShampooHP, _kl_shampoo, "Lin et al. 2025 (KL-Shampoo)"),
    ("soap", SOAPHP, _soap, "Vyas et al. 2024 (SOAP)"),
    ("splus", SPlusHP, _splus, "Frans, Levine & Abbeel 2025 (SPlus), without iterate averaging"),
    ("sophia", SophiaHP, _sophia, "Liu et al. 2023 (Sophia, Hutchinson estimator), without clipping"),
    ("sophia_spectral", SophiaHP, _sophia_spectral, "Hessian-diagonal D around the spectral LMO (Theorem 1)"),
):
    register_preset(_name, _hp, _build, _src)
