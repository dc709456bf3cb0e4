"""Learning-rate schedules as torch ``LRScheduler``s: lr_t = base_lr · factor(t).

t is the scheduler's ``last_epoch``: the number of ``scheduler.step()`` calls so far, so
the optimizer's step number (1-based, the one preconditioners count) is t + 1.

- ``WSD`` (warmup–stable–decay): factor = (t+1)/W for t < W (linear warmup), 1 until the
  decay starts at T − D, then decreases to ``min_ratio`` at t = T (linear, cosine or
  1 − √ shape), and stays there.
- ``LinearCooldown``: 1 until ``start``, then linear to ``min_ratio`` over ``steps`` steps
  (a cooldown added to a constant-lr run, e.g. resumed from a checkpoint).
- ``RefreshSpike``: multiplies another factor (default 1) by ``spike`` for ``duration``
  steps from each preconditioner refresh, i.e. where (t mod every) < duration; refreshes
  happen at optimizer steps 1, 1 + k, 1 + 2k, … (SOAP/SPlus ``precondition_frequency``,
  KFAC ``update_freq``, read from the param group when ``every`` is None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WSD", "LinearCooldown", "RefreshSpike", "wsd_factor"]


def wsd_factor(t: int, total: int, warmup: int, decay: int, shape: str = "linear", min_ratio: float = 0.0) -> float:
    """The WSD multiplier at scheduler step t (see the module docstring)."""
    if t < warmup:
        return (t + 1) / warmup
    start = total - decay
    if t < start:
        return 1.0
    x = min(1.0, (t - start) / decay) if decay > 0 else 1.0  # progress through the decay, 0 → 1
    if shape == "linear":
        f = 1.0 - x
    elif shape == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * x))
    else:  # "sqrt"
        f = 1.0 - math.sqrt(x)
    return min_ratio + (1.0 - min_ratio) * f


def _check(name: str, value: float, low: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and value >= low):
        raise ValueError(f"{name} must be {what}, got {value!r}")


class _Factor(LRScheduler):
    """lr = base_lr · self.factor(last_epoch) for every param group."""

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


class WSD(_Factor):
    """Warmup–stable–decay over ``total_steps``: ``warmup_steps`` up, ``decay_steps`` down (to ``min_ratio``)."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, decay_steps: int | None = None,
                 decay_fraction: float = 0.2, shape: Literal["linear", "cosine", "sqrt"] = "linear",
                 min_ratio: float = 0.0, last_epoch: int = -1) -> None:
        _check("WSD: total_steps", total_steps, 1, "an int ≥ 1")
        _check("WSD: warmup_steps", warmup_steps, 0, "an int ≥ 0")
        if shape not in ("linear", "cosine", "sqrt"):
            raise ValueError(f"WSD: shape must be 'linear', 'cosine' or 'sqrt', got {shape!r}")
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"WSD: decay_fraction must be in [0, 1], got {decay_fraction!r}")
        _check("WSD: min_ratio", min_ratio, 0.0, "≥ 0")
        decay = round(decay_fraction * total_steps) if decay_steps is None else decay_steps
        if not 0 <= decay <= total_steps - warmup_steps:
            raise ValueError(f"WSD: decay_steps ({decay}) must be in [0, total_steps − warmup_steps = {total_steps - warmup_steps}]")
        self.total, self.warmup, self.decay, self.shape, self.min_ratio = total_steps, warmup_steps, decay, shape, min_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return wsd_factor(t, self.total, self.warmup, self.decay, self.shape, self.min_ratio)


class LinearCooldown(_Factor):
    """Constant until ``start``, then linear to ``min_ratio`` over ``steps`` steps."""

    def __init__(self, optimizer: Optimizer, start: int, steps: int, min_ratio: float = 0.0, last_epoch: int = -1) -> None:
        _check("LinearCooldown: start", start, 0, "an int ≥ 0")
        _check("LinearCooldown: steps", steps, 1, "an int ≥ 1")
        _check("LinearCooldown: min_ratio", min_ratio, 0.0, "≥ 0")
        self.start, self.steps, self.min_ratio = start, steps, min_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return wsd_factor(t, self.start + self.steps, 0, self.steps, "linear", self.min_ratio)


class RefreshSpike(_Factor):
    """``spike`` × ``base(t)`` for ``duration`` steps from each preconditioner refresh, else ``base(t)``."""

    def __init__(self, optimizer: Optimizer, spike: float, every: int | None = None, duration: int = 1,
                 base: Callable[[int], float] | None = None, last_epoch: int = -1) -> None:
        _check("RefreshSpike: spike", spike, 0.0, "≥ 0")
        _check("RefreshSpike: duration", duration, 1, "an int ≥ 1")
        if every is None:
            group = optimizer.param_groups[0]
            every = group.get("precondition_frequency", group.get("update_freq"))
            if every is None:
                raise ValueError("RefreshSpike: pass every=<refresh interval>; the optimizer has no precondition_frequency/update_freq")
        _check("RefreshSpike: every", every, 1, "an int ≥ 1")
        self.spike, self.every, self.duration = float(spike), int(every), int(duration)
        self.base = base or (lambda t: 1.0)
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return self.base(t) * (self.spike if t % self.every < self.duration else 1.0)
