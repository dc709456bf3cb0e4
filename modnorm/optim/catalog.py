"""The library's registries, constructed here from their parts (no import registers anything):

- ``PRECONDITIONERS``: name → factory(**options) → ``Preconditioner`` (rules and geometries name them);
- ``PRESETS``: name → ``Preset`` (``modnorm.optimizer(model, name)``);
- ``STEP_SIZES``: name → ``StageKind``, the global step-size stages (``step_size=name``).

``register_preconditioner``/``register_preset``/``register_step_size`` add to them; ``with
PRESETS.scoped():`` (and the others' ``scoped()``) undoes the additions made inside the
block, and ``builtin_presets()``, ``builtin_preconditioners()``, ``builtin_step_sizes()`` build fresh copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core_presets import CORE_PRESETS
from .diagonal import adagrad, adam, sania
from .hessian import HessianDiagonal
from .kfac import KFAC
from .kfac_presets import KFAC_PRESETS
from .kl_shampoo import KLShampoo
from .matrix_preconditioners import SOAP, Shampoo, SPlus
from .matrix_presets import MATRIX_PRESETS
from .moment_variants import AMSGrad, RMSprop
from .preconditioner import Identity, Preconditioner
from .presets import Hyperparameters, Preset
from .prodigy import PRODIGY, PRODIGY_STAGE
from .recipe import Recipe
from .registry import Registry
from .step_size import POLYAK, StageKind, StepSizeStage
from .zoo_presets import ZOO_PRESETS

__all__ = [
    "PRECONDITIONERS", "PRESETS", "STEP_SIZES", "builtin_preconditioners", "builtin_presets", "builtin_step_sizes",
    "register_preconditioner", "get_preconditioner", "register_preset", "register_step_size",
]

Factory = Callable[..., Preconditioner]


def builtin_preconditioners() -> Registry[Factory]:
    """A fresh registry of the built-in preconditioners."""
    return Registry("preconditioner", {
        "none": Identity, "adam": adam, "sania": sania, "adagrad": adagrad, "amsgrad": AMSGrad, "rmsprop": RMSprop,
        "shampoo": Shampoo, "soap": SOAP, "splus": SPlus, "kl_shampoo": KLShampoo, "hessian": HessianDiagonal, "kfac": KFAC,
    }, hint="Add one with modnorm.optim.register_preconditioner(name, factory)")


def builtin_presets() -> Registry[Preset]:
    """A fresh registry of the built-in presets."""
    return Registry("preset", {p.name: p for p in (*CORE_PRESETS, *MATRIX_PRESETS, *ZOO_PRESETS, *KFAC_PRESETS, PRODIGY)},
                    hint="or pass a modnorm.optim.Recipe")


def builtin_step_sizes() -> Registry[StageKind]:
    """A fresh registry of the built-in step-size stages (``"constant"`` is no stage)."""
    return Registry("step size", {"polyak": POLYAK, "prodigy": PRODIGY_STAGE},
                    hint="Add one with modnorm.optim.catalog.register_step_size(name, build, group_keys)")


PRECONDITIONERS: Registry[Factory] = builtin_preconditioners()
PRESETS: Registry[Preset] = builtin_presets()
STEP_SIZES: Registry[StageKind] = builtin_step_sizes()


def register_step_size(name: str, build: Callable[[dict[str, Any]], StepSizeStage], group_keys: tuple[str, ...]) -> None:
    """Make ``step_size=name`` build ``build(param_group)``; ``group_keys``: the hyperparameters
    that configure it (every param group must agree on them)."""
    STEP_SIZES.register(name, StageKind(build, tuple(group_keys)))


def register_preconditioner(name: str, factory: Factory) -> None:
    """Make ``factory(**hyperparameters)`` available under ``name`` to presets, recipes and geometries."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_preconditioner: name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_preconditioner: factory for {name!r} must be callable, got {type(factory).__name__}")
    PRECONDITIONERS.register(name, factory)


def get_preconditioner(name: str, **hyperparameters: object) -> Preconditioner:
    """Instantiate the preconditioner registered under ``name``."""
    factory = PRECONDITIONERS.get(name)
    try:
        return factory(**hyperparameters)
    except TypeError as e:
        raise TypeError(f"preconditioner {name!r}: bad hyperparameters {sorted(hyperparameters)}: {e}") from None


def register_preset(name: str, hyperparameters: type[Hyperparameters] | Preset, build: Callable[[Any], Recipe] | None = None,
                    source: str = "") -> None:
    """Add a preset: a ``Preset`` (``presets.preset(function, ...)``), or a hyperparameter model
    and ``build(validated_hyperparameters) -> Recipe``."""
    if isinstance(hyperparameters, Preset):
        PRESETS.register(name, Preset(name, hyperparameters.hyperparameters, hyperparameters.build, hyperparameters.source))
        return
    if not (isinstance(hyperparameters, type) and issubclass(hyperparameters, Hyperparameters)):
        raise TypeError(f"register_preset({name!r}): hyperparameters must subclass modnorm.optim.Hyperparameters")
    if build is None:
        raise TypeError(f"register_preset({name!r}): build(hyperparameters) -> Recipe is missing")
    PRESETS.register(name, Preset(name, hyperparameters, build, source))
