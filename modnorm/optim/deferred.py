"""State updates redone in place at the commit, so that a step does not hold old and new state together.

The all-or-nothing step (``transaction.py``) computes new state aside and keeps it until every
bucket is checked: its peak memory holds the old and the new statistics of every bucket at once.
Most statistics are updated by a deterministic in-place-able formula of the old value and the
gradient (a momentum lerp, V ← β2 V + (1−β2) G ⊙ G, A ← β A + α G Gᵀ). For those, a bucket may
instead

- compute the new value as a **temporary** (when this step's update needs it), let the bucket's
  norm and direction read it, check its finiteness at the end of the bucket (``probe``: one
  reduction, as the transaction's own check), then drop it and put the old tensor back in the
  shadow state (``restore``), and
- **redo** the same formula in place on the state tensor at the commit (``later``), with the same
  kernels on the same operands, so the stored value is bit for bit the checked temporary;

or, when this step does not read the new value (Shampoo's A, B between refreshes), skip the
temporary and prove instead that the in-place update cannot overflow (``accumulation_bound``,
from a running upper bound of max |A| per state tensor — ``known_max``, ``record`` — as
``fused.py`` keeps for its buffers).

A refused step never reaches the commit, so nothing is written; the shadow only ever held the
temporaries. Peak memory then holds one bucket's temporaries instead of every bucket's new state.

The redo reads the gradients and the step's own inputs at the commit, before the parameters are
written. ``Deferred`` is used only on the eager path: not under ``compile``, not for DTensor
(FSDP2) shards, not with 16-bit state storage, not with a global step-size stage; everything
else computes aside as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .running_bounds import RunningBounds, abs_maxima

__all__ = ["Deferred", "accumulation_bound", "bound_flag", "finite_now", "finiteness_probes"]

_SUM_DTYPE: dict[torch.dtype, torch.dtype] = {torch.float64: torch.float64, torch.bfloat16: torch.bfloat16}


def finiteness_probes(ts: Sequence[Tensor]) -> Tensor:
    """One float32 number per tensor of one device, non-finite whenever the tensor holds a NaN or ±inf:
    its sum on the CPU (NaN/inf propagate; a sum of finite values may also overflow, which the
    caller settles with ``isfinite``), its max |x| on accelerators (``_foreach_norm(inf)``: finite
    exactly when every value is)."""
    if ts[0].device.type == "cpu":  # bf16 sums in its own dtype (float32's range): sum(dtype=) would copy it to float32 first
        return torch.stack([t.sum(dtype=_SUM_DTYPE.get(t.dtype, torch.float32)).float() for t in ts])
    return torch.stack([n.float() for n in torch._foreach_norm(list(ts), float("inf"))])


def _finite_probe(ts: Sequence[Tensor]) -> bool | Tensor:
    """Whether every value of ``ts`` is finite: read now on the CPU (settled exactly when the sum
    overflows); on accelerators a 0-d max |x|, read with the transaction's check (no host
    synchronization per bucket)."""
    ts = [t for t in ts if t.is_floating_point() and t.numel() > 0 and t.device.type != "meta"]  # meta tensors hold no values
    if not ts:
        return True
    if ts[0].device.type != "cpu":
        return finiteness_probes(ts).amax()
    return finite_now(ts)


def finite_now(ts: Sequence[Tensor], flags: Sequence[Tensor] = ()) -> bool:
    """Whether every value of ``ts`` (tensors of one device) is finite and every flag is 0, read now
    (one read): NaN/inf in any probe propagate into their sum, and a finite total that overflows is
    settled exactly (``isfinite``). ``flags``: 0-d float32 tensors of that device, 0 where a condition
    holds and inf or NaN where it does not (``bound_flag``)."""
    parts = ([finiteness_probes(ts).sum()] if ts else []) + ([torch.stack(list(flags)).sum()] if flags else [])
    if not parts or math.isfinite(float(sum(parts))):  # type: ignore[arg-type]
        return True
    return all(math.isfinite(float(f)) for f in flags) and all(bool(t.isfinite().all()) for t in ts)


def bound_flag(t: Tensor, bound: float) -> Tensor:
    """0 (a 0-d float32 tensor on t's device) when max |t| ≤ ``bound``, else inf (NaN in t: inf too)."""
    low, high = torch.aminmax(t)
    peak = torch.maximum(low.abs(), high.abs()).float()
    return torch.where(peak <= bound, 0.0, math.inf)


class Deferred:
    """One step's deferred state updates: temporaries to probe and restore per bucket, redos for the commit."""

    def __init__(self, bounds: RunningBounds) -> None:
        self.bounds = bounds
        self._read = RunningBounds()  # max |x| read during this step (nothing is written in place before the commit)
        self._redos: list[Callable[[], None]] = []
        self._restores: list[tuple[Sequence[dict[str, Any]], str, list[Tensor], bool]] = []
        self.failed: list[str] = []  # 'label (state key)' of temporaries that were not finite
        self._pending: list[tuple[str, Tensor]] = []  # accelerator probes, read by ``all_finite``
        self._row_probes: list[tuple[str, list[Tensor], Callable[[], bool]]] = []  # ``probe_rows``, for ``end_bucket``

    # ------------------------------------------------------------------ within a bucket

    def replace(self, states: Sequence[dict[str, Any]], key: str, new: Sequence[Tensor], redo: Callable[[], None] | None,
                probe: bool = True) -> None:
        """Show ``new`` (temporaries) in ``states[key]`` until the bucket ends; at the commit, ``redo``
        recomputes them in place into the old tensors (None: a redo registered with ``later`` does).
        ``probe``: check the temporaries at the end of the bucket (False when their finiteness is
        proved or implied otherwise)."""
        old = [s[key] for s in states]
        for s, v in zip(states, new):
            s[key] = v
        self._restores.append((states, key, old, probe))
        if redo is not None:
            self._redos.append(redo)

    def probe_rows(self, key: str, probes: Sequence[Tensor], recheck: Callable[[], bool]) -> None:
        """Probes (``finiteness_probes``) of temporaries already dropped, settled when the bucket ends
        as its own temporaries are; ``recheck()`` recomputes them and settles exactly when a CPU
        sum is not finite (it may overflow with finite values)."""
        self._row_probes.append((key, list(probes), recheck))

    def later(self, redo: Callable[[], None]) -> None:
        """Run ``redo`` at the commit (an in-place update proved finite, e.g. by ``factor_bound``)."""
        self._redos.append(redo)

    def end_bucket(self, label: str) -> None:
        """Probe the bucket's temporaries, then put the old tensors back in its shadow states."""
        for states, key, old, probe in self._restores:
            finite = _finite_probe([s[key] for s in states]) if probe else True
            if isinstance(finite, Tensor):
                self._pending.append((f"{label} (state {key!r})", finite))
            elif not finite:
                self.failed.append(f"{label} (state {key!r})")
            for s, v in zip(states, old):
                s[key] = v
        self._restores.clear()
        for key, probes, recheck in self._row_probes:
            values = torch.cat(probes)
            if values.device.type != "cpu":
                self._pending.append((f"{label} (state {key!r})", values.amax()))
            elif not math.isfinite(float(values.sum())) and not recheck():
                self.failed.append(f"{label} (state {key!r})")
        self._row_probes.clear()

    def all_finite(self) -> bool:
        """Whether every probed temporary was finite (reads the accelerators' probes: one synchronization)."""
        by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
        for label, v in self._pending:
            by_device.setdefault(v.device, []).append((label, v))
        for probes in by_device.values():  # one read per device
            values = torch.stack([v for _, v in probes]).tolist()
            self.failed += [label for (label, _), v in zip(probes, values) if not math.isfinite(v)]
        self._pending.clear()
        return not self.failed

    # ------------------------------------------------------------------ proofs by running bounds

    def known_max(self, ts: Sequence[Tensor]) -> float:
        """An upper bound on max |x| over ``ts``: their running bounds, or what this step read of them,
        read (one batch) for the others; inf when one holds a NaN or ±inf, or no values (a ``meta`` or
        empty tensor)."""
        if any(t.device.type == "meta" or t.numel() == 0 for t in ts):
            return math.inf
        known = [self.bounds.known(t) for t in ts]
        known = [b if b is not None else self._read.known(t) for t, b in zip(ts, known)]
        unknown = [t for t, b in zip(ts, known) if b is None]
        read = abs_maxima(unknown)
        for t, m in zip(unknown, read):
            self._read.record([t], m)
        return max((math.inf if math.isnan(m) else m for m in [*(b for b in known if b is not None), *read]), default=0.0)

    def record(self, ts: Sequence[Tensor], bound: float) -> None:
        """After a redo: ``bound`` is an upper bound on max |x| of each of ``ts``."""
        self.bounds.record(ts, bound)

    # ------------------------------------------------------------------ the commit

    def commit(self) -> None:
        """Run the redos (before the parameters are written: a redo may read them)."""
        for redo in self._redos:
            redo()
        self._redos.clear()


def accumulation_bound(old: float, beta: float, alpha: float, increment: float, terms: int, dtype: torch.dtype) -> float | None:
    """An upper bound on max |β S + α X| for max |S| ≤ ``old`` and max |X| ≤ ``increment`` when X is a
    float product summing ``terms`` terms (rounding included), or None when it may exceed M/4
    (M the dtype's largest value; NaN and inf give None). X itself is formed before α scales it
    (``baddbmm``), so its own bound must stay below M/4 as well."""
    info = torch.finfo(dtype)
    grow = 1.0 + (terms + 4) * info.eps
    bound = (beta * old + alpha * increment) * grow
    return bound if bound <= info.max / 4 and increment * grow <= info.max / 4 else None
