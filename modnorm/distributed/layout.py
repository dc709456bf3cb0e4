"""Where the pieces of a sharded parameter live: ``ShardLayout``.

A parameter of global shape ``P`` is either replicated on every rank (DDP, plain tensors)
or split along one dimension ``d`` over the ranks of one process group (FSDP2's
``Shard(d)``; HSDP's ``(Replicate(), Shard(d))`` shards over the last mesh dimension and
replicates over the others). Rank ``r`` holds the slice ``[r·c, min((r+1)·c, P[d]))`` with
``c = ⌈P[d]/W⌉`` — ``torch.chunk`` semantics, which DTensor and FSDP2 use — so the trailing
ranks may hold fewer (or zero) rows. Every rank can compute every other rank's local shape
from the global shape alone, which is what lets the exchange avoid a size handshake.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

__all__ = ["ShardLayout", "chunk_sizes", "layout_of", "is_dtensor"]


def chunk_sizes(size: int, world: int) -> list[int]:
    """Rows each of ``world`` ranks holds of a dimension of ``size`` (torch.chunk semantics)."""
    c = -(-size // world) if size > 0 else 0
    return [max(0, min(c, size - r * c)) for r in range(world)]


def is_dtensor(x: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (imported lazily)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(x, DTensor)


@dataclass(frozen=True)
class ShardLayout:
    """A parameter's global shape and how it is split over a process group.

    Attributes:
        shape: global shape of one parameter (without any stacking batch dimension).
        dim: the sharded dimension of the parameter (non-negative), or ``None`` when every
            rank holds the whole tensor.
        group: the process group the shards are spread over (``None``: the default group).
    """

    shape: tuple[int, ...]
    dim: int | None = None
    group: dist.ProcessGroup | None = None

    @property
    def world(self) -> int:
        return 1 if self.dim is None else dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return 0 if self.dim is None else dist.get_rank(self.group)

    def sizes(self) -> list[int]:
        """Length of the sharded dimension on each rank."""
        assert self.dim is not None
        return chunk_sizes(self.shape[self.dim], self.world)

    def local_shape(self, rank: int) -> tuple[int, ...]:
        if self.dim is None:
            return self.shape
        s = list(self.shape)
        s[self.dim] = self.sizes()[rank]
        return tuple(s)

    def local_numel(self, rank: int) -> int:
        return math.prod(self.local_shape(rank))

    def check_local(self, local: Tensor, batch: int, name: str = "tensor") -> None:
        """Raise if ``local`` (stacked over ``batch`` leading dims) is not this rank's shard."""
        want = self.local_shape(self.rank)
        got = tuple(local.shape[batch:])
        if got != want:
            raise ValueError(
                f"{name}: local shard has shape {got} but a {self.shape} parameter split along dim "
                f"{self.dim} over {self.world} ranks (torch.chunk semantics, as FSDP2/DTensor use) "
                f"gives rank {self.rank} the shape {want}; shard with fully_shard/distribute_tensor"
            )


def layout_of(x: Tensor, batch: int = 0, name: str = "tensor") -> ShardLayout:
    """The ``ShardLayout`` of a DTensor (or a replicated layout for a plain tensor).

    ``batch`` leading dimensions are a stacking batch, not part of the parameter (their
    placement must not be ``Shard``). Raises for placements the optimizer cannot use:
    ``Partial`` (unreduced gradients) and more than one ``Shard`` placement.
    """
    if not is_dtensor(x):
        return ShardLayout(tuple(x.shape[batch:]))
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = x.device_mesh, x.placements
    shard_dims: list[tuple[int, int]] = []
    for mesh_dim, p in enumerate(placements):
        if isinstance(p, Shard):
            shard_dims.append((mesh_dim, p.dim if p.dim >= 0 else p.dim + x.ndim))
        elif not isinstance(p, Replicate):
            raise ValueError(
                f"{name}: placement {p} on mesh dim {mesh_dim} is not supported; expected Shard(d) "
                f"or Replicate() (a Partial gradient must be reduced first, e.g. with .redistribute(placements=[Replicate()]) "
                f"or by FSDP2's reduce-scatter), got placements {tuple(placements)}"
            )
    shape = tuple(x.shape[batch:])
    if not shard_dims:
        return ShardLayout(shape)
    if len(shard_dims) > 1:
        raise ValueError(
            f"{name}: sharded over {len(shard_dims)} mesh dimensions {tuple(placements)}; expected one Shard(d) "
            f"(FSDP2) or (Replicate(), Shard(d)) (HSDP). Shard each parameter along one dimension only"
        )
    mesh_dim, d = shard_dims[0]
    if d < batch:
        raise ValueError(f"{name}: sharded along stacking dim {d}; expected a Shard on a parameter dim (>= {batch})")
    return ShardLayout(shape, d - batch, mesh.get_group(mesh_dim))
