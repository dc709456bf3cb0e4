"""``distributed_lmo`` / ``distributed_sharp``: a norm's dual map on DTensors or lists of them.

Input: either one DTensor stacking B same-shape parameters, ``(*batch, *shape)`` with a
``Shard(d)`` on a parameter dim (as ``torch.stack`` of FSDP2 parameters gives), or a list
of same-shape, same-placement DTensors (FSDP2 parameters or gradients). Plain tensors and
replicated DTensors are computed locally, as every rank of DDP does. The result has the
input's type, shape and placements; see ``sharded_norm`` for which work is local and
``exchange`` for the all_to_all and its volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..norms import Norm
from .layout import ShardLayout, is_dtensor, layout_of
from .sharded_norm import sharded, to_local

__all__ = ["distributed_lmo", "distributed_sharp"]


def _wrap(local: Tensor, like: Tensor) -> Tensor:
    if not is_dtensor(like):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride())


def _apply(op: str, norm: Norm, G: Tensor | Sequence[Tensor], comm_dtype: torch.dtype | None) -> Tensor | list[Tensor]:
    if not isinstance(norm, Norm):
        raise TypeError(f"distributed_{op}: norm must be a modnorm.Norm, got {type(norm).__name__}")
    if isinstance(G, Tensor):
        if G.ndim < norm.ndim:
            raise ValueError(f"distributed_{op}: {norm!r} expects shape {norm.expected_shape()}, got {tuple(G.shape)}")
        layout = layout_of(G, batch=G.ndim - norm.ndim, name=f"distributed_{op}: G")
        out = getattr(sharded(norm, layout, comm_dtype), op)(to_local(G))
        return _wrap(out, G)
    Gs = list(G)
    if not Gs:
        return []
    if not all(isinstance(g, Tensor) for g in Gs):
        raise TypeError(f"distributed_{op}: G must be a Tensor or a list of Tensors")
    layouts = [layout_of(g, name=f"distributed_{op}: G[{i}]") for i, g in enumerate(Gs)]
    first = Gs[0]
    for i, (g, lay) in enumerate(zip(Gs, layouts)):
        same = lay.shape == layouts[0].shape and lay.dim == layouts[0].dim and lay.group == layouts[0].group
        if not same or (is_dtensor(g) != is_dtensor(first)) or (is_dtensor(g) and g.placements != first.placements):
            raise ValueError(
                f"distributed_{op}: G[{i}] has shape {tuple(g.shape)} and placements "
                f"{getattr(g, 'placements', 'plain tensor')}, but G[0] has {tuple(first.shape)} and "
                f"{getattr(first, 'placements', 'plain tensor')}; expected one shape and one placement per group "
                f"(group parameters by shape and sharding first)"
            )
    if len(layouts[0].shape) != norm.ndim:
        raise ValueError(f"distributed_{op}: {norm!r} acts on {norm.ndim}-D parameters, got shape {layouts[0].shape}")
    layout: ShardLayout = layouts[0]
    out = getattr(sharded(norm, layout, comm_dtype), op)(torch.stack([to_local(g) for g in Gs]))
    return [_wrap(o, g) for o, g in zip(out.unbind(0), Gs)]


def distributed_lmo(norm: Norm, G: Tensor | Sequence[Tensor], comm_dtype: torch.dtype | None = None) -> Tensor | list[Tensor]:
    """``norm.lmo`` of whole parameters, for sharded ``G`` (a stacked DTensor or a list).

    ``comm_dtype`` (e.g. ``torch.bfloat16`` on GPUs) is the dtype shards travel in; the
    default keeps ``G``'s dtype, which makes the result equal the single-process one.
    A ``DNorm`` whose ``D`` is a DTensor (or the local shard) is applied elementwise.
    """
    return _apply("lmo", norm, G, comm_dtype)


def distributed_sharp(norm: Norm, G: Tensor | Sequence[Tensor], comm_dtype: torch.dtype | None = None) -> Tensor | list[Tensor]:
    """``norm.sharp`` (= dual · lmo) of whole parameters, for sharded ``G``; see ``distributed_lmo``."""
    return _apply("sharp", norm, G, comm_dtype)
