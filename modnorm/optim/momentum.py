"""Momentum: the gradient direction d_t handed to the (preconditioned) LMO or sharp operator.

Kinds (β the momentum coefficient, τ the dampening, B the buffer, g_t the gradient):

- ``"none"``:          d = g
- ``"heavy_ball"``:    B_1 = g_1, B_t = β B_{t-1} + (1-τ) g_t;  d = B        (torch.optim.SGD)
- ``"nesterov"``:      the same B;  d = g + β B                            (SGD, nesterov=True)
- ``"ema"``:           B_t = β B_{t-1} + (1-β) g_t (lerp);  d = B          (Scion, Signum)
- ``"ema_nesterov"``:  the same B;  d = (1-β) g + β B                      (torch.optim.Muon)
- ``"adam_ema"``:      M_t = β M_{t-1} + (1-β) g_t;  d = M_t/(1-β^t)        (Adam's M̂)
- ``"lion"``:          d = β₁ B_{t-1} + (1-β₁) g_t (before the update);  B_t = β B_{t-1} + (1-β) g_t
                       (Lion: β₁ = the rule's ``direction_beta``, β its ``beta``; with a Sign base)
- ``"schedule_free"``: no buffer on g (d = g); the momentum lives in the iterates: z (state ``z``,
                       the plain SGD sequence) and y (the parameter), updated by
                       ``update_stages.schedule_free`` (schedule-free, β = the interpolation β₁)

Buffers live in the parameter's state under ``momentum_buffer`` (heavy-ball and EMA
kinds) or ``exp_avg`` (adam_ema), as in torch.optim. Everything is ``torch._foreach_*``
over the bucket, out of place: new buffers replace the old ones in the state dicts (so a
step can be discarded), or, on the stacked path, are redone in place when the step commits
(``deferred.py``). The returned tensors may alias the new buffers: callers must not
modify them in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .deferred import finiteness_probes

__all__ = ["EXACT_MOMENTUM_STATE", "MomentumKind", "MOMENTUM_KINDS", "NEW_BUFFER_KINDS", "momentum_key", "init_momentum",
           "apply_momentum", "buffers_at_commit", "new_buffer", "momentum_scale"]

MomentumKind = Literal["none", "heavy_ball", "nesterov", "ema", "ema_nesterov", "adam_ema", "lion", "schedule_free"]
MOMENTUM_KINDS: tuple[str, ...] = get_args(MomentumKind)


NEW_BUFFER_KINDS: tuple[str, ...] = ("heavy_ball", "ema", "adam_ema")
"""The kinds whose direction d is the new buffer itself (which the stacked path may form in its rows)."""

EXACT_MOMENTUM_STATE = frozenset({"z"})
"""Momentum state kept in the compute dtype under 16-bit storage: schedule-free's z is an iterate (a copy of the parameter)."""


def momentum_key(kind: str) -> str | None:
    """State key of the buffer a momentum kind keeps (None for "none")."""
    if kind == "none":
        return None
    return {"adam_ema": "exp_avg", "schedule_free": "z"}.get(kind, "momentum_buffer")


def init_momentum(kind: str, param: Tensor, state_dtype: torch.dtype) -> dict[str, Tensor]:
    """Zero buffer(s) for one parameter."""
    key = momentum_key(kind)
    if key is None:
        return {}
    if kind == "schedule_free":  # z starts at the parameter; the averaging weights are CPU scalars like "step"
        scalar = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return {"z": param.detach().clone().to(state_dtype), "sf_weight_sum": scalar(0.0), "sf_lr_max": scalar(-1.0)}
    return {key: torch.zeros_like(param, dtype=state_dtype, memory_format=torch.preserve_format)}


def momentum_scale(kind: str, beta: float, step: int) -> float:
    """The factor c with direction = c · (what ``apply_momentum`` returns): Adam's 1/(1-β^t), else 1."""
    return 1.0 / (1.0 - beta**step) if kind == "adam_ema" else 1.0


def _new_buffers_(kind: str, ts: list[Tensor], grads: Sequence[Tensor], beta: float, dampening: float, step: int) -> None:
    """ts (holding the old buffers) ← the new buffers, in place: the kind's formula, also the redo at the commit."""
    if kind in ("heavy_ball", "nesterov"):
        if step == 1:
            torch._foreach_copy_(ts, list(grads))
        else:
            torch._foreach_mul_(ts, beta)
            torch._foreach_add_(ts, list(grads), alpha=1.0 - dampening)
    else:
        torch._foreach_lerp_(ts, list(grads), 1.0 - beta)


def _new_buffers(kind: str, bufs: list[Tensor], grads: list[Tensor], beta: float, dampening: float, step: int) -> list[Tensor]:
    """``_new_buffers_`` out of place (one pass per tensor; the same kernels, the same bits)."""
    if kind in ("heavy_ball", "nesterov"):
        if step == 1:
            return [g.to(b.dtype, copy=True) for g, b in zip(grads, bufs)]
        new = torch._foreach_mul(bufs, beta)
        torch._foreach_add_(new, grads, alpha=1.0 - dampening)
        return new
    return torch._foreach_lerp(bufs, grads, 1.0 - beta)


def _direction(kind: str, grads: list[Tensor], new: list[Tensor], old: list[Tensor], beta: float, direction_beta: float,
               rows: list[Tensor] | None = None) -> list[Tensor]:
    """d from the gradients and the new (old, for "lion") buffers: out of place, or in ``rows``
    (a copy of the gradients, then the same kernel in place)."""
    ops = {"lion": (torch._foreach_lerp, torch._foreach_lerp_, old, {"weight": direction_beta}),
           "nesterov": (torch._foreach_add, torch._foreach_add_, new, {"alpha": beta}),
           "ema_nesterov": (torch._foreach_lerp, torch._foreach_lerp_, new, {"weight": beta})}
    if kind not in ops:
        return new  # heavy_ball, ema, adam_ema: d is the new buffer
    out_of_place, in_place, other, arg = ops[kind]
    if rows is None:
        return out_of_place(grads, other, **arg)
    torch._foreach_copy_(rows, grads)
    in_place(rows, other, **arg)
    return rows


def apply_momentum(
    kind: str,
    beta: float,
    dampening: float,
    states: Sequence[dict[str, Tensor]],
    grads: list[Tensor],
    step: int,
    direction_beta: float = 0.0,
    defer: Any = None,
    probe: bool = True,
    out: Tensor | None = None,
    cast: Callable[[Tensor, Tensor], Any] | None = None,
) -> list[Tensor]:
    """Compute the new buffers (assigned to each state's key: the old tensors are not written)
    and return the direction d for each parameter, up to the scalar ``momentum_scale`` (so
    that the caller can apply it to the stacked tensor in place). ``direction_beta``: β₁ of "lion".

    ``defer`` (``deferred.Deferred``): the new buffers are temporaries shown in the state until
    the bucket ends (checked then when ``probe``) and redone in place at the commit with the
    same kernels; the caller must be done with d when the bucket ends.

    ``out`` (with ``defer``): a (count, *shape) tensor that receives d, returned as its rows, so
    that the caller need not stack d; where d is the new buffer (heavy_ball, ema, adam_ema) the
    rows are also the temporaries, so no other copy of the new buffers exists. ``cast(row, x)``
    (``Norm.step_input``): ``out`` is of a narrower dtype; each row of d is formed as a temporary
    in the state dtype and cast into it."""
    rows = list(out.unbind(0)) if out is not None else None
    if kind in ("none", "schedule_free") or (beta == 0.0 and kind in ("heavy_ball", "nesterov", "ema", "ema_nesterov")):
        if rows is None:
            return grads
        if cast is None:
            torch._foreach_copy_(rows, grads)
        else:
            for r, g in zip(rows, grads):
                cast(r, g)
        return rows
    if kind not in MOMENTUM_KINDS:
        raise ValueError(f"unknown momentum kind {kind!r}; choose one of {MOMENTUM_KINDS}")
    key = momentum_key(kind)
    bufs = [s[key] for s in states]  # type: ignore[index]
    if rows is not None and cast is not None and defer is not None and kind in ("nesterov", "ema_nesterov"):
        return _rows_then_redo(kind, beta, dampening, bufs, grads, step, rows, cast, defer, key if probe else None)
    direct = kind in NEW_BUFFER_KINDS  # d is the new buffer
    if direct and rows is not None and cast is None:  # the new buffers formed in the stack's rows
        torch._foreach_copy_(rows, bufs)
        _new_buffers_(kind, rows, grads, beta, dampening, step)
        new = rows
    else:
        new = _new_buffers(kind, bufs, grads, beta, dampening, step)
    if defer is not None:
        defer.replace(states, key, new, lambda: _new_buffers_(kind, bufs, grads, beta, dampening, step), probe)
    else:
        for s, b in zip(states, new):
            s[key] = b  # type: ignore[index]
    if rows is None or (direct and cast is None):
        return _direction(kind, grads, new, bufs, beta, direction_beta)  # adam_ema: 1/(1-β^t) is ``momentum_scale``
    if cast is None:
        return _direction(kind, grads, new, bufs, beta, direction_beta, rows)
    for i, r in enumerate(rows):  # a narrower stack: one row's d at a time
        cast(r, _direction(kind, [grads[i]], [new[i]], [bufs[i]], beta, direction_beta)[0])
    return rows


def new_buffer(kind: str, beta: float, dampening: float, buf: Tensor, grad: Tensor, step: int) -> Tensor:
    """One parameter's new buffer as a temporary (``buf`` is not written): the kernels of every other path."""
    return _new_buffers(kind, [buf], [grad], beta, dampening, step)[0]


def buffers_at_commit(kind: str, beta: float, dampening: float, states: Sequence[dict[str, Tensor]], grads: list[Tensor],
                      step: int, defer: Any) -> list[Tensor]:
    """Form no new buffers now: ``defer`` (``deferred.Deferred``) computes them in place at the commit
    (``_new_buffers_``, the kernels of every other path). Returns the state's buffers, which hold
    the new values, d up to ``momentum_scale``, once the commit has run. For kinds whose d is the
    new buffer (heavy_ball, ema, adam_ema), when nothing reads it before the commit."""
    if kind not in NEW_BUFFER_KINDS:
        raise ValueError(f"buffers_at_commit: d is not the new buffer for momentum {kind!r}")
    bufs = [s[momentum_key(kind)] for s in states]  # type: ignore[index]
    defer.later(lambda: _new_buffers_(kind, bufs, grads, beta, dampening, step))
    return bufs


def _rows_then_redo(kind: str, beta: float, dampening: float, bufs: list[Tensor], grads: list[Tensor], step: int,
                    rows: list[Tensor], cast: Callable[[Tensor, Tensor], Any], defer: Any, key: str | None) -> list[Tensor]:
    """Nesterov kinds into a narrower stack: row by row, the new buffer B'_i and d_i are one-matrix
    temporaries (d_i cast into the row); B'_i is probed (``key``: the state key, None: no probe)
    and dropped, and every buffer is redone in place at the commit (``_new_buffers_``, the same
    kernels): no new buffers are held for the bucket. The stacked path's preconditioner is the
    identity, so nothing reads them from the state meanwhile."""
    def new_row(i: int) -> Tensor:
        return _new_buffers(kind, [bufs[i]], [grads[i]], beta, dampening, step)[0]

    probes = []
    for i, r in enumerate(rows):
        new = new_row(i)
        if key is not None:
            probes.append(finiteness_probes([new]))
        cast(r, _direction(kind, [grads[i]], [new], [bufs[i]], beta, 0.0)[0])
    defer.later(lambda: _new_buffers_(kind, bufs, grads, beta, dampening, step))
    if key is not None:
        defer.probe_rows(key, probes, lambda: all(bool(new_row(i).isfinite().all()) for i in range(len(rows))))
    return rows
