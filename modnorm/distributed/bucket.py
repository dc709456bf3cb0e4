"""The optimizer's view of a bucket of FSDP2 (DTensor) parameters: local shards.

The optimizer updates a bucket of same-shape parameters in one batched pipeline. For
DTensor parameters it runs that pipeline on the *local shards* (``to_local()`` views that
share storage with the parameters and the state): momentum, Adam-type statistics, weight
decay and the update itself are elementwise, so they stay sharded and need no
communication. Only two things see whole matrices:

- the dual map: ``bucket.norm(N)`` wraps the preconditioned norm with
  ``sharded`` (all_to_all to owner ranks, see ``exchange``);
- preconditioners whose statistics are not elementwise (Shampoo/SOAP factors: their
  state holds plain, replicated tensors rather than DTensors shaped like the parameter)
  see whole tensors: ``bucket.precondition`` all-gathers the gradients and the
  preconditioner's sharded state (e.g. SOAP's V, which lives in the rotated basis),
  updates and builds the norm on whole tensors on every rank (replicated work), and
  hands each rank's slice of the updated sharded state back to the optimizer, which
  writes it when the step commits.

Bucket key: ``placement_key(p)`` separates parameters by sharding so a bucket never mixes
placements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..norms import Norm
from .layout import ShardLayout, is_dtensor, layout_of
from .sharded_norm import sharded, to_local

__all__ = ["ShardedBucket", "shard_bucket", "placement_key"]


def placement_key(p: Tensor) -> tuple:
    """Hashable description of how ``p`` is distributed (``()`` for a plain tensor)."""
    if not is_dtensor(p):
        return ()
    return (id(p.device_mesh), tuple(p.placements))  # type: ignore[attr-defined]


@dataclass
class ShardedBucket:
    """Local views of a bucket of DTensor parameters (see the module docstring)."""

    layout: ShardLayout
    like: Tensor  # one parameter, to rebuild DTensors for gathers
    views: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]
    whole_statistics: bool

    dstates: Sequence[dict[str, Any]] = ()  # the original states (DTensor values)

    def precondition(
        self, precond: Any, base: Norm, grads: Sequence[Tensor], step: int, ctx: Any, *, reserved: frozenset[str],
    ) -> Norm:
        """Update ``precond``'s statistics from the bucket's (local) ``grads`` and return its
        norm, wrapped to act on stacked local shards (see the module docstring). ``reserved``:
        the optimizer's own state keys (never gathered or written here)."""
        if not self.whole_statistics:
            precond.update_many(self.states, grads, step, ctx)
            return self.norm(precond.norm(base, self.states, step))
        gathered = [{k for k, v in s.items() if k not in reserved and is_dtensor(v)} for s in self.dstates]
        whole = [{k: (v.full_tensor() if k in keys else v) for k, v in s.items()} for s, keys in zip(self.dstates, gathered)]
        precond.update_many(whole, self.whole(grads), step, ctx)
        for local, w, keys in zip(self.states, whole, gathered):  # the new values; the optimizer commits them
            for k, v in w.items():
                if k not in reserved:
                    local[k] = self.local_slice(v) if k in keys else v
        return self.norm(precond.norm(base, whole, step))

    def local_slice(self, whole: Tensor) -> Tensor:
        """This rank's shard of a whole tensor shaped like one parameter (or a stack of them)."""
        if self.layout.dim is None:
            return whole
        sizes = self.layout.sizes()
        r = self.layout.rank
        return whole.narrow(whole.ndim - len(self.layout.shape) + self.layout.dim, sum(sizes[:r]), sizes[r])

    def norm(self, norm: Norm, comm_dtype: torch.dtype | None = None) -> Norm:
        """``norm`` (acting on the stacked bucket) made to act on stacked local shards."""
        return sharded(norm, self.layout, comm_dtype)

    def whole(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Whole tensors from local shards shaped like the parameters (all-gather)."""
        if self.layout.dim is None:
            return list(grads)
        from torch.distributed.tensor import DTensor

        p = self.like
        return [
            DTensor.from_local(g, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()).full_tensor()  # type: ignore[attr-defined]
            for g in grads
        ]


def shard_bucket(params: Sequence[Tensor], states: Sequence[dict[str, Any]], names: Sequence[str] = ()) -> ShardedBucket | None:
    """``None`` for plain tensors (DDP, single process); else the bucket's local views.

    Raises ``ValueError`` when parameters of one bucket are distributed differently or a
    gradient's placements differ from its parameter's (e.g. an unreduced ``Partial``).
    """
    if not any(is_dtensor(p) for p in params):
        return None
    names = list(names) or [f"#{i}" for i in range(len(params))]
    first = params[0]
    for name, p in zip(names, params):
        if not is_dtensor(p) or placement_key(p) != placement_key(first):
            raise ValueError(
                f"parameter {name!r} is {'a plain tensor' if not is_dtensor(p) else f'placed {tuple(p.placements)}'} but others of "
                f"its bucket are DTensors placed {tuple(first.placements)}; expected every same-shape parameter of a bucket to be "
                f"sharded alike (apply fully_shard to every block, or put differently sharded parameters in separate param groups)"
            )
        g = p.grad
        if not is_dtensor(g) or tuple(g.placements) != tuple(p.placements):
            got = tuple(g.placements) if is_dtensor(g) else "a plain tensor"
            raise ValueError(
                f"gradient of parameter {name!r} is {got}, expected a DTensor placed like its parameter {tuple(p.placements)}; "
                f"reduce it first (FSDP2's backward does this; for a Partial gradient use .redistribute(placements=...))"
            )
    layout = layout_of(first, name=f"parameter {names[0]!r}")
    local_states = [{k: to_local(v) if isinstance(v, Tensor) else v for k, v in s.items()} for s in states]
    whole = any(isinstance(v, Tensor) and v.ndim > 0 and not is_dtensor(v) for s in states for k, v in s.items() if k != "step")
    return ShardedBucket(
        layout=layout,
        like=first,
        views=[to_local(p).view(1) if p.ndim == 0 else to_local(p) for p in params],
        grads=[to_local(p.grad).reshape(1) if p.ndim == 0 else to_local(p.grad) for p in params],
        states=local_states,
        whole_statistics=whole and layout.dim is not None,
        dstates=list(states),
    )
