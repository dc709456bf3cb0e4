"""KFAC presets: layer-declared Kronecker factors (``kfac.py``) in the one pipeline.

Weights of nn.Linear / nn.Conv2d layers (roles hidden, head, conv) take the KFAC rule;
biases, embeddings and gains the AdamW rule (``adamw_*``). ``modnorm.optimizer(model,
"kfac")`` passes the model (whose layers are hooked); with parameters, pass ``model=``.
The model is kept in the param groups, so ``state_dict()`` pickles it (no
``weights_only=True`` loading), as for a loss_fn-driven sophia.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import model_validator
from torch import nn

from .hparams import Beta, Frequency, NonNeg, RootDtype
from .parts import decoupled_decay, ema, heavy_ball, lmo, precondition, rule, sharp
from .presets import Mixin, Polar, Preset, RoutedAdamW, preset
from .recipe import DTYPES, Recipe, UpdateRule

__all__ = ["KFAC_PRESETS"]


class LayerCurvature(Mixin):
    """KFAC's statistics; ``model`` is the module whose layers declare them."""

    damping: NonNeg = 1e-3
    stat_decay: Beta = 0.95
    update_freq: Frequency = 10
    fisher: Literal["empirical", "ggn", "mc"] = "empirical"
    root_dtype: RootDtype = "float32"
    model: nn.Module | None = None

    @model_validator(mode="after")
    def _needs_model(self) -> LayerCurvature:
        if self.model is None:
            raise ValueError("KFAC reads its statistics from the layers: pass the model (modnorm.optimizer(model, 'kfac')) or model=<nn.Module>")
        return self

    def curvature(self) -> Callable[[str], dict[str, Any]]:
        """form → the "kfac" preconditioner part of that form."""
        return lambda form: precondition("kfac", model=self.model, damping=self.damping, stat_decay=self.stat_decay,
                                         update_freq=self.update_freq, fisher=self.fisher, form=form, root_dtype=DTYPES[self.root_dtype])


def _layers(matrix: UpdateRule, others: UpdateRule) -> Recipe:
    """Weights of Linear/Conv layers (roles hidden, head, conv) take ``matrix``; the rest ``others``."""
    return Recipe(default=others, roles={"hidden": matrix, "head": matrix, "conv": matrix})


def kfac(momentum: Beta = 0.9, weight_decay: NonNeg = 0.0, *, curvature: Callable[[str], dict[str, Any]], adamw_rule: UpdateRule) -> Recipe:
    """K-FAC: L = S^½, R = A^½ (damped), heavy-ball momentum on the update."""
    return _layers(rule(sharp("frobenius"), curvature("kfac"), heavy_ball(momentum, on="update"), decoupled_decay(weight_decay)), adamw_rule)


def ekfac(momentum: Beta = 0.9, weight_decay: NonNeg = 0.0, *, curvature: Callable[[str], dict[str, Any]], adamw_rule: UpdateRule) -> Recipe:
    """EKFAC: the KFAC eigenbasis with a per-step diagonal."""
    return _layers(rule(sharp("frobenius"), curvature("ekfac"), heavy_ball(momentum, on="update"), decoupled_decay(weight_decay)), adamw_rule)


def kfac_spectral(momentum: Beta = 0.9, weight_decay: NonNeg = 0.0, *, curvature: Callable[[str], dict[str, Any]], adamw_rule: UpdateRule,
                  polar: dict[str, Any]) -> Recipe:
    """KFAC factors around the spectral LMO: L = (S+√δ)^½, R = (A+√δ)^½."""
    return _layers(rule(lmo("spectral", scale="rms", **polar), curvature("kfac_spectral"), ema(momentum), decoupled_decay(weight_decay)),
                   adamw_rule)


KFAC_PRESETS: tuple[Preset, ...] = (
    preset(kfac, lr=1e-2, mixins=(RoutedAdamW, LayerCurvature),
           source="Martens & Grosse 2015 (K-FAC); Grosse & Martens 2016 (KFC, convolutions)"),
    preset(ekfac, lr=1e-2, mixins=(RoutedAdamW, LayerCurvature), source="George et al. 2018 (EKFAC)"),
    preset(kfac_spectral, lr=1e-3, mixins=(RoutedAdamW, LayerCurvature, Polar),
           source="KFAC factors around the spectral LMO (Theorem 1 with L = S^½, R = A^½)"),
)
