"""Whole-matrix work on sharded parameters: all_to_all to owners and back.

N same-shape parameters are each split along ``dim`` over W ranks. Parameter i is *owned*
by one rank (contiguous balanced blocks: rank r owns ``⌊N/W⌋ + [r < N mod W]`` of them).
One ``all_to_all`` sends every shard to its owner, which concatenates the W pieces into
whole parameters and runs ``fn`` on all of them in one batched call; a second
``all_to_all`` returns each rank the slices of the results it holds. Every rank thus does
about 1/W of the whole-matrix work, on whole matrices, so the result equals the
single-process computation exactly (same batched kernel on the same data).

Communication per call, for N parameters of ``numel`` entries each, in ``b`` bytes:
each rank sends and receives ≈ (W−1)/W · N·numel·b/W in each of the two exchanges, i.e.
≈ 2·(W−1)/W² · N·numel·b per rank and 2·(W−1)/W · N·numel·b over all ranks — the same
volume as one all-gather of the shards would move, but without every rank redoing every
matrix. ``with counting() as stats:`` counts the bytes this rank sends inside the block
(``STATS`` counts every exchange of the process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .layout import ShardLayout

__all__ = ["owned_counts", "owned_range", "to_owners", "from_owners", "apply_whole", "gather_to_all", "CommStats", "STATS", "counting"]


@dataclass
class CommStats:
    """Bytes this process sent through the exchanges, and how many collectives it ran."""

    bytes_sent: int = 0
    calls: int = 0

    def reset(self) -> None:
        self.bytes_sent, self.calls = 0, 0


STATS = CommStats()
_COUNTERS: list[CommStats] = [STATS]  # STATS and the counters of the open ``counting`` blocks


@contextmanager
def counting() -> Iterator[CommStats]:
    """A fresh ``CommStats`` that counts the exchanges this process makes inside the block."""
    stats = CommStats()
    _COUNTERS.append(stats)
    try:
        yield stats
    finally:
        _COUNTERS.remove(stats)


def owned_counts(n: int, world: int) -> list[int]:
    """How many of ``n`` parameters each rank owns (balanced contiguous blocks)."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def owned_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the parameters rank ``rank`` owns."""
    counts = owned_counts(n, world)
    start = sum(counts[:rank])
    return start, start + counts[rank]


def _all_to_all(send: Tensor, send_splits: list[int], recv_splits: list[int], group: dist.ProcessGroup | None) -> Tensor:
    recv = send.new_empty(sum(recv_splits))
    dist.all_to_all_single(recv, send.contiguous(), recv_splits, send_splits, group=group)
    me = dist.get_rank(group)
    for stats in _COUNTERS:
        stats.bytes_sent += (sum(send_splits) - send_splits[me]) * send.element_size()
        stats.calls += 1
    return recv


def to_owners(local: Tensor, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> Tensor:
    """Stacked local shards ``(N, *local_shape)`` → this rank's owned whole parameters ``(n_own, *shape)``."""
    assert layout.dim is not None
    W, r, n = layout.world, layout.rank, local.shape[0]
    counts = owned_counts(n, W)
    x = local if comm_dtype is None else local.to(comm_dtype)
    send_splits = [counts[q] * layout.local_numel(r) for q in range(W)]
    recv_splits = [counts[r] * layout.local_numel(p) for p in range(W)]
    recv = _all_to_all(x.reshape(-1), send_splits, recv_splits, layout.group)
    pieces = [chunk.view(counts[r], *layout.local_shape(p)) for p, chunk in enumerate(recv.split(recv_splits))]
    return torch.cat(pieces, dim=layout.dim + 1).to(local.dtype)


def from_owners(whole: Tensor, n: int, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> Tensor:
    """Inverse of ``to_owners``: owned whole results ``(n_own, *shape)`` → stacked local shards ``(n, *local_shape)``."""
    assert layout.dim is not None
    W, r = layout.world, layout.rank
    counts = owned_counts(n, W)
    x = whole if comm_dtype is None else whole.to(comm_dtype)
    parts = x.split(layout.sizes(), dim=layout.dim + 1)
    send = torch.cat([p.reshape(-1) for p in parts])
    send_splits = [counts[r] * layout.local_numel(p) for p in range(W)]
    recv_splits = [counts[q] * layout.local_numel(r) for q in range(W)]
    recv = _all_to_all(send, send_splits, recv_splits, layout.group)
    return recv.view(n, *layout.local_shape(r)).to(whole.dtype)


def gather_to_all(values: Tensor, n: int, layout: ShardLayout) -> Tensor:
    """Per-parameter results ``(n_own, *rest)`` from every owner → all ``(n, *rest)`` on every rank."""
    W, r = layout.world, layout.rank
    counts = owned_counts(n, W)
    rest = tuple(values.shape[1:])
    k = math.prod(rest)
    send = values.reshape(-1).repeat(W)
    recv = _all_to_all(send, [counts[r] * k] * W, [counts[q] * k for q in range(W)], layout.group)
    return recv.view(n, *rest)


def _gather_owned(local: Tensor, layout: ShardLayout, comm_dtype: torch.dtype | None) -> tuple[Tensor, slice]:
    """This rank's owned whole parameters (n_own, *shape) and which of the N they are."""
    layout.check_local(local, 1)
    start, stop = owned_range(local.shape[0], layout.world, layout.rank)
    return to_owners(local, layout, comm_dtype), slice(start, stop)


def apply_whole(fn: Callable[[Tensor, slice], Tensor], local: Tensor, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> Tensor:
    """Run ``fn`` on whole parameters and return this rank's shards of its output.

    ``local`` stacks this rank's shards of N same-shape parameters: ``(N, *local_shape)``.
    ``fn(whole, owned)`` receives the owned whole parameters ``(n_own, *shape)`` and the
    slice of the N parameters they are (to index per-parameter data such as Shampoo
    factors) and returns a tensor of the same shape. Unsharded layouts call ``fn`` on
    everything locally (replicated computation, as DDP does).
    """
    n = local.shape[0]
    if layout.dim is None or layout.world == 1:
        return fn(local, slice(0, n))
    whole, owned = _gather_owned(local, layout, comm_dtype)
    out = fn(whole, owned) if owned.stop > owned.start else whole
    if tuple(out.shape) != tuple(whole.shape):
        raise ValueError(f"apply_whole: fn must return its input's shape {tuple(whole.shape)}, got {tuple(out.shape)}")
    return from_owners(out, n, layout, comm_dtype)


def apply_whole_reduce(fn: Callable[[Tensor, slice], Tensor], local: Tensor, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> Tensor:
    """Like ``apply_whole`` for an ``fn`` that maps ``(n_own, *shape)`` to ``(n_own, *rest)``
    (a norm value or dual per parameter); every rank receives all N results."""
    n = local.shape[0]
    if layout.dim is None or layout.world == 1:
        return fn(local, slice(0, n))
    whole, owned = _gather_owned(local, layout, comm_dtype)
    out = fn(whole, owned)
    return gather_to_all(out.to(local.dtype), n, layout)
