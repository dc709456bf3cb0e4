"""16-bit optimizer state: stored in bfloat16/float16, computed in float32, rounded on every write.

With ``state_dtype="bfloat16"`` (or ``"float16"``) the state of a parameter is a *storage*
format. A step reads each stored tensor, upcasts it to the compute dtype (float32; float64 for
float64 parameters), runs the whole pipeline in that dtype, and rounds each new state tensor
back to the storage dtype before the step's finiteness check (so the check sees what is
stored: a float16 overflow is refused like any other). The parameter's update is computed from
the unrounded new state; the parameters keep their own dtype.

Rounding x to the storage grid, with x_lo ≤ x ≤ x_hi its two neighbours there:

- ``"stochastic"`` (default): x_hi with probability (x − x_lo)/(x_hi − x_lo), else x_lo, so
  E[round(x)] = x. An EMA of small increments then stays unbiased, where round-to-nearest
  would drop every increment below half a unit in the last place (a stalled EMA).
  float32 → bfloat16 adds 16 uniform random bits to the low half of x's bits and truncates
  them (the probability is exact); other pairs use the neighbours through ``torch.nextafter``
  and one uniform draw in x's dtype.
- ``"nearest"``: round to nearest, ties to even (``Tensor.to``).

Randomness: counter-based. The noise of (parameter i, state key k, step t) comes from a
generator on the tensor's device seeded with mix(seed, i, crc32(k), t): it never touches the
global torch RNG, does not depend on bucketing or on the order of the work, and a refused or
skipped step consumes nothing. ``seed`` (``rounding_seed``, default 0: the same in every process,
so data-parallel replicas that were seeded differently still round alike) is the whole RNG
state: it travels in ``state_dict`` with the step counters, so a resumed run rounds bitwise
like an uninterrupted one.

Which state is stored in 16 bits: every floating state tensor with at least one dimension —
moments and statistics, which are accumulated (EMAs, sums, maxima) — except the keys a stage
lists in ``exact_state``: results of a decomposition that must keep their structure
(eigenbases must stay orthogonal: SOAP/SPlus ``QL``/``QR``, KFAC ``kfac_QA``/``kfac_QS``,
KL-Shampoo ``Qa``/``Qb``, with their eigenvalues; Shampoo's inverse roots ``A_inv_root``/``B_inv_root``)
and copies of the parameters (schedule-free ``z``, Prodigy's ``prodigy_x0``). Those, and 0-d
scalars, stay in the compute dtype.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .momentum import EXACT_MOMENTUM_STATE
from .plan import Plan
from .recipe import DTYPES
from .step_size import StepSizeStage

__all__ = ["ROUNDINGS", "LOW_PRECISION", "StateStorage", "LowPrecisionState", "stochastic_round", "mix_seed", "compute_dtype", "state_storage"]

ROUNDINGS = ("stochastic", "nearest")
LOW_PRECISION = (torch.bfloat16, torch.float16)
_MASK64 = (1 << 64) - 1


def state_storage(state_dtype: Any, rounding: Any, seed: int | None = None) -> tuple[str | None, StateStorage | None]:
    """The optimizer's options checked (ValueError naming the option): ``state_dtype`` as a dtype
    name (a ``torch.dtype`` is accepted), and the ``StateStorage`` of a 16-bit one (else None)."""
    if isinstance(state_dtype, torch.dtype):
        state_dtype = next((k for k, v in DTYPES.items() if v == state_dtype), state_dtype)
    if state_dtype is not None and not (isinstance(state_dtype, str) and state_dtype in DTYPES):
        raise ValueError(f"state_dtype must be None or a floating dtype, one of {sorted(DTYPES)} (or the torch dtype), got {state_dtype!r}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"state_rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"rounding_seed must be None or an int ≥ 0, got {seed!r}")
    if state_dtype is None or DTYPES[state_dtype] not in LOW_PRECISION:
        return state_dtype, None
    return state_dtype, StateStorage(DTYPES[state_dtype], rounding, 0 if seed is None else seed)


def compute_dtype(param_dtype: torch.dtype, state_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a step computes in: float32 for 16-bit parameters and for 16-bit state of wider
    parameters (the parameter's dtype for float64 ones); a 32/64-bit ``state_dtype`` itself."""
    natural = torch.float32 if param_dtype in LOW_PRECISION else param_dtype
    return natural if state_dtype is None or state_dtype in LOW_PRECISION else state_dtype


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit generator seed from integers (SplitMix64 chained over the parts)."""
    h = 0
    for part in parts:
        h = _splitmix64(h ^ (part & _MASK64))
    return h >> 1


def stochastic_round(x: Tensor, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    """x rounded to ``dtype`` stochastically and unbiasedly (module docstring); non-finite x stays non-finite."""
    if x.dtype == torch.float32 and dtype == torch.bfloat16:
        bits = x.view(torch.int32)
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
        return (bits + noise).bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)  # exact: low half is 0
    near = x.to(dtype)
    back = near.to(x.dtype)
    toward = torch.where(x > back, float("inf"), float("-inf")).to(dtype)
    other = torch.nextafter(near, toward)
    p = (x - back) / (other.to(x.dtype) - back)  # in [0, 1/2]; NaN where x or its neighbour is not finite
    u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return torch.where(u < p, other, near)


class StateStorage:
    """The storage dtype, rounding and seed of an optimizer's 16-bit state (module docstring)."""

    def __init__(self, dtype: torch.dtype, rounding: str, seed: int) -> None:
        self.dtype, self.rounding, self.seed = dtype, rounding, int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    @staticmethod
    def stored_low(key: str, value: Any, exact: frozenset[str]) -> bool:
        """Whether state ``key`` (holding ``value``) is kept in the storage dtype."""
        return isinstance(value, Tensor) and value.is_floating_point() and value.ndim > 0 and key not in exact

    def _generator(self, device: torch.device) -> torch.Generator:
        g = self._generators.get(device)
        if g is None:
            g = self._generators[device] = torch.Generator(device=device)
        return g

    def writer(self, index: int, step: int) -> Callable[[str, Tensor], Tensor]:
        """(key, new value) → the value to store, for parameter ``index`` at step ``step``."""
        return lambda key, x: self.round(x, index, key, step)

    def round(self, x: Tensor, index: int, key: str, step: int) -> Tensor:
        """x in the storage dtype; the noise of stochastic rounding depends only on (seed, index, key, step)."""
        if x.dtype == self.dtype:
            return x
        if self.rounding == "nearest" or x.device.type == "meta":  # meta tensors hold no values
            return x.to(self.dtype)
        g = self._generator(x.device)
        g.manual_seed(mix_seed(self.seed, index, zlib.crc32(key.encode()), step))
        return stochastic_round(x.detach(), self.dtype, g)

    def __getstate__(self) -> dict[str, Any]:  # generators are rebuilt on demand (deepcopy, pickle)
        return {**self.__dict__, "_generators": {}}

    def state_dict(self) -> dict[str, Any]:
        return {"dtype": str(self.dtype).removeprefix("torch."), "rounding": self.rounding, "seed": self.seed}


class LowPrecisionState:
    """The optimizer's side of 16-bit state (a mixin of ``ModnormOptimizer``): which dtype a
    parameter's state computes and is stored in, upcast on read, rounding at initialization and
    after a load. Needs ``state_dtype`` (a name or None) and ``_storage`` (a ``StateStorage`` or None)."""

    state_dtype: str | None
    _storage: StateStorage | None
    state: Any

    def _state_dtype(self, p: Tensor) -> torch.dtype:
        """The dtype a step of ``p`` computes its state in (``compute_dtype``)."""
        return compute_dtype(p.dtype, None if self.state_dtype is None else DTYPES[self.state_dtype])

    def _storage_dtype(self, p: Tensor) -> torch.dtype:
        """The dtype ``p``'s state is stored in (a 16-bit state_dtype, else the compute dtype)."""
        return self._storage.dtype if self._storage is not None else self._state_dtype(p)

    def _stores_low(self, p: Tensor) -> bool:
        return self._storage_dtype(p) != self._state_dtype(p)

    @staticmethod
    def _exact_state(plan: Plan, stage: StepSizeStage | None) -> frozenset[str]:
        """State keys kept in the compute dtype under 16-bit storage (the module docstring)."""
        return plan.precond.exact_state | EXACT_MOMENTUM_STATE | (stage.exact_state if stage is not None else frozenset())

    def _upcast(self, p: Tensor, plan: Plan, stage: StepSizeStage | None, shadow: dict[str, Any], index: int, step: int
                ) -> tuple[frozenset[str], Callable[[str, Tensor], Tensor] | None]:
        """Upcast ``p``'s 16-bit shadow state in place (a copy: the stored tensors are not touched);
        returns its 16-bit keys and their writer (``StepTransaction.open``'s ``low``, ``round``)."""
        if self._storage is None or not self._stores_low(p):
            return frozenset(), None
        exact = self._exact_state(plan, stage)
        low = frozenset(k for k, v in shadow.items() if StateStorage.stored_low(k, v, exact))
        shadow.update({k: shadow[k].to(self._state_dtype(p)) for k in low})
        return low, self._storage.writer(index, step)

    def _store_initial(self, p: Tensor, plan: Plan, stage: StepSizeStage | None) -> None:
        """Initial state (zeros, I, …) made without a step, in its storage dtype (rounded to nearest)."""
        if self._storage is not None and self._stores_low(p):
            exact = self._exact_state(plan, stage)
            self.state[p].update({k: v.to(self._storage.dtype) for k, v in self.state[p].items() if StateStorage.stored_low(k, v, exact)})

    def _restore_dtypes(self, p: Tensor, plan: Plan, stage: StepSizeStage | None, saved: dict[str, Any]) -> None:
        """After torch's load_state_dict (which casts state to the parameter's dtype): each saved
        floating tensor back in its storage dtype, a stage's float64 CPU scalars as saved."""
        exact = self._exact_state(plan, stage)
        for k, v in saved.items():
            if k == "step" or not (isinstance(v, Tensor) and v.is_floating_point()):
                continue
            if v.ndim == 0 and v.dtype == torch.float64:
                self.state[p][k] = v.clone()
                continue
            dtype = self._storage_dtype(p) if StateStorage.stored_low(k, v, exact) else self._state_dtype(p)
            if self.state[p][k].dtype != dtype:
                self.state[p][k] = v.to(device=p.device, dtype=dtype, copy=True)

    @property
    def rounding_seed(self) -> int | None:
        """The seed of stochastic rounding of 16-bit state (None without 16-bit state); settable."""
        return self._storage.seed if self._storage is not None else None

    @rounding_seed.setter
    def rounding_seed(self, seed: int) -> None:
        if self._storage is None:
            raise ValueError(f"this optimizer keeps no 16-bit state (state_dtype={self.state_dtype!r}): it has no rounding seed")
        self._storage.seed = int(seed)
