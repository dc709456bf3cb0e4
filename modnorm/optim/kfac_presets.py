"""KFAC presets: layer-declared Kronecker factors (``kfac.py``) in the one pipeline.

=============  =====================  =============================================  ======================  =====  ======
preset         base (hidden/head/conv) preconditioner                                momentum                mode   others
=============  =====================  =============================================  ======================  =====  ======
kfac           Frobenius              kfac: L = S^½, R = A^½ (damped: (S⊗A + δI)⁻¹)  heavy-ball on the update sharp  AdamW
ekfac          Frobenius              ekfac: KFAC eigenbasis, per-step diagonal       heavy-ball on the update sharp  AdamW
kfac_spectral  Spectral (RMS→RMS)     kfac_spectral: L = (S+√δ)^½, R = (A+√δ)^½        ema                     lmo    AdamW
=============  =====================  =============================================  ======================  =====  ======

Weights of nn.Linear / nn.Conv2d layers (roles hidden, head, conv) take the KFAC rule;
biases, embeddings and gains the AdamW rule (``adamw_*``). ``modnorm.optimizer(model,
"kfac")`` passes the model (whose layers are hooked); with parameters, pass ``model=``.
The model is kept in the param groups, so ``state_dict()`` pickles it (no
``weights_only=True`` loading), as for a loss_fn-driven sophia.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from torch import nn

from .presets import Hyperparameters, _Polar, _RoutedAdamW, register_preset
from .recipe import DTYPES, Recipe, Rule

__all__ = ["KFACHP", "KFACSpectralHP"]

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]
Frequency = Annotated[int, Field(ge=1)]


class KFACHP(Hyperparameters, _RoutedAdamW):
    """KFAC's hyperparameters; ``model`` is the module whose layers declare the statistics."""

    lr: Any = 1e-2
    momentum: Beta = 0.9
    damping: NonNeg = 1e-3
    stat_decay: Beta = 0.95
    update_freq: Frequency = 10
    fisher: Literal["empirical", "ggn", "mc"] = "empirical"
    root_dtype: Literal["float32", "float64"] = "float32"
    weight_decay: NonNeg = 0.0
    model: nn.Module | None = None

    @model_validator(mode="after")
    def _needs_model(self) -> KFACHP:
        if self.model is None:
            raise ValueError("KFAC reads its statistics from the layers: pass the model (modnorm.optimizer(model, 'kfac')) or model=<nn.Module>")
        return self

    def options(self, form: str) -> dict[str, Any]:
        return {"model": self.model, "damping": self.damping, "stat_decay": self.stat_decay, "update_freq": self.update_freq,
                "fisher": self.fisher, "form": form, "root_dtype": DTYPES[self.root_dtype]}


class KFACSpectralHP(KFACHP, _Polar):
    lr: Any = 1e-3


def _recipe(matrix: Rule, h: KFACHP) -> Recipe:
    return Recipe(default=h.adamw_rule(), roles={"hidden": matrix, "head": matrix, "conv": matrix})


def _sharp(form: str):
    def build(h: KFACHP) -> Recipe:
        rule = Rule(norm="frobenius", preconditioner="kfac", preconditioner_options=h.options(form),
                    momentum="heavy_ball" if h.momentum else "none", beta=h.momentum, momentum_on="update",
                    mode="sharp", weight_decay=h.weight_decay)
        return _recipe(rule, h)

    return build


def _kfac_spectral(h: KFACSpectralHP) -> Recipe:
    rule = Rule(norm="spectral", scale="rms", ns_method=h.ns_method, ns_steps=h.ns_steps, ns_dtype=h.ns_dtype,
                preconditioner="kfac", preconditioner_options=h.options("kfac_spectral"),
                momentum="ema" if h.momentum else "none", beta=h.momentum, mode="lmo", weight_decay=h.weight_decay)
    return _recipe(rule, h)


for _name, _hp, _build, _src in (
    ("kfac", KFACHP, _sharp("kfac"), "Martens & Grosse 2015 (K-FAC); Grosse & Martens 2016 (KFC, convolutions)"),
    ("ekfac", KFACHP, _sharp("ekfac"), "George et al. 2018 (EKFAC)"),
    ("kfac_spectral", KFACSpectralHP, _kfac_spectral, "KFAC factors around the spectral LMO (Theorem 1 with L = S^½, R = A^½)"),
):
    register_preset(_name, _hp, _build, _src)
