"""An all-or-nothing optimizer step: compute everything aside, check it once, then commit.

A step runs in three phases:

1. **compute** — every bucket works on *shadow* state dicts (shallow copies of the
   parameters' state; fresh state for a parameter's first step). The built-in stages
   assign new tensors to the shadow keys instead of writing in place (a preconditioner
   with ``updates_in_place = True`` gets copies of its own tensors); the parameter
   change of every bucket is kept as a ``PendingWrite``; 16-bit state (``low_precision``)
   is upcast when a shadow is opened and each bucket's new state is rounded back to its
   storage dtype (``store``) as soon as the bucket is computed;
2. **check** — one reduction over every new state tensor and every update direction
   (a sum per tensor on the CPU, ``torch._foreach_norm`` on accelerators; max |x| against a
   bound for updates held in parts), stacked and read with one host synchronization per device;
3. **commit** — only when everything is finite: the shadow tensors replace the state
   entries (a swap, no copy; DTensor shards are copied into their local tensors) and the
   parameters are written.

A failed check (or a ``torch.linalg.LinAlgError`` during the computation) leaves
parameters, state and step counters untouched; the optimizer then raises
``FloatingPointError`` naming the parameters or skips the step (``nonfinite="skip"``).
Any other exception propagates with nothing changed. The commit itself runs in-place kernels,
except for temporaries: an update held in parts forms two one-matrix temporaries per
parameter (``PendingWrite.rows``), an update formed at the commit (``PendingWrite.form``:
SOAP, Shampoo) one bucket's direction and products at a time, and a per-parameter list of
step factors scales a copy. An allocation failure there, right after the compute phase freed
buffers at least as large, would leave the step partly written.

Cost: the check reads every new state tensor once more (a sum), and peak memory holds
the old and the new state of one step together (about twice the optimizer state) — except
for the statistics that ``deferred.py`` redoes in place at the commit (momentum buffers of
the stacked path, Adam's V, Shampoo's A and B): for those only one bucket's temporaries
are held at a time.

Fast path (``fused.py``): a bucket whose rule is exactly torch's fused Adam, AdamW, Adagrad
or SGD kernel does not compute aside. Before anything is computed, one batched reduction
reads max |x| of its gradients (of its parameters too with coupled weight decay; of
Adagrad's sum and SGD's buffer when no running bound is known) and checks a precondition
that proves the in-place step finite from any finite state: per parameter a = max|g| +
λ·max|W| ≤ M/4 (M the dtype's largest value), for Adam a ≤ √M/4 with 1 − β2 ≥ 64·eps
(then β2·V + (1−β2)·g² < M), for Adagrad and SGD a running bound on the sum or buffer
after the step ≤ M/4. NaN and ±inf fail it. The bucket's kernel then runs in place *after*
this transaction commits (so another bucket's failure still leaves it untouched); a bucket
whose precondition fails is computed here as before, and refused or skipped as before.
What the fast path assumes — finite state that only the optimizer writes — and when it
is not taken (global step-size stages, trust ratios, schedule-free, DTensor shards,
accelerators, state dtype ≠ parameter dtype, ``compile``) is in ``fused.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..distributed.layout import is_dtensor
from ..distributed.sharded_norm import to_local
from .deferred import Deferred, bound_flag, finite_now
from .preconditioner import RESERVED_STATE_KEYS

__all__ = ["PendingWrite", "StepTransaction"]

Scalar = float | Tensor


def _add_(views: list[Tensor], U: Sequence[Tensor], alpha: Scalar | list[float], fresh: bool) -> None:
    """views ← views + alpha·U (U is modified only when ``fresh``)."""
    if isinstance(alpha, float):
        torch._foreach_add_(views, list(U), alpha=alpha)
        return
    if fresh:
        torch._foreach_mul_(list(U), alpha)
    else:
        U = torch._foreach_mul(list(U), alpha)
    torch._foreach_add_(views, list(U))


@dataclass
class PendingWrite:
    """A bucket's parameter change, computed but not applied:
    W ← W·decay, then W ← W + alpha·U (or W + alpha·U / divisor entrywise).

    ``form`` (with a float alpha): U is not held; ``form()`` forms it here from the committed
    state (``update._sharp_at_commit``), finite by a bound proved when the step was computed
    (whose premises, e.g. V ≥ 0, are among the checked tensors).

    ``rows`` (with a float alpha): U is held in parts (``Norm.lmo_parts``), a narrower O and
    ``scale``, and U_i = (O_i upcast · scale) ⊘ rows(i) is formed one parameter at a time here,
    from the divisor the preconditioner forms again from the committed state."""

    views: list[Tensor]
    update: Sequence[Tensor]
    alpha: Scalar | list[float]
    decay: Scalar | None = None
    divisor: list[Tensor] | None = None
    fresh: bool = False  # ``update`` is a temporary that may be overwritten
    scale: float = 1.0
    rows: Callable[[int], Tensor] | None = None
    form: Callable[[], Sequence[Tensor]] | None = None

    def apply(self) -> None:
        if not self.views or (len(self.update) == 0 and self.form is None):  # a statistics-only (warm-up) step
            return
        if self.decay is not None:
            torch._foreach_mul_(self.views, self.decay)
        if self.form is not None:
            _add_(self.views, self.form(), self.alpha, True)
            return
        if self.rows is not None:
            for i, (w, o) in enumerate(zip(self.views, self.update)):
                u = o.to(w.dtype)  # exact
                if self.scale != 1.0:
                    u.mul_(self.scale)
                w.add_(u.div_(self.rows(i)), alpha=self.alpha)  # type: ignore[arg-type]
            return
        if self.divisor is None:
            _add_(self.views, self.update, self.alpha, self.fresh)
            return
        D2, alpha = self.divisor, self.alpha
        if isinstance(alpha, Tensor):  # views + d / (D²/alpha): torch's capturable AdamW does the same
            torch._foreach_div_(D2, alpha)
            torch._foreach_addcdiv_(self.views, list(self.update), D2)
        elif isinstance(alpha, float):
            torch._foreach_addcdiv_(self.views, list(self.update), D2, value=alpha)
        else:
            torch._foreach_addcdiv_(self.views, list(self.update), D2, alpha)


@dataclass
class _Entry:
    """One parameter in a step: where its state lives, its shadow and the dict the pipeline writes."""

    param: Tensor
    label: str
    original: dict[str, Any] | None  # the committed state (None on the first step)
    shadow: dict[str, Any]
    work: dict[str, Any]  # == shadow, or the local-shard view of it (DTensor parameters)
    before: dict[str, int | None] = field(default_factory=dict)  # id of each work value before the step
    implied: str | None = None  # a state key the check skips (see ``update.momentum_implied``)
    low: frozenset[str] = frozenset()  # keys stored in 16 bits (``low_precision``), computed in a wider dtype
    round: Callable[[str, Tensor], Tensor] | None = None  # key, new value → the value to store

    def changed(self) -> list[tuple[str, Tensor]]:
        return [(k, v) for k, v in self.work.items() if isinstance(v, Tensor) and self.before.get(k) != id(v)]


def _checked(t: Tensor) -> bool:
    """Floating tensors with values (not step counters, not ``meta`` tensors, which hold none)."""
    return t.is_floating_point() and t.ndim > 0 and t.numel() > 0 and t.device.type != "meta"


class StepTransaction:
    """Collects one step's shadow states and pending writes; checks them once; commits."""

    def __init__(self, deferred: Deferred | None = None) -> None:
        self.entries: dict[int, _Entry] = {}
        self.writes: list[tuple[PendingWrite, list[Tensor], list[str]]] = []
        self.bounded: list[tuple[list[Tensor], float, str]] = []  # (tensors, bound on max |x|, labels)
        self.deferred = deferred  # state updates redone in place at the commit (``deferred.py``)

    # ------------------------------------------------------------------ compute phase

    def open(self, param: Tensor, label: str, original: dict[str, Any] | None, shadow: dict[str, Any],
             low: frozenset[str] = frozenset(), round: Callable[[str, Tensor], Tensor] | None = None) -> dict[str, Any]:
        """Register a parameter's shadow state; ``low``: its keys stored in 16 bits (the shadow holds
        them upcast), written back through ``round`` by ``store``."""
        entry = _Entry(param, label, original, shadow, shadow, low=low, round=round)
        entry.before = {k: id(v) for k, v in shadow.items()}
        self.entries[id(param)] = entry
        return shadow

    def open_bucket(self, members: Sequence[tuple[Tensor, Any, dict[str, Any] | None]], step: int,
                    init_state: Callable[[Tensor, Any, dict[str, Any]], None],
                    storage: Callable[[Tensor, Any, dict[str, Any], int], tuple[frozenset[str], Any]] | None = None,
                    ) -> list[tuple[Tensor, Any, dict[str, Any]]]:
        """Open a bucket's shadow states: (parameter, plan, state or None) → (parameter, plan, shadow).
        A first step's shadow is filled by ``init_state``; a shadow shares the state's tensors, except
        for a preconditioner that updates in place (``plan.precond.updates_in_place``), which gets copies.
        ``storage(p, plan, shadow, step)`` upcasts 16-bit state in the shadow and returns ``open``'s
        ``low`` and ``round``."""
        opened = []
        for p, plan, original in members:
            if original is None:
                shadow: dict[str, Any] = {}
                init_state(p, plan, shadow)
            else:
                shadow = dict(original)
            low = storage(p, plan, shadow, step) if storage else ()  # 16-bit keys: upcast copies
            if original is not None and plan.precond.updates_in_place:  # it writes its tensors: copies of the rest
                shadow.update({k: v.clone() for k, v in shadow.items()
                               if k not in RESERVED_STATE_KEYS and isinstance(v, Tensor) and v is original.get(k)})
            self.open(p, plan.name, original, shadow, *low)
            opened.append((p, plan, shadow))
        return opened

    def store(self, params: Sequence[Tensor]) -> None:
        """Round the new 16-bit state of ``params`` to its storage dtype (their bucket is computed).
        Every 16-bit key is rounded, written or not (in place or by assignment): a value the step
        left on the storage grid rounds to itself."""
        for p in params:
            e = self.entries[id(p)]
            if e.round is None:
                continue
            for k in e.low:
                e.work[k] = e.round(k, e.work[k])
                e.before[k] = None  # checked (the id of a freed copy could be reused)

    def bind_work(self, param: Tensor, work: dict[str, Any]) -> None:
        """The pipeline of a DTensor parameter writes local shards into ``work``."""
        entry = self.entries[id(param)]
        entry.work = work
        entry.before = {k: id(v) for k, v in work.items()}

    def add_write(self, write: PendingWrite, checks: list[Tensor], labels: list[str], params: Sequence[Tensor] = (),
                  implied: str | None = None, bound: float = math.inf) -> None:
        """A bucket's pending write and its update tensors to check; ``implied``: a state key of
        these parameters whose finiteness follows from the rest of their new state (not read);
        ``bound``: max |x| of ``checks`` must not exceed it (``bound_flag``), not only be finite."""
        if bound < math.inf:
            self.bounded.append((checks, bound, ", ".join(labels)))
            checks = []
        self.writes.append((write, checks, labels))
        if implied is not None:
            for p in params:
                self.entries[id(p)].implied = implied

    # ------------------------------------------------------------------ check phase

    def _tensors(self) -> list[tuple[str, str, Tensor]]:
        """(parameter label(s), what, tensor) for everything the check reads."""
        out = [(e.label, f"state {k!r}", v) for e in self.entries.values() for k, v in e.changed() if k != e.implied and _checked(v)]
        seen = {id(t) for *_, t in out}
        for _, checks, labels in self.writes:
            for t in checks:
                if id(t) not in seen and _checked(t):
                    seen.add(id(t))
                    out.append((", ".join(labels), "update", t))
        return out

    def scale_steps(self, gamma: float | list[float]) -> None:
        """Multiply every pending write's step (not its weight decay) by a factor (one per write, or one for all)."""
        factors = [gamma] * len(self.writes) if isinstance(gamma, float) else gamma
        for (write, _, _), g in zip(self.writes, factors):
            a = write.alpha
            write.alpha = [x * g for x in a] if isinstance(a, list) else a * g

    def all_finite(self) -> bool:
        """One reduction per device over every new tensor; True when all are finite."""
        if self.deferred is not None and not self.deferred.all_finite():
            return False
        by_device: dict[torch.device, tuple[list[Tensor], list[Tensor]]] = {}
        for *_, t in self._tensors():
            by_device.setdefault(t.device, ([], []))[0].append(t)
        for ts, bound, _ in self.bounded:
            for t in ts:
                if _checked(t):
                    by_device.setdefault(t.device, ([], []))[1].append(bound_flag(t, bound))
        return all(finite_now(ts, flags) for ts, flags in by_device.values())  # one read per device

    def _out_of_bounds(self) -> list[str]:
        """'labels (update)' of the bounded checks whose max |x| exceeds their bound or holds a NaN (a failed step's message)."""
        return [f"{label} (update)" for ts, bound, label in self.bounded if any(float(bound_flag(t, bound)) for t in ts if _checked(t))]

    def bad_gradients(self) -> list[str]:
        return [e.label for e in self.entries.values() if e.param.grad is not None and not bool(e.param.grad.isfinite().all())]

    def bad_values(self) -> list[str]:
        """'label (what)' for each non-finite new tensor (the slow, exact check of a failed step)."""
        bad: list[str] = list(self.deferred.failed) if self.deferred is not None else []
        for label, what, t in self._tensors():
            item = f"{label} ({what})"
            if item not in bad and not bool(t.isfinite().all()):
                bad.append(item)
        return bad + [b for b in self._out_of_bounds() if b not in bad]

    # ------------------------------------------------------------------ commit phase

    def commit(self, state: dict[Tensor, Any]) -> None:
        """Redo the deferred state updates in place, write the new state (swap; copy into DTensor
        shards), advance the step counters (one foreach add, in place), then write the parameters."""
        if self.deferred is not None:
            self.deferred.commit()
        for e in self.entries.values():
            if e.work is not e.shadow:
                for k, v in e.changed():
                    target = e.shadow.get(k)
                    if target is not None and is_dtensor(target):
                        to_local(target).copy_(v)
                    else:
                        e.shadow[k] = v
            if e.original is None:
                state[e.param] = e.shadow
            else:
                e.original.update(e.shadow)
        steps = [e.shadow["step"] for e in self.entries.values()]
        if steps:
            torch._foreach_add_(steps, 1.0)
        for write, _, _ in self.writes:
            write.apply()
