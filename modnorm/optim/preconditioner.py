"""The preconditioner interface: gradient statistics → a preconditioned norm (Theorem 1).

A preconditioner keeps per-parameter statistics (state tensors) and, at each step,
turns the parameter's base norm into a preconditioned one — a ``DNorm`` (entrywise D)
or an ``LRNorm`` (two-sided L, R), possibly nested (SOAP: an eigenbasis ``LRNorm``
around an Adam ``DNorm``). The optimizer then takes that norm's LMO or sharp operator
of the (momentum) gradient. Statistics and norms are batched: the optimizer stacks
same-shape parameters that share a rule, so ``norm`` receives one state dict per
parameter and returns a norm acting on the stacked tensor of shape (B, *param_shape).

One optimizer step, per bucket of same-shape parameters sharing a rule::

    d      = momentum(g)                        # the optimizer's, not the preconditioner's
    precond.update_many(states, grads, step, ctx)   # statistics from the raw gradients g
    norm   = precond.norm(base, states, step)   # DNorm / LRNorm over (B, *shape)
    U      = norm.lmo(stack(d))  or  norm.sharp(stack(d))

Override either ``update`` (one parameter at a time: simplest) or ``update_many`` (the
whole bucket at once: use ``torch._foreach_*`` for speed). A 0-D parameter is seen as
shape (1,).

Second-order statistics (Hessian estimates): a subclass that sets ``needs_hvp = True``
gets ``ctx.hvp(vectors) -> list[Tensor]`` in ``update_many``, returning H·v for each
parameter of the bucket (Pearlmutter's trick through the gradient graph). It needs the
gradients to carry their graph: the training step calls ``loss.backward(create_graph=True)``
(or passes ``closure`` to ``optimizer.step`` and the closure does); otherwise ``ctx.hvp``
raises an error saying so. ``ctx.closure``/``ctx.loss`` give the step's closure and loss.

Preconditioners are registered by name in ``modnorm.optim.catalog.PRECONDITIONERS``
(``register_preconditioner``); rules and geometries refer to them by that name.

Contract (checked by the optimizer's tests for every registered preconditioner):
- ``init_state`` allocates everything the preconditioner will ever need; state holds
  tensors and Python numbers only (so ``torch.load(weights_only=True)`` works). Keys
  must not collide with the optimizer's own: "step", "momentum_buffer", "exp_avg",
  "polyak_step".
- ``update``/``update_many`` change only their own state, from the raw gradient: in place
  (the optimizer then hands them copies, so that a failed step can be discarded), or, with
  ``updates_in_place = False`` (the built-ins), by assigning new tensors to their state
  keys without writing the old ones (no copies needed).
- ``norm`` does not modify state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..norms import Norm

__all__ = [
    "Preconditioner",
    "Identity",
    "StepContext",
    "RESERVED_STATE_KEYS",
    "check_eps",
]

State = dict[str, Tensor]
RESERVED_STATE_KEYS: frozenset[str] = frozenset({"step", "momentum_buffer", "exp_avg", "polyak_step"})


@dataclass
class StepContext:
    """What a preconditioner may need beyond the gradients of its bucket.

    Attributes:
        step: 1-based step count of every parameter in the bucket.
        params: the bucket's parameters, in their own shapes (0-D stays 0-D).
        names: their names ("" when unknown).
        closure: the closure passed to ``optimizer.step`` (or None).
        loss: what the closure returned (or None).
        defer: the step's ``deferred.Deferred`` when a built-in preconditioner may redo its
            statistics update in place at the commit instead of keeping new tensors (None: compute
            aside; always None under ``compile``, for DTensor shards and 16-bit state).
    """

    step: int
    params: Sequence[Tensor] = ()
    names: Sequence[str] = ()
    closure: Callable[[], object] | None = None
    loss: object = None
    defer: Any = None
    _shapes: Sequence[torch.Size] = field(default=(), repr=False)

    def hvp(self, vectors: Sequence[Tensor]) -> list[Tensor]:
        """Hessian-vector products H·v, one per parameter, v given in the bucket's shapes.

        Differentiates the gradients a second time, so the backward pass that produced
        them must have used ``create_graph=True``.
        """
        params = list(self.params)
        if len(vectors) != len(params):
            raise ValueError(f"StepContext.hvp: got {len(vectors)} vectors for {len(params)} parameters")
        grads = [p.grad for p in params]
        missing = [n or f"#{i}" for i, (n, g) in enumerate(zip(self.names or [""] * len(params), grads)) if g is None or g.grad_fn is None]
        if missing:
            raise RuntimeError(
                f"this preconditioner needs Hessian-vector products but the gradients of {missing} carry no graph: "
                "call loss.backward(create_graph=True) (in your closure or training step) before optimizer.step()"
            )
        vs = [v.reshape(p.shape).to(p.dtype) for v, p in zip(vectors, params)]
        with torch.enable_grad():
            Hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True, allow_unused=True)
        out = []
        for h, v, p in zip(Hv, vectors, params):
            h = torch.zeros_like(p) if h is None else h.detach()
            out.append(h.reshape(v.shape).to(v.dtype))
        return out


class Preconditioner:
    """Base class. Subclasses override ``init_state``, ``update`` (or ``update_many``) and ``norm``.

    ``step`` is the 1-based step count of the parameter (for bias corrections).
    ``state_dtype`` is the dtype statistics are kept in (fp32 for bf16 parameters).
    """

    needs_hvp: bool = False
    eager_only: bool = False  # needs ctx.params (e.g. layer statistics matched by parameter): never compiled
    updates_in_place: bool = True  # False: update_many assigns new tensors to state keys, never writes old ones
    # True: the new state is non-finite whenever a gradient entry is, and finite state bounds the
    # gradient (statistics of G ⊙ G or G Gᵀ): the step's finiteness check then skips momentum buffers
    covers_gradient: bool = False
    # the first ``warmup_steps`` steps of a parameter only feed ``update_many`` (with step ≤ 0):
    # no momentum, no update; later steps see the step count minus ``warmup_steps``
    warmup_steps: int = 0
    # state keys kept in the compute dtype when the optimizer stores state in 16 bits
    # (``low_precision``): decompositions of the statistics (eigenbases, inverse roots)
    exact_state: frozenset[str] = frozenset()

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        """Allocate this preconditioner's statistics for one parameter (zeros, usually)."""
        return {}

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        """Raise a ValueError when the hyperparameters cannot work in ``state_dtype`` (e.g. an ε
        that rounds to 0); called when the optimizer is built, before any step."""
        return None

    def upgrade_state(self, state: State) -> State | None:
        """A saved state in an earlier version's keys, as this version keeps it (a new dict; the
        saved one is not modified), or None when there is nothing to upgrade (the default)."""
        return None

    def update(self, state: State, grad: Tensor, step: int) -> None:
        """Update one parameter's statistics in place from its raw gradient."""
        return None

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        """Update a bucket's statistics; the default calls ``update`` per parameter."""
        for state, grad in zip(states, grads):
            self.update(state, grad, step)

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        """The preconditioned norm acting on the stacked (B, *shape) tensor."""
        raise NotImplementedError

    def decay_scale(self, shape: Sequence[int]) -> float:
        """Factor on the decoupled weight decay of a parameter of this shape: W ← W(1 − η λ s)."""
        return 1.0

    def for_loss_scale(self, scale: float) -> Preconditioner:
        """This preconditioner for statistics of the loss scale·f (a global stage's ``Scaling``):
        a damping ε is then read in those units. The default (no ε to rescale): itself."""
        return self

    def entrywise_divisor(self, states: Sequence[State], step: int) -> list[Tensor] | None:
        """Optional shortcut: when ``norm`` is ``DNorm(base, D)`` with D > 0 entrywise, return D²
        per parameter (fresh tensors); a Frobenius base in sharp mode then skips the stacked
        path (sharp = d / D²). None (the default): use ``norm``."""
        return None

    def diagonal_rows(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext,
                      use: Callable[[int, Tensor], None]) -> tuple[Callable[[int], Tensor], float] | None:
        """Optional, for a ``norm`` that is ``DNorm(base, D)`` with D > 0 built from the statistics
        alone: update the statistics from ``grads`` (as ``update_many`` with ``ctx.defer``: redone in
        place at the commit) and call ``use(i, D_i)`` for each parameter with this step's D_i, a
        temporary (the stacked D is never formed); then return (i ↦ D_i, lower): D_i formed anew
        from ``states[i]`` when called (bit for bit this step's once the statistics are committed)
        and a lower bound ``lower`` > 0 on every entry. An optimizer holding D⁻¹ ⊙ lmo(D⁻¹ ⊙ X) in
        parts (``Norm.lmo_parts``) divides by D_i again when it commits. None (the default): not
        offered, and nothing was done."""
        return None

    def sharp_growth(self, base: Norm, states: Sequence[State], shape: Sequence[int], step: int,
                     defer: Any) -> tuple[float, list[Tensor]] | None:
        """Optional, called after ``update_many``: (G, premises) proving max |sharp(X)| ≤ G · max |X|
        for every X of the bucket's stacked shape (parameters of ``shape``), where sharp is
        ``norm(base, states, step).sharp`` with the new statistics in ``states`` (every intermediate
        too, rounding included); ``premises`` are tensors that are finite exactly when the proof's
        premises hold (e.g. 0 or inf: read with the step's finiteness check). ``defer``
        (``deferred.Deferred``) reads max |x| of tensors in one batch. An optimizer may then form the
        sharp when it commits, from the committed statistics, instead of holding it until then.
        None (the default): not offered."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_eps(owner: str, eps: float, dtype: torch.dtype, exponent: float = 1.0, max_inverse: float | None = None) -> None:
    """Refuse an ε > 0 whose power ε^exponent (what the preconditioner divides by where the
    statistics vanish) rounds to 0 in ``dtype`` — 0/0 — or, with ``max_inverse``, exceeds it inverted."""
    if eps == 0.0:
        return
    info = torch.finfo(dtype)
    smallest = max(info.tiny, 1.0 / max_inverse) if max_inverse is not None else info.tiny
    if eps**exponent < smallest:
        raise ValueError(
            f"{owner}: eps={eps:g} is too small for the dtype {dtype}: the preconditioner divides by up to "
            f"eps^{exponent:g} = {eps**exponent:.3g}, below {smallest:.3g} (0/0 or overflow where the statistics vanish). "
            f"Use eps ≥ {smallest ** (1.0 / exponent):.3g}, or state_dtype='float32'/'float64'"
        )


class Identity(Preconditioner):
    """No preconditioning: the base norm itself."""

    updates_in_place = False

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        return base
