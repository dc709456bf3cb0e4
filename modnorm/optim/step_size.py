"""Global step-size stages: one multiplier for the step, from every parameter's direction and the loss.

The pipeline computes, per parameter k, a direction U_k from its (momentum) gradient d_k
(the preconditioned LMO or sharp operator, times the parameter's budget b_k), and then
moves W_k ← W_k − η·γ·U_k. A *step-size stage* chooses γ after every direction of the
step is known; ``"constant"`` is γ = 1 (no stage). The stage sees, per bucket, the
stacked inputs X = c·d and outputs U of the norm, the budgets, the parameters and their
state, and the loss; it returns one scalar (``Polyak``) or one multiplier per bucket (a
per-group estimate such as Prodigy's: buckets never mix param groups).
A stage that keeps a running statistic stores it in the parameters' state (so it is
saved in ``state_dict``), under the keys it lists in ``state_keys`` (``init_state``
allocates them). A stage may also act *before* the directions (``prepare``): from every
stepped parameter's descent gradient g, value and state it returns a ``Scaling`` that the
pipeline applies to the whole step — the gradient statistics see the loss σ·f (gradient
and coupled decay × σ), the preconditioner's ε is read in the units of a loss σ_ε·f
(``Preconditioner.for_loss_scale``), lr (step and decoupled decay) × ρ, step × γ. Its new
state goes into the step's shadow states, so it commits or is discarded with the step.
D-adaptation's Prodigy (``prodigy.py``) is such a stage.

**Polyak** (``step_size="polyak"``). The first-order decrease a step −γ·U promises is
γ·P with P = Σ_k b_k ⟨X_k, U_k⟩ (= Σ b_k ‖X_k‖* in lmo mode, Σ b_k ‖X_k‖*² in sharp
mode, Theorem 1's dual norm of each parameter's preconditioned norm). Polyak's choice
makes that decrease equal the gap to the optimal value f*:

    γ_t = (f_t − f*) / P_t          (0 when f_t ≤ f* or P_t = 0)
    γ_t ← min(γ_t, growth · γ_{t−1})                    (growth cap; growth=None: off)
    γ_t ← min(γ_t, max_step)                            (SPS-max cap;  max_step=None: off)

and the step is W ← W − lr·γ_t·U (lr is then the fraction of the gap to close: lr = 1
aims at f*). Invariance: if U is homogeneous of degree −k in the gradient (k = 1 for
D = V^½: SANIA; k = ½ for D = V^¼: MuAdam; k = 0 for Adam's M/√V and Muon) then P is
of degree 1 − k, so γ·U is of degree 0 in (f − f*, gradient) jointly: multiplying the
loss (and f*) by c > 0 leaves the iterates unchanged, for every such rule, as long as ε
is 0 (an absolute ε breaks homogeneity). The ratio γ_t/γ_{t−1} is a pure number, so the
growth cap keeps every invariance; under W = A ⊙ W', f and P are unchanged when the norm
moves with the variables (D ↦ A ⊙ D), so Polyak keeps Theorem 2's scale invariance.
``max_step`` is in the units of γ (loss / P) and breaks loss-scale invariance: use it
for noisy f − f* only. Why the growth cap: the momentum's dual norm P collapses when
the momentum averages noise out (M ≪ √V) while f − f* stays at the noise floor (f* = 0
below the reachable loss), and the uncapped γ then grows by orders of magnitude within a
few hundred steps; with growth = 1 (the default) γ never increases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..distributed.bucket import placement_key
from .hparams import ConfigError
from .stages import oriented_gradients, with_coupled_decay

__all__ = ["Direction", "Scaling", "StageInput", "StepSizeStage", "Polyak", "StageKind", "POLYAK", "make_step_size",
           "loss_value", "group_stage", "stage_inputs", "stage_loss"]


@dataclass
class Direction:
    """One bucket's computed step, before it is applied.

    Attributes:
        params: the bucket's parameters.
        states: their optimizer state dicts.
        X: the stacked input of the norm, c·d (B, *shape).
        U: the stacked direction, lmo(X) or sharp(X) (B, *shape), before lr and budgets.
        budgets: per-parameter budget × shape factor.
    """

    params: Sequence[Tensor]
    states: Sequence[dict[str, Any]]
    X: Tensor
    U: Tensor
    budgets: Sequence[float]

    def decrease(self) -> Tensor:
        """Σ_i b_i ⟨X_i, U_i⟩: the first-order decrease of the step −U (float64, 0-d)."""
        per = (self.X.double() * self.U.double()).flatten(1).sum(1)
        return (per * torch.tensor(list(self.budgets), dtype=torch.float64, device=per.device)).sum()


@dataclass(frozen=True)
class Scaling:
    """What a stage's ``prepare`` sets for one step (1 everywhere: nothing changes).

    Attributes:
        loss: σ, the pipeline's gradient statistics see σ·g (coupled decay included).
        eps: σ_ε, the preconditioners' ε is read in the units of the loss σ_ε·f.
        lr: ρ, every group's lr × ρ (the step and the decoupled decay).
        step: γ, the step alone × γ.
    """

    loss: float = 1.0
    eps: float = 1.0
    lr: float = 1.0
    step: float = 1.0


@dataclass
class StageInput:
    """One parameter of a step, for ``StepSizeStage.prepare``.

    Attributes:
        param: the parameter (its own shape).
        grad: its descent gradient ∓∇f (maximize) + λW (coupled decay), in the state dtype.
        state: its shadow state (assign new tensors to keys; never write the old ones).
        lr: its group's lr (a float).
    """

    param: Tensor
    grad: Tensor
    state: dict[str, Any]
    lr: float


class StepSizeStage:
    """Base class: ``factor(loss, directions)`` → one multiplier, or a list with one per
    ``Direction`` (bucket), after the directions; ``prepare(inputs, states)`` → a ``Scaling``
    of the step, before them (``runs_before``). ``needs_loss``: refuse a step without a loss."""

    needs_loss: bool = False
    runs_before: bool = False  # prepare() scales the step before the directions; factor() is not called
    state_keys: tuple[str, ...] = ()
    exact_state: frozenset[str] = frozenset()  # keys kept in the compute dtype under 16-bit state storage

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
        """The stage's state for a parameter's first step: here each ``state_keys`` entry, unset (inf)."""
        return {k: torch.tensor(math.inf, dtype=torch.float64) for k in self.state_keys}

    def prepare(self, inputs: Sequence[StageInput], states: Iterable[dict[str, Any]]) -> Scaling:
        """The step's ``Scaling`` from this step's parameters (``states``: every parameter's committed state)."""
        raise NotImplementedError

    def factor(self, loss: float | None, directions: Sequence[Direction]) -> float | list[float]:
        raise NotImplementedError


class Polyak(StepSizeStage):
    """γ = min((f − f*)/P, growth·γ_prev, max_step) (module docstring)."""

    needs_loss = True
    state_keys = ("polyak_step",)

    def __init__(self, f_star: float = 0.0, max_step: float | None = None, growth: float | None = 1.0) -> None:
        self.f_star, self.max_step, self.growth = float(f_star), max_step, growth

    def factor(self, loss: float | None, directions: Sequence[Direction]) -> float:
        assert loss is not None
        P = float(sum((d.decrease() for d in directions), torch.zeros((), dtype=torch.float64)))
        gap = loss - self.f_star
        gamma = gap / P if gap > 0 and P > 0 else 0.0  # P = inf gives 0; a NaN P gives 0
        previous = [float(s["polyak_step"]) for d in directions for s in d.states if "polyak_step" in s]
        if self.growth is not None and previous:
            gamma = min(gamma, self.growth * min(previous))
        if self.max_step is not None:
            gamma = min(gamma, self.max_step)
        for d in directions:
            for s in d.states:
                s["polyak_step"] = torch.tensor(gamma, dtype=torch.float64)
        return gamma

    def __repr__(self) -> str:
        return f"Polyak(f_star={self.f_star}, max_step={self.max_step}, growth={self.growth})"


@dataclass(frozen=True)
class StageKind:
    """A named step-size stage (an entry of ``catalog.STEP_SIZES``): ``build(param_group)`` makes
    it; ``group_keys`` are the hyperparameters that configure it (every param group must agree)."""

    build: Callable[[dict[str, Any]], StepSizeStage]
    group_keys: tuple[str, ...]


def _polyak(group: dict[str, Any]) -> Polyak:
    return Polyak(group.get("f_star", 0.0), group.get("max_step"), group.get("polyak_growth", 1.0))


POLYAK = StageKind(_polyak, ("f_star", "max_step", "polyak_growth"))


def make_step_size(group: dict[str, Any], stages: Mapping[str, StageKind]) -> StepSizeStage | None:
    """The stage a param group's hyperparameters ask for among ``stages`` (None for ``"constant"``)."""
    kind = group.get("step_size", "constant")
    if kind == "constant":
        return None
    if kind in stages:
        return stages[kind].build(group)
    raise ValueError(f"step_size must be one of {('constant', *stages)}, got {kind!r}")


def loss_value(loss: Any) -> float | None:
    """The loss as a Python float (a 1-element tensor or a number), None when absent."""
    if loss is None:
        return None
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"the loss must be a scalar (1-element tensor or number) for the step-size stage, got shape {tuple(loss.shape)}")
        return float(loss.detach())
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return float(loss)
    raise TypeError(f"the loss must be a number or a 1-element tensor, got {type(loss).__name__}")


def group_stage(param_groups: Sequence[dict[str, Any]], stages: Mapping[str, StageKind]) -> StepSizeStage | None:
    """The step-size stage of an optimizer's param groups (all groups must agree on its settings)."""
    kinds = {g.get("step_size", "constant") for g in param_groups}
    keys = ("step_size", *(k for kind in sorted(kinds, key=str) if kind in stages for k in stages[kind].group_keys))
    settings = {tuple(_hashable(g.get(k)) for k in keys) for g in param_groups}
    if len(settings) > 1:
        raise ConfigError(f"param groups disagree on the step-size stage {keys}: {sorted(settings, key=str)}; "
                          "the stage is one statistic over all parameters, so set them the same in every group")
    stage = make_step_size(param_groups[0], stages) if param_groups else None
    if stage is not None and stage.needs_loss and any(g.get("maximize") for g in param_groups):
        raise ConfigError("step_size='polyak' closes the gap f − f_star of a loss to minimize; use maximize=False (negate the objective)")
    return stage


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def stage_inputs(jobs: Sequence[tuple[Sequence[tuple[Tensor, Any, dict[str, Any]]], Any, Any, bool]],
                 state_dtype: Callable[[Tensor], torch.dtype]) -> list[StageInput]:
    """``StageInput``s of a step's buckets ((param, plan, shadow state) members, step, lr, maximize):
    the descent gradient as the pipeline forms it (``stages.oriented_gradients``, ``with_coupled_decay``)."""
    out = []
    for members, _, lr, maximize in jobs:  # a bucket shares its plan's shape, dtype and decay
        plan, dtype = members[0][1], state_dtype(members[0][0])
        grads = oriented_gradients([p.grad.reshape(plan.shape) for p, _, _ in members], maximize=maximize, state_dtype=dtype)
        if plan.spec.coupled:
            views = [p.detach().reshape(plan.shape) for p, _, _ in members]
            grads = with_coupled_decay(grads, views=views, weight_decay=plan.spec.weight_decay, state_dtype=dtype)
        out += [StageInput(p, g, state, float(lr)) for (p, _, state), g in zip(members, grads)]
    return out


def stage_loss(stage: StepSizeStage | None, param_groups: Sequence[dict[str, Any]], loss: Any) -> float | None:
    """The loss as a float for the stage; refuses a missing one (or DTensor parameters) before anything changes."""
    if stage is None:
        return None
    name = param_groups[0]["step_size"]
    value = loss_value(loss)
    if stage.needs_loss and value is None:
        raise ValueError(f"step_size={name!r} needs the loss: call optimizer.step(closure) "
                         "with a closure that returns it, or optimizer.step(loss=loss); nothing was updated")
    if any(placement_key(p) for g in param_groups for p in g["params"]):
        raise NotImplementedError(f"step_size={name!r} does not support DTensor (FSDP) parameters yet; use step_size='constant'")
    return value
