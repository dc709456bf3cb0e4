"""How Newton–Schulz multiplies a batch of matrices: ``auto_products`` (``products="auto"``).

Each Newton–Schulz step is three products per matrix (``A = Y Yᵀ``, ``B = bA + cA²``,
``Y ← aY + BY``). For a batch of same-shape matrices they can run as

- ``"batched"``: one 3-D ``bmm``/``baddbmm`` per product over the whole batch, or
- ``"loop"``: the whole iteration matrix by matrix with 2-D ``mm``/``addmm`` (torch.optim.Muon's form).

Both compute the same polynomial of the same matrix; they differ only in the kernels, so
in rounding (float32: ~1e-6 relative, bf16: ~1e-2, the dtype's floor). Which is faster
depends on the CPU, the dtype, the matrix size and the batch: on an AMD EPYC with
AVX512-BF16 (one thread) a batch of 27 512² bf16 matrices ran 1.6× faster as a 2-D loop,
while 9 bf16 matrices of 64² ran 4× faster batched. So the choice is measured:
``auto_products`` times two steps of both forms on ``min(count, PROBE_MATRICES)``
matrices of the call's shape and dtype, interleaved, best of 3 (milliseconds to a second,
once per process, thread count and shape), and takes ``"loop"`` only when it is at least
``MIN_SPEEDUP`` times faster. Devices other than the CPU keep ``"batched"`` (no probe).

``ProductChoices`` records what was chosen per "device:dtype:count×n×m" key (n ≤ m, the
short side first); the optimizer keeps one per instance, shows it in ``describe()`` and
saves it in ``state_dict()["ns_products_auto"]``, so a resumed run keeps the saved forms.
In a process group of more than one process (DDP, FSDP) no probe runs — the ranks'
timings would differ and so would their rounding — and a shape without a saved choice
takes "batched".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["FORMS", "MIN_SPEEDUP", "PROBE_MATRICES", "ProductChoices", "auto_products", "loop_speedup", "product_key",
           "checked_choices", "DEFAULT_CHOICES", "iterate_batched", "iterate_loop"]

FORMS: tuple[str, ...] = ("batched", "loop")
MIN_SPEEDUP: float = 1.1
"""The 2-D loop must be at least this much faster to replace the batched call."""
PROBE_MATRICES: int = 16
"""The probe times at most this many matrices of the call's shape."""
PROBE_STEPS: int = 2
"""Newton–Schulz steps per probe: the loop form keeps one matrix in cache from step to step."""


def product_key(device: str | torch.device, dtype: torch.dtype, count: int, n: int, m: int) -> str:
    """"cpu:bfloat16:27x512x512": the device type, compute dtype and (count, short side, long side)."""
    return f"{torch.device(device).type}:{str(dtype).removeprefix('torch.')}:{count}x{min(n, m)}x{max(n, m)}"


Coefficients = tuple[float, float, float]


def iterate_batched(Y: torch.Tensor, coefficients: Sequence[Coefficients], scratch: bool = False) -> torch.Tensor:
    """Newton–Schulz steps Y ← aY + (bA + cA²)Y, A = YYᵀ, on a (count, n, m) batch: one 3-D call per product.
    ``scratch``: Y is the caller's own temporary, which the steps may overwrite: each product is
    written (``out=``, the same kernels, the same values) into a buffer that is no longer read —
    Y itself when contiguous, the previous iterate, the previous A and B — so a step allocates
    nothing after the first and a square batch needs three buffers of Y's size instead of four."""
    if not scratch:
        for a, b, c in coefficients:
            A = Y @ Y.mT
            B = torch.baddbmm(A, A, A, beta=b, alpha=c) if c != 0.0 else A * b
            Y = torch.baddbmm(Y, B, Y, beta=a, alpha=1.0)
        return Y
    free: list[torch.Tensor] = []  # contiguous buffers of ours that nothing reads any more

    def take(shape: torch.Size) -> torch.Tensor:
        for i, t in enumerate(free):
            if t.shape == shape:
                return free.pop(i)
        return torch.empty(shape, dtype=Y.dtype, device=Y.device)

    gram = Y.shape[:-1] + Y.shape[-2:-1]
    for a, b, c in coefficients:
        A = torch.matmul(Y, Y.mT, out=take(gram))
        B = torch.baddbmm(A, A, A, beta=b, alpha=c, out=take(gram)) if c != 0.0 else torch.mul(A, b, out=take(gram))
        free.append(A)
        out = take(Y.shape)
        torch.baddbmm(Y, B, Y, beta=a, alpha=1.0, out=out)
        free.append(B)
        if Y.is_contiguous():
            free.append(Y)
        Y = out
    return Y


def iterate_loop(Y: torch.Tensor, coefficients: Sequence[Coefficients]) -> torch.Tensor:
    """The same steps matrix by matrix with 2-D products (each matrix stays in cache from step to step)."""
    out = torch.empty(Y.shape, dtype=Y.dtype, device=Y.device)
    for i in range(Y.shape[0]):
        y = Y[i]
        for a, b, c in coefficients:
            A = y @ y.T
            B = torch.addmm(A, A, A, beta=b, alpha=c) if c != 0.0 else A * b
            y = torch.addmm(y, B, y, beta=a, alpha=1.0)
        out[i] = y
    return out


_PROBE_COEFFICIENTS: list[Coefficients] = [(3.4445, -4.775, 2.0315)] * PROBE_STEPS


@lru_cache(maxsize=None)
def _cpu_speedup(threads: int, dtype: torch.dtype, count: int, n: int, m: int) -> float:
    g = torch.Generator().manual_seed(0)
    Y = (torch.randn(min(count, PROBE_MATRICES), n, m, generator=g) / (n * m) ** 0.5).to(dtype)
    iterate_batched(Y, _PROBE_COEFFICIENTS), iterate_loop(Y, _PROBE_COEFFICIENTS)  # first calls: kernel selection, caches
    batched = loop = float("inf")
    for _ in range(3):  # interleaved, so a load spike hits both alike
        t0 = time.perf_counter()
        iterate_batched(Y, _PROBE_COEFFICIENTS)
        t1 = time.perf_counter()
        iterate_loop(Y, _PROBE_COEFFICIENTS)
        t2 = time.perf_counter()
        batched, loop = min(batched, t1 - t0), min(loop, t2 - t1)
    return batched / loop


def loop_speedup(device: str | torch.device, dtype: torch.dtype, count: int, n: int, m: int) -> float:
    """Measured time(batched step) / time(2-D loop step) for ``count`` (n, m) matrices (n ≤ m) in
    ``dtype`` on a CPU (cached per thread count and shape). Only CPUs are probed; raises ValueError otherwise."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"loop_speedup: only CPUs are probed, got device={device!r}")
    return _cpu_speedup(torch.get_num_threads(), dtype, count, min(n, m), max(n, m))


def auto_products(device: str | torch.device, dtype: torch.dtype, count: int, n: int, m: int) -> str:
    """"loop" where the probe measures the 2-D loop ≥ ``MIN_SPEEDUP`` times faster on a CPU, else "batched"."""
    if torch.device(device).type != "cpu":
        return "batched"
    return "loop" if loop_speedup(device, dtype, count, n, m) >= MIN_SPEEDUP else "batched"


def _distributed() -> bool:
    """Whether this process is one of several (torch.distributed initialized, world size > 1)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def checked_choices(choices: object) -> dict[str, str]:
    """Saved choices, validated: a dict of "device:dtype:count×n×m" → one of ``FORMS``."""
    if not isinstance(choices, dict) or any(not isinstance(k, str) or v not in FORMS for k, v in choices.items()):
        raise ValueError(f"ns_products_auto must map 'device:dtype:count x n x m' to one of {FORMS}, got {choices!r}")
    return dict(choices)


class ProductChoices:
    """The product form per call shape: recorded choices first, else ``auto_products`` (then recorded)."""

    def __init__(self, choices: dict[str, str] | None = None) -> None:
        self.choices: dict[str, str] = checked_choices(choices or {})

    def resolve(self, device: str | torch.device, dtype: torch.dtype, count: int, n: int, m: int) -> str:
        key = product_key(device, dtype, count, n, m)
        if key not in self.choices:  # several processes must agree (replicated LMOs, a resumed run): no probe there
            self.choices[key] = "batched" if _distributed() else auto_products(device, dtype, count, n, m)
        return self.choices[key]

    def update(self, choices: dict[str, str]) -> None:
        """Adopt saved choices (validated before anything changes); they replace this machine's."""
        self.choices.update(checked_choices(choices))

    def __repr__(self) -> str:
        return "'auto'"


DEFAULT_CHOICES = ProductChoices()
"""The process-wide table ``orthogonalize(products="auto")`` uses."""
