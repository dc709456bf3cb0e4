"""A norm evaluated on whole parameters while the caller holds only shards: ``ShardedNorm``.

``sharded(norm, layout)`` rewrites a norm so that every method takes and returns this
rank's *local shards* (stacked: ``(..., *local_shape)``) yet computes exactly what
``norm`` computes on the whole parameters:

- operations that are local by their formula run on the shard with no communication:
  the sign LMO, Frobenius' sharp (the identity), and a ColNorm/RowNorm LMO when the
  shards cut across, not along, the vectors it normalizes;
- a ``DNorm(base, D)`` stays a ``DNorm`` with D's local shard around a sharded base
  (Theorem 1's D⁻¹ ⊙ · is elementwise), so only the base's LMO needs whole matrices;
- everything else — spectral LMOs, ColNorm/RowNorm across shards, Frobenius/RMS LMOs,
  SpectralConv, ``LRNorm`` (Shampoo/SOAP) and any user norm — is sent to owner ranks by
  ``exchange.apply_whole`` (all_to_all), computed there with the norm's own method on
  whole matrices in one batched call, and the results sent back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..norms import Frobenius, Norm, Sign, _VectorwiseNorm
from ..preconditioned import DNorm, LRNorm
from .exchange import apply_whole, apply_whole_reduce
from .layout import ShardLayout, is_dtensor

__all__ = ["ShardedNorm", "sharded", "to_local"]


def to_local(x: Tensor) -> Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return x.to_local() if is_dtensor(x) else x


def _local_op(norm: Norm, op: str, dim: int) -> bool:
    """Whether ``norm.op`` on a shard split along parameter dim ``dim`` equals the whole's shard."""
    if isinstance(norm, Frobenius):
        return op == "sharp"
    if isinstance(norm, Sign):
        return op == "lmo"
    if type(norm).lmo is _VectorwiseNorm.lmo and op == "lmo":
        axis, _ = norm._axis_and_factor(torch.empty(1, 1, device="meta"))  # type: ignore[attr-defined]
        return (axis + 2) != dim  # the normalized vectors lie along `axis`; cut across them is local
    return False


def _slice_norm(norm: Norm, owned: slice, n: int) -> Norm:
    """The norm restricted to parameters ``owned`` of a stack of ``n`` (for per-parameter
    factors such as Shampoo's L, R; they must be whole, i.e. not sharded)."""
    if isinstance(norm, LRNorm):
        def cut(M: Tensor | None) -> Tensor | None:
            if M is None:
                return None
            M = M.full_tensor() if is_dtensor(M) else M  # type: ignore[attr-defined]
            return M[owned] if M.ndim == 3 and M.shape[0] == n else M
        return LRNorm(_slice_norm(norm.base, owned, n), cut(norm.L), cut(norm.R), L_inv=cut(norm.L_inv), R_inv=cut(norm.R_inv))
    if isinstance(norm, DNorm):
        D = norm.D.full_tensor() if is_dtensor(norm.D) else norm.D  # type: ignore[attr-defined]
        return DNorm(_slice_norm(norm.base, owned, n), D[owned] if D.ndim > norm.ndim and D.shape[0] == n else D)
    return norm


class ShardedNorm(Norm):
    """``norm`` on whole parameters, called with local shards laid out as ``layout``.

    Methods accept ``(*batch, *local_shape)``; ``lmo``/``sharp`` return shards of the
    same shape, ``value``/``dual`` return the batch-shaped result on every rank.
    """

    def __init__(self, norm: Norm, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> None:
        if not isinstance(norm, Norm):
            raise TypeError(f"ShardedNorm: norm must be a modnorm.Norm, got {type(norm).__name__}")
        if len(layout.shape) != norm.ndim:
            raise ValueError(f"ShardedNorm: {norm!r} acts on {norm.ndim}-D parameters but the layout's shape is {layout.shape}")
        self.norm, self.layout, self.comm_dtype = norm, layout, comm_dtype
        self.ndim = norm.ndim

    def expected_shape(self) -> str:
        return self.norm.expected_shape()

    def _flat(self, X: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        self._check(X)
        batch = tuple(X.shape[: X.ndim - self.ndim])
        return X.reshape(-1, *X.shape[X.ndim - self.ndim:]), batch

    def _map(self, op: str, X: Tensor) -> Tensor:
        if self.layout.dim is None or _local_op(self.norm, op, self.layout.dim):
            return getattr(self.norm, op)(X)
        flat, batch = self._flat(X)
        n = flat.shape[0]
        out = apply_whole(lambda W, sl: getattr(_slice_norm(self.norm, sl, n), op)(W), flat, self.layout, self.comm_dtype)
        return out.reshape(X.shape)

    def _reduce(self, op: str, X: Tensor) -> Tensor:
        if self.layout.dim is None:
            return getattr(self.norm, op)(X)
        flat, batch = self._flat(X)
        n = flat.shape[0]
        out = apply_whole_reduce(lambda W, sl: getattr(_slice_norm(self.norm, sl, n), op)(W), flat, self.layout, self.comm_dtype)
        return out.reshape(batch)

    def lmo(self, G: Tensor) -> Tensor:
        return self._map("lmo", G)

    def sharp(self, G: Tensor) -> Tensor:
        return self._map("sharp", G)

    def dual(self, G: Tensor) -> Tensor:
        return self._reduce("dual", G)

    def value(self, W: Tensor) -> Tensor:
        return self._reduce("value", W)

    def __repr__(self) -> str:
        return f"ShardedNorm({self.norm!r}, shape={self.layout.shape}, dim={self.layout.dim})"


def _local_D(D: Tensor, layout: ShardLayout) -> Tensor:
    """D as this rank's shard: a D of the whole parameters' shape (replicated statistics)
    is cut to the local rows; a D already local (or broadcastable) is kept."""
    k = len(layout.shape)
    if layout.dim is None or D.ndim < k or tuple(D.shape[D.ndim - k:]) != layout.shape:
        return D
    if layout.local_shape(layout.rank) == layout.shape:
        return D
    sizes = layout.sizes()
    return D.narrow(D.ndim - k + layout.dim, sum(sizes[: layout.rank]), sizes[layout.rank])


def sharded(norm: Norm, layout: ShardLayout, comm_dtype: torch.dtype | None = None) -> Norm:
    """Rewrite ``norm`` to act on local shards laid out as ``layout`` (see the module doc).

    A replicated layout returns ``norm`` itself (with DTensor D's made local); a ``DNorm``
    keeps its elementwise D on the shard and shards only its base.
    """
    if isinstance(norm, DNorm):
        return DNorm(sharded(norm.base, layout, comm_dtype), _local_D(to_local(norm.D), layout))
    if layout.dim is None:
        return norm
    if isinstance(norm, ShardedNorm):
        return norm
    return ShardedNorm(norm, layout, comm_dtype)
