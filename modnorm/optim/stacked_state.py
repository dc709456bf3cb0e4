"""Per-parameter state tensors kept as consecutive slices of one stacked tensor.

A bucket's matrix preconditioner computes on the (B, *shape) stack of its parameters'
states. ``assign`` stores a new stack as per-parameter views ``X[0], …, X[B-1]`` (no
copy); ``stacked`` hands the stack back as a view of that same memory while the state
still holds those slices in order — and otherwise (a bucket that changed, a state
loaded or built tensor by tensor) stacks a copy. Both paths give the same values in the
same (contiguous) layout, so a step does not depend on which one ran, and the state dict
stays per parameter (``torch.save`` stores the shared memory once and restores the views).

During a step the views are read-only: these preconditioners replace state tensors and
never write them in place while computing (``Preconditioner.updates_in_place = False``), and
neither may anything that reads ``stacked``'s result. Only the commit writes them in place
(Shampoo's A and B, ``deferred.py``), and only when they are one stack (``one_stack``). The
shared memory lives as long as any of its views. Under torch.compile ``stacked`` always copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["stacked", "assign", "one_stack"]


def one_stack(ts: Sequence[Tensor]) -> bool:
    """Whether ``ts`` are consecutive, contiguous, equal-shape slices of one memory block (``stacked``
    then returns a view; a single contiguous tensor counts)."""
    if torch.compiler.is_compiling():
        return False
    t0 = ts[0]
    n = t0.numel()
    if type(t0) is not Tensor or n == 0 or t0.device.type == "meta" or not t0.is_contiguous():
        return False
    ptr, off = t0.untyped_storage().data_ptr(), t0.storage_offset()
    return all(
        type(t) is Tensor and t.shape == t0.shape and t.dtype == t0.dtype and t.device == t0.device and t.is_contiguous()
        and t.untyped_storage().data_ptr() == ptr and t.storage_offset() == off + i * n
        for i, t in enumerate(ts)
    )


def stacked(ts: Sequence[Tensor]) -> Tensor:
    """The (B, *shape) stack of same-shape tensors: a view when they are ``assign``'s slices, else a copy."""
    if len(ts) == 1:
        return ts[0].unsqueeze(0)
    if one_stack(ts):
        t0 = ts[0]
        return t0.as_strided((len(ts), *t0.shape), (t0.numel(), *t0.stride()), t0.storage_offset())
    return torch.stack(list(ts))


def assign(states: Sequence[dict[str, Tensor]], key: str, X: Tensor, dtype: torch.dtype | None = None) -> None:
    """``states[i][key] = X[i]`` as views of one contiguous stack (in ``dtype``, default the old
    value's); the old tensors are not written."""
    X = X.to(dtype or states[0][key].dtype).contiguous()
    for s, x in zip(states, X.unbind(0)):
        s[key] = x
