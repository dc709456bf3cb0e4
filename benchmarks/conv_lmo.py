"""Conv-kernel LMOs per ResNet-18 kernel shape: execution forms of ``SpectralConv``'s norm, and the flattening.

For each conv kernel shape of ResNet-18 (d_out, d_in, k, k), with all of ResNet-18's layers
of that shape stacked as the optimizer's bucket does (one call per shape), the script
times side by side (interleaved, median), on random kernels:

- ``positions``: ``SpectralConv``'s norm (K·max_p ‖W_p‖_{RMS→RMS}, K = k²): the polar factor of
  every (d_out, d_in) kernel position, all layers and positions in one call, with the
  Newton–Schulz products ``batched`` (3-D) or as a 2-D ``loop`` (``modnorm.polar_products``);
- ``flatten``: the polar factor of the (d_out, d_in·k²) reshaping (``SpectralConv(layout=
  "flatten")``, the Muon CIFAR-10 speedruns' choice; a different norm), batched or looped;
- ``positions svd`` / ``flatten svd``: the same two with ``torch.linalg.svd`` (exact; float32);

in float32 and in the dtype ``ns_dtype="auto"`` picks on this machine, with that dtype's
number of Polar Express steps; ``auto`` is the form ``products="auto"`` picks (probed).
The last line sums each column over the shapes (one ResNet-18 LMO), and ``flops`` gives the
Newton–Schulz flop count of the per-position LMO at the auto dtype against this CPU's
measured 2-D product throughput (the floor of the per-position LMO).

    python benchmarks/conv_lmo.py --out runs/conv_lmo.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modnorm.demo.training import write_json  # noqa: E402
from modnorm.polar import default_steps, orthogonalize  # noqa: E402
from modnorm.polar_dtype import auto_dtype  # noqa: E402
from modnorm.polar_products import auto_products  # noqa: E402

# ResNet-18's conv kernels: shape → number of layers with it.
SHAPES: list[tuple[tuple[int, int, int, int], int]] = [
    ((64, 3, 7, 7), 1), ((64, 64, 3, 3), 4), ((128, 64, 3, 3), 1), ((128, 128, 3, 3), 3), ((128, 64, 1, 1), 1),
    ((256, 128, 3, 3), 1), ((256, 256, 3, 3), 3), ((256, 128, 1, 1), 1), ((512, 256, 3, 3), 1), ((512, 512, 3, 3), 3),
    ((512, 256, 1, 1), 1)]


def _svd_polar(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def variants(W: torch.Tensor, dtype: torch.dtype) -> dict[str, Callable[[], torch.Tensor]]:
    """W: (layers, d_out, d_in, k, k). The per-position batch and the flattening, each form."""
    L, o, i = W.shape[:3]
    positions = W.reshape(L, o, i, -1).movedim(-1, 1)  # (L, K, d_out, d_in), as SpectralConv forms it
    flat = W.reshape(L, o, -1)
    out = {f"{name} {form}": (lambda X=X, form=form: orthogonalize(X, dtype=dtype, products=form))
           for name, X in (("positions", positions), ("flatten", flat)) for form in ("batched", "loop")}
    if dtype == torch.float32:
        out.update({"positions svd": lambda: _svd_polar(positions), "flatten svd": lambda: _svd_polar(flat)})
    return out


def ns_flops(shape: tuple[int, ...], layers: int, steps: int) -> float:
    """Flops of ``steps`` Newton–Schulz steps on every kernel position: per step 4n²m + 2n³ (n ≤ m)."""
    o, i = shape[:2]
    K = shape[2] * shape[3]
    n, m = min(o, i), max(o, i)
    return layers * K * steps * (4 * n * n * m + 2 * n**3)


def matmul_rate(dtype: torch.dtype, size: int = 512, calls: int = 5) -> float:
    """Best measured flop/s of a 2-D (size × size) product in ``dtype``."""
    A = torch.randn(size, size).to(dtype)
    A @ A
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        A @ A
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the first three shapes, 2 repeats")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:3] if args.quick else SHAPES
    repeats = 2 if args.quick else args.repeats
    rows, total_flops = [], 0.0
    for shape, layers in shapes:
        W = torch.randn(layers, *shape, generator=torch.Generator().manual_seed(0))
        auto = auto_dtype("cpu", torch.float32, min(shape[:2]))
        dname = str(auto).removeprefix("torch.")
        jobs = {f"{k} float32": f for k, f in variants(W, torch.float32).items()}
        if auto != torch.float32:
            jobs.update({f"{k} {dname}": f for k, f in variants(W, auto).items()})
        times: dict[str, list[float]] = {k: [] for k in jobs}
        for f in jobs.values():
            f()
        for r in range(repeats):
            names = list(jobs)[r % len(jobs):] + list(jobs)[: r % len(jobs)]
            for k in names:
                t0 = time.perf_counter()
                jobs[k]()
                times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        o, i, kh, kw = shape
        chosen = auto_products("cpu", auto, layers * kh * kw, o, i)
        total_flops += ns_flops(shape, layers, default_steps("polar_express", auto))
        row = {"shape": list(shape), "layers": layers, "auto_dtype": dname, "auto_products": chosen, "ms": med,
               "fastest": min(med, key=med.get)}
        rows.append(row)
        print(f"{layers}× {str(shape):>18s} auto {dname}/{chosen}  " + "  ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    totals = {k: sum(r["ms"].get(k, r["ms"].get(k.replace("bfloat16", "float32"), 0.0)) for r in rows) for k in rows[-1]["ms"]}
    rates = {str(d).removeprefix("torch."): matmul_rate(d) for d in (torch.float32, torch.bfloat16)}
    result = {"threads": args.threads, "torch": torch.__version__, "rows": rows, "total_ms": totals,
              "positions_ns_gflop": total_flops / 1e9, "matmul_gflops_512": {k: v / 1e9 for k, v in rates.items()}}
    print("total (ms; float32 where auto kept float32): " + "  ".join(f"{k} {v:.0f}" for k, v in totals.items()))
    print(f"per-position Newton–Schulz at the auto dtypes: {total_flops / 1e9:.0f} GFLOP; 2-D 512² products: "
          + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
