"""Conv-kernel LMOs: k² per-position polar factors vs the (out, in·k²) flattening vs SVD, per shape.

For each conv kernel shape of ResNet-18 (d_out, d_in, 3, 3) the script times, side by side
(interleaved, median), on one random kernel:

- ``positions``: what ``SpectralConv`` computes — one batched Newton–Schulz call on the k²
  (d_out, d_in) slices (the norm K·max_p ‖W_p‖_{RMS→RMS}, K = k²);
- ``flatten``: one Newton–Schulz call on the (d_out, d_in·k²) reshaping (the Muon CIFAR-10
  speedruns' choice; the norm is the spectral norm of that matrix, a different geometry);
- ``positions_svd`` / ``flatten_svd``: the same two with ``torch.linalg.svd`` (exact);

each in float32 and in the dtype ``ns_dtype="auto"`` picks on this machine, with the
number of Newton–Schulz steps of that dtype (Polar Express).

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
from modnorm.polar import orthogonalize  # noqa: E402
from modnorm.polar_dtype import auto_dtype  # noqa: E402

# ResNet-18's 3×3 kernels (d_out, d_in) and the 1×1 downsampling convs; the 7×7 stem.
SHAPES = [(64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3), (512, 256, 3, 3),
          (512, 512, 3, 3), (128, 64, 1, 1), (512, 256, 1, 1), (64, 3, 7, 7)]


def variants(W: torch.Tensor, dtype: torch.dtype) -> dict[str, Callable[[], torch.Tensor]]:
    o, i = W.shape[:2]
    positions = W.reshape(o, i, -1).movedim(-1, 0).contiguous()  # (K, d_out, d_in)
    flat = W.reshape(o, -1)

    def svd(X: torch.Tensor) -> torch.Tensor:
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        return U @ Vh

    return {
        "positions": lambda: orthogonalize(positions, dtype=dtype),
        "flatten": lambda: orthogonalize(flat, dtype=dtype),
        "positions_svd": lambda: svd(positions),
        "flatten_svd": lambda: svd(flat),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the first three shapes, 2 repeats")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:3] if args.quick else SHAPES
    repeats = 2 if args.quick else args.repeats
    rows = []
    for shape in shapes:
        W = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        auto = auto_dtype("cpu", torch.float32, min(shape[:2]))
        jobs = {f"{k} float32": f for k, f in variants(W, torch.float32).items()}
        if auto != torch.float32:
            jobs.update({f"{k} {str(auto).removeprefix('torch.')}": f for k, f in variants(W, auto).items() if "svd" not in k})
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
        best = min(med, key=med.get)
        rows.append({"shape": list(shape), "auto_dtype": str(auto).removeprefix("torch."), "ms": med, "fastest": best})
        print(f"{str(shape):>18s}  " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()) + f"  → {best}")
    result = {"threads": args.threads, "torch": torch.__version__, "rows": rows}
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
