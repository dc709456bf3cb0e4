"""Validated optimizer configuration: preset + hyperparameters, round-tripping through JSON.

    cfg = modnorm.optim.OptimizerConfig(preset="muadam", hyperparameters={"lr": 3e-4})
    text = cfg.model_dump_json()
    opt = modnorm.optimizer(model, config=text)        # or config=cfg, or a dict

Errors are ``ConfigError`` (a ValueError) naming the field, the value and the allowed
range; an unknown preset lists the known ones; an unknown hyperparameter is named and
the valid ones listed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalog import PRESETS
from .hparams import ConfigError, allowed
from .presets import Hyperparameters, Preset

__all__ = ["OptimizerConfig", "ConfigError", "get_preset", "validate_hyperparameters"]


def get_preset(name: str) -> Preset:
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)} (or pass a modnorm.optim.Recipe)")
    return PRESETS[name]


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def validate_hyperparameters(preset: Preset, values: dict[str, Any], where: str = "") -> Hyperparameters:
    """Validate ``values`` (missing ones take the preset's defaults) into the preset's model."""
    model = preset.hyperparameters
    prefix = f"preset {preset.name!r}{where}"
    unknown = sorted(k for k in values if k not in model.model_fields)
    if unknown:
        raise ConfigError(f"{prefix}: unknown hyperparameter(s) {unknown}; valid hyperparameters: {_field_names(model)}")
    try:
        return model(**values)
    except ValidationError as e:
        lines, seen = [], set()
        for err in e.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            if field and field in seen:  # one line per field (a union reports each arm)
                continue
            seen.add(field)
            loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("float", "is-instance", "int", "bool"))) or "(model)"
            text = allowed(model, field) if field else None
            allowed_text = f"; allowed: {text}" if text else ""
            got = f" (got {err['input']!r})" if "input" in err and err["loc"] else ""
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}{got}{allowed_text}")
        raise ConfigError(f"{prefix}: invalid hyperparameters:\n  " + "\n  ".join(lines)) from None


class OptimizerConfig(BaseModel):
    """Everything ``modnorm.optimizer`` needs besides the parameters, JSON-serializable."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "adamw"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    budgets: bool = False
    nonfinite: Literal["raise", "skip"] = "raise"
    state_dtype: Literal["float32", "float64", "bfloat16", "float16"] | None = None
    state_rounding: Literal["stochastic", "nearest"] = "stochastic"
    rounding_seed: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _validate(self) -> OptimizerConfig:
        preset = get_preset(self.preset)
        hp = validate_hyperparameters(preset, self.hyperparameters)
        if any(not isinstance(v, (int, float, bool, str, tuple, list, type(None))) for v in hp.__dict__.values()):
            raise ConfigError("OptimizerConfig: hyperparameters must be plain numbers/strings (a tensor lr is not JSON-serializable)")
        # Store the full, normalized set (defaults filled in) so the JSON is self-contained.
        object.__setattr__(self, "hyperparameters", hp.model_dump(mode="json"))
        return self
