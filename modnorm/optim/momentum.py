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

__all__ = ["EXACT_MOMENTUM_STATE", "MomentumKind", "MOMENTUM_KINDS", "momentum_key", "init_momentum", "apply_momentum", "momentum_scale"]

MomentumKind = Literal["none", "heavy_ball", "nesterov", "ema", "ema_nesterov", "adam_ema", "lion", "schedule_free"]
MOMENTUM_KINDS: tuple[str, ...] = get_args(MomentumKind)


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


def _formed(rows: list[Tensor] | None, cast: Callable[[Tensor, Tensor], Any] | None, make: Callable[[], list[Tensor]],
            source: Sequence[Tensor], update_: Callable[[list[Tensor]], Any], row: Callable[[int], Tensor]) -> list[Tensor]:
    """``make()`` (out of place), or the same values formed in ``rows``: a copy of ``source`` then
    ``update_`` in place (one kernel, out of place or in place, gives the same bits); with
    ``cast``, rows of a narrower dtype, each ``cast(rows[i], row(i))`` from one temporary ``row(i)``."""
    if rows is None:
        return make()
    if cast is not None:
        for i, r in enumerate(rows):
            cast(r, row(i))
        return rows
    torch._foreach_copy_(rows, list(source))
    update_(rows)
    return rows


def _accumulated(bufs: list[Tensor], grads: list[Tensor], beta: float, dampening: float) -> list[Tensor]:
    """β B + (1-τ) g, out of place."""
    new = torch._foreach_mul(bufs, beta)
    torch._foreach_add_(new, grads, alpha=1.0 - dampening)
    return new


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
    same kernels; the caller must be done with d when the bucket ends (it stacks a copy).

    ``out`` (with ``defer``): a (count, *shape) tensor that receives d, returned as its rows, so
    that the caller need not stack d; where d is the new buffer (heavy_ball, ema, adam_ema) the
    rows are also the temporaries, so no other copy of the new buffers exists. ``cast(row, x)``
    (``Norm.step_input``): ``out`` is of a narrower dtype; each row of d is formed as a temporary
    in the state dtype and cast into it."""
    rows = list(out.unbind(0)) if out is not None else None
    if kind in ("none", "schedule_free") or (beta == 0.0 and kind in ("heavy_ball", "nesterov", "ema", "ema_nesterov")):
        return _formed(rows, cast, lambda: grads, grads, lambda _: None, lambda i: grads[i])
    key = momentum_key(kind)
    bufs = [s[key] for s in states]  # type: ignore[index]
    if rows is not None and cast is not None and defer is not None and kind in ("nesterov", "ema_nesterov"):
        return _rows_then_redo(kind, beta, dampening, bufs, grads, step, rows, cast, defer, key if probe else None)
    direct = kind in ("heavy_ball", "ema", "adam_ema")  # d is the new buffer
    into = rows if direct and cast is None else None
    if kind in ("heavy_ball", "nesterov"):
        if step == 1:
            new = _formed(into, None, lambda: [g.to(b.dtype, copy=True) for g, b in zip(grads, bufs)], grads, lambda _: None, grads.__getitem__)
            redo = lambda: torch._foreach_copy_(bufs, grads)  # noqa: E731
        else:
            accumulate = lambda ts: (torch._foreach_mul_(ts, beta), torch._foreach_add_(ts, grads, alpha=1.0 - dampening))  # noqa: E731
            new = _formed(into, None, lambda: _accumulated(bufs, grads, beta, dampening), bufs, accumulate, bufs.__getitem__)
            redo = lambda: accumulate(bufs)  # noqa: E731
    elif kind in ("ema", "ema_nesterov", "adam_ema", "lion"):
        new = _formed(into, None, lambda: torch._foreach_lerp(bufs, grads, 1.0 - beta), bufs,
                      lambda ts: torch._foreach_lerp_(ts, grads, 1.0 - beta), bufs.__getitem__)
        redo = lambda: torch._foreach_lerp_(bufs, grads, 1.0 - beta)  # noqa: E731
    else:
        raise ValueError(f"unknown momentum kind {kind!r}; choose one of {MOMENTUM_KINDS}")
    if defer is not None:
        defer.replace(states, key, new, redo, probe)
    else:
        for s, b in zip(states, new):
            s[key] = b  # type: ignore[index]
    if kind == "lion":  # β₁ B_{t-1} + (1-β₁) g, from the old buffer
        return _formed(rows, cast, lambda: torch._foreach_lerp(grads, bufs, direction_beta), grads,
                       lambda ts: torch._foreach_lerp_(ts, bufs, direction_beta), lambda i: torch.lerp(grads[i], bufs[i], direction_beta))
    if kind == "nesterov":
        return _formed(rows, cast, lambda: torch._foreach_add(grads, new, alpha=beta), grads,
                       lambda ts: torch._foreach_add_(ts, new, alpha=beta), lambda i: torch.add(grads[i], new[i], alpha=beta))
    if kind == "ema_nesterov":
        return _formed(rows, cast, lambda: torch._foreach_lerp(grads, new, beta), grads,
                       lambda ts: torch._foreach_lerp_(ts, new, beta), lambda i: torch.lerp(grads[i], new[i], beta))
    if rows is not None and cast is not None:  # d is the new buffer, kept aside in the state dtype
        return _formed(rows, cast, lambda: new, new, lambda _: None, new.__getitem__)
    return new  # adam_ema: the bias correction 1/(1-β^t) is ``momentum_scale``, applied after stacking


def _rows_then_redo(kind: str, beta: float, dampening: float, bufs: list[Tensor], grads: list[Tensor], step: int,
                    rows: list[Tensor], cast: Callable[[Tensor, Tensor], Any], defer: Any, key: str | None) -> list[Tensor]:
    """Nesterov kinds into a narrower stack: row by row, the new buffer B'_i and d_i are one-matrix
    temporaries (d_i cast into the row); B'_i is probed (``key``: the state key, None: no probe)
    and dropped, and every buffer is redone in place at the commit (the foreach kernels of
    ``apply_momentum``, the same bits): no new buffers are held for the bucket. The stacked
    path's preconditioner is the identity, so nothing reads them from the state meanwhile."""
    def new_row(i: int) -> Tensor:
        b, g = bufs[i], grads[i]
        if kind == "ema_nesterov":
            return torch.lerp(b, g, 1.0 - beta)
        return g.to(b.dtype, copy=True) if step == 1 else torch.mul(b, beta).add_(g, alpha=1.0 - dampening)

    probes = []
    for i, r in enumerate(rows):
        new = new_row(i)
        if key is not None:
            probes.append(finiteness_probes([new]))
        cast(r, torch.lerp(grads[i], new, beta) if kind == "ema_nesterov" else torch.add(grads[i], new, alpha=beta))
    if kind == "ema_nesterov":
        defer.later(lambda: torch._foreach_lerp_(bufs, grads, 1.0 - beta))
    elif step == 1:
        defer.later(lambda: torch._foreach_copy_(bufs, grads))
    else:
        defer.later(lambda: (torch._foreach_mul_(bufs, beta), torch._foreach_add_(bufs, grads, alpha=1.0 - dampening)))
    if key is not None:
        defer.probe_rows(key, probes, lambda: all(bool(new_row(i).isfinite().all()) for i in range(len(rows))))
    return rows
