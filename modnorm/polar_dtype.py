"""The compute dtype Newton–Schulz should use on a device: ``auto_dtype`` (``ns_dtype="auto"``).

Matrix products dominate the polar factor, so the iteration should run in the dtype the
hardware multiplies fastest, at the accuracy the LMO needs. Polar Express reaches the
bf16 rounding floor (max |σ−1| ≈ 5e-3) in 6 steps and the float32 floor (≈ 4e-7) in 8
(``modnorm.polar.default_steps``), so bf16 halves the memory traffic and costs 2 steps
less — but only where bf16 products are fast. They are on CUDA (tensor cores) and on
CPUs with AMX or AVX512-BF16 (3.6–6.7× faster than float32 for 256² to 1024² products);
elsewhere bf16 is emulated and can be tens of times slower. Hence, for a parameter of
dtype ``param_dtype`` on ``device``:

- float64 parameters → float64 (exact paths stay exact);
- CUDA → bfloat16 where ``torch.cuda.is_bf16_supported()``, else float32;
- CPU → bfloat16 when the one-time probe ``bf16_speedup("cpu", size)`` measures bf16
  products of the matrices' size class at least ``MIN_SPEEDUP`` times faster than
  float32, else float32;
- any other device → float32.

The size class is the matrices' short side rounded up to a power of two in [32, 256]
(``size_class``): on CPUs with AMX, bf16 products of 64² matrices are slower than
float32 ones and those of 256² matrices 4× faster, so the choice is made per class. The
probe times ``baddbmm`` on a (2, s, s) batch (one Newton–Schulz product) in both dtypes,
interleaved, best of 5, under the current thread count: a few milliseconds, once per
process, thread count and class. ``torch.cpu._is_avx512_bf16_supported()`` is reported
next to it (``cpu_report``) but does not decide: the measurement does.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch

__all__ = ["auto_dtype", "bf16_speedup", "cpu_report", "size_class", "MIN_SPEEDUP"]

MIN_SPEEDUP: float = 1.25
"""bf16 must be at least this much faster than float32 to be chosen (it is less accurate)."""


SIZE_CLASSES: tuple[int, ...] = (32, 64, 128, 256)


def size_class(short_side: int | None) -> int:
    """The probe size for matrices whose short side is ``short_side``: the next power of two,
    clamped to [32, 256] (None: 256, the large-matrix class)."""
    if short_side is None:
        return SIZE_CLASSES[-1]
    return next((s for s in SIZE_CLASSES if short_side <= s), SIZE_CLASSES[-1])


def _time_product(dtype: torch.dtype, size: int) -> float:
    """Seconds per ``baddbmm`` of a (2, size, size) batch (enough calls to be above timer noise)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, size, size, generator=g).to(dtype)
    A = torch.randn(2, size, size, generator=g).to(dtype)
    torch.baddbmm(X, A, X, beta=1.5)  # first call: kernel selection, caches
    calls = max(1, 2_000_000 // size**3)
    t0 = time.perf_counter()
    for _ in range(calls):
        torch.baddbmm(X, A, X, beta=1.5)
    return (time.perf_counter() - t0) / calls


@lru_cache(maxsize=None)
def _cpu_speedup(threads: int, size: int) -> float:
    fp32 = bf16 = float("inf")
    for _ in range(5):  # interleaved, so a load spike hits both alike
        fp32 = min(fp32, _time_product(torch.float32, size))
        bf16 = min(bf16, _time_product(torch.bfloat16, size))
    return fp32 / bf16


def bf16_speedup(device: str | torch.device = "cpu", size: int = 256) -> float:
    """Measured time(float32 product) / time(bfloat16 product) of (2, size, size) batches on a
    CPU (cached per thread count and size). Only CPUs are probed; raises ValueError otherwise."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"bf16_speedup: only CPUs are probed, got device={device!r}")
    return _cpu_speedup(torch.get_num_threads(), size)


def cpu_report() -> dict[str, object]:
    """What ``auto_dtype`` sees on this CPU: the AVX512-BF16 flag, and per size class the probe and its choice."""
    flag = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    speedup = {s: bf16_speedup("cpu", s) for s in SIZE_CLASSES}
    return {"avx512_bf16": bool(flag), "threads": torch.get_num_threads(), "bf16_speedup": speedup,
            "choice": {s: "bfloat16" if v >= MIN_SPEEDUP else "float32" for s, v in speedup.items()}}


def auto_dtype(device: str | torch.device, param_dtype: torch.dtype, short_side: int | None = None) -> torch.dtype:
    """The Newton–Schulz compute dtype for ``param_dtype`` matrices with this short side on
    ``device`` (module docstring; ``short_side=None``: large matrices)."""
    if param_dtype == torch.float64:
        return torch.float64
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if bf16_speedup("cpu", size_class(short_side)) >= MIN_SPEEDUP else torch.float32
    return torch.float32
