"""Parts of an update rule, composed by ``rule(*parts)``: what a preset function is written with.

Each part sets a few fields of ``UpdateRule`` (the pipeline's configuration, ``recipe.py``)::

    steepest(norm, mode, **norm_options)           base norm and mode (Theorem 1's lmo or dual·lmo);
                                                   lmo(norm, ...) / sharp(norm, ...) for short
    precondition(name, **options)                  a registered preconditioner and its options
    heavy_ball(β, dampening, nesterov, on)         torch SGD's momentum (on the gradient or the update)
    ema(β, nesterov) / adam_momentum(β1) / lion_momentum(β1, β2)
    decoupled_decay(λ) / coupled_decay(λ)          W ← W(1 − ηλ)  /  g ← g + λW
    trust_ratio(kind, ...)                         LAMB/LARS per-layer ratio (``update_stages.py``)

and ``everywhere(rule)`` / ``matrices(rule, others)`` / ``hidden_only(rule, others)`` route
rules to roles. A field set by two parts is an error, so a rule reads as a list of its choices.
"""

from __future__ import annotations

from typing import Any

from .recipe import Recipe, UpdateRule

__all__ = [
    "rule", "steepest", "lmo", "sharp", "precondition", "heavy_ball", "ema", "adam_momentum", "lion_momentum",
    "decoupled_decay", "coupled_decay", "trust_ratio", "everywhere", "matrices", "hidden_only",
]

Part = dict[str, Any]


def rule(*parts: Part, **fields: Any) -> UpdateRule:
    """The ``UpdateRule`` with the fields of every part (and ``fields``); a field set twice raises."""
    merged: dict[str, Any] = {}
    for part in (*parts, fields):
        twice = sorted(set(merged) & set(part))
        if twice:
            raise TypeError(f"rule(): {twice} set by two parts")
        merged.update(part)
    return UpdateRule(**merged)


def steepest(norm: str, mode: str, **norm_options: Any) -> Part:
    """Steepest descent in the base norm ``norm``; ``mode`` "lmo" (U = lmo(d), normalized) or
    "sharp" (U = ‖d‖_* · lmo(d)); ``norm_options`` (scale, ns_*) configure a spectral norm."""
    return {"norm": norm, "mode": mode, **norm_options}


def lmo(norm: str, **norm_options: Any) -> Part:
    """``steepest(norm, "lmo")``: normalized steepest descent."""
    return steepest(norm, "lmo", **norm_options)


def sharp(norm: str, **norm_options: Any) -> Part:
    """``steepest(norm, "sharp")``: unnormalized (plain gradient descent for Frobenius)."""
    return steepest(norm, "sharp", **norm_options)


def precondition(name: str, **options: Any) -> Part:
    """The preconditioner registered as ``name``, built with ``options``."""
    return {"preconditioner": name, "preconditioner_options": options}


def heavy_ball(beta: float, *, dampening: float = 0.0, nesterov: bool = False, on: str = "gradient") -> Part:
    """torch.optim.SGD's momentum (none when β = 0); ``on="update"``: on the preconditioned direction."""
    kind = "none" if beta == 0 else ("nesterov" if nesterov else "heavy_ball")
    return {"momentum": kind, "beta": beta, "dampening": dampening, **({"momentum_on": on} if on != "gradient" else {})}


def ema(beta: float, *, nesterov: bool = False) -> Part:
    """B ← βB + (1−β)g (none when β = 0); ``nesterov``: the direction (1−β)g + βB (torch.optim.Muon)."""
    if nesterov:
        return {"momentum": "ema_nesterov", "beta": beta}
    return {"momentum": "ema" if beta else "none", "beta": beta}


def adam_momentum(beta1: float) -> Part:
    """Adam's M̂ = M/(1 − β1ᵗ), M ← β1 M + (1 − β1) g."""
    return {"momentum": "adam_ema", "beta": beta1}


def lion_momentum(beta1: float, beta2: float) -> Part:
    """Lion: direction β1·B + (1 − β1)·g from the old buffer, then B ← β2·B + (1 − β2)·g."""
    return {"momentum": "lion", "direction_beta": beta1, "beta": beta2}


def decoupled_decay(weight_decay: float) -> Part:
    """W ← W(1 − η·budget·λ) (AdamW's)."""
    return {"weight_decay": weight_decay}


def coupled_decay(weight_decay: float) -> Part:
    """g ← g + λW before everything else (torch SGD/Adagrad/RMSprop's L2 penalty)."""
    return {"weight_decay": weight_decay, "weight_decay_mode": "coupled"}


def trust_ratio(kind: str, **options: float | None) -> Part:
    """A per-layer trust ratio (``"update"``: LAMB, ``"triangle"``: LARS); options ``coefficient``, ``clamp``, ``eps``."""
    return {"trust_ratio": kind, **{f"trust_{k}": v for k, v in options.items()}}


def everywhere(rule: UpdateRule) -> Recipe:
    """Every parameter takes ``rule``."""
    return Recipe(default=rule)


def matrices(rule: UpdateRule, others: UpdateRule) -> Recipe:
    """Hidden matrices and conv kernels take ``rule``; everything else (embeddings, heads, vectors) ``others``."""
    return Recipe(default=others, roles={"hidden": rule, "conv": rule})


def hidden_only(rule: UpdateRule, others: UpdateRule) -> Recipe:
    """Hidden matrices take ``rule``; everything else ``others``."""
    return Recipe(default=others, roles={"hidden": rule})
