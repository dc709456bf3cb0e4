"""Accuracy and speed of ``modnorm.orthogonalize`` per method, step count and compute dtype.

Test matrices are gradient-like: G = U diag(σ) Vᵀ with random orthogonal U, V and a
spectrum decaying log-uniformly from 1 to 1/κ (κ = condition number), in square, tall
and wide shapes. For each method and step count the table reports, over all matrices,

- ``max|σ-1|``: the largest deviation from 1 of a singular value of the output;
- ``rel_fro``: the largest relative Frobenius error ‖O − U Vᵀ‖_F / ‖U Vᵀ‖_F;
- ``t/svd``: time of one batched call relative to ``torch.linalg.svd`` on the same batch
  (float32), and ``loop/batched``: the same method one matrix at a time over the batch,
  relative to the batched call (measured side by side in this run).

Also a study of where the Polar Express safety factor goes (input normalization, the
coefficients, both as in the paper's reference code, or neither).

    python benchmarks/polar_accuracy.py              # full run, writes runs/polar_accuracy.json
    python benchmarks/polar_accuracy.py --quick      # seconds; small matrices
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modnorm.polar import (  # noqa: E402
    DEFAULT_STEPS,
    POLAR_EXPRESS,
    POLAR_EXPRESS_SAFETY,
    _newton_schulz,
    _with_safety,
    orthogonalize,
)

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def gradient_like(batch: int, m: int, n: int, kappa: float, seed: int) -> torch.Tensor:
    """(batch, m, n) float64 matrices with singular values log-uniform in [1/κ, 1]."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(batch, m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(batch, n, r, generator=g, dtype=torch.float64))
    S = torch.logspace(0, -math.log10(kappa), r, dtype=torch.float64)
    return (U * S) @ V.mT


def exact_polar(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def errors(O: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    O = O.double()
    if not bool(torch.isfinite(O).all()):
        return math.inf, math.inf
    sig = torch.linalg.svdvals(O)
    rel = torch.linalg.matrix_norm(O - ref) / torch.linalg.matrix_norm(ref)
    return float((sig - 1).abs().max()), float(rel.max())


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small matrices and few settings (seconds)")
    p.add_argument("--out", default="runs/polar_accuracy.json", help="JSON output path")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        shapes, batch, kappas = [(32, 32), (48, 16), (16, 48)], 2, [1e2, 1e4]
        steps = {"jordan": [5], "polar_express": [5, 8], "cubic": [30], "svd": [0]}
        dtypes, repeat = ["float64", "bfloat16"], 1
    else:
        shapes, batch, kappas = [(256, 256), (1024, 256), (256, 1024)], 8, [1e1, 1e2, 1e4]
        steps = {"jordan": [3, 5, 7, 10], "polar_express": [4, 5, 6, 7, 8, 10], "cubic": [10, 20, 30, 40], "svd": [0]}
        dtypes, repeat = ["float64", "float32", "bfloat16"], args.repeat

    cases = []
    for i, (m, n) in enumerate(shapes):
        for j, kappa in enumerate(kappas):
            X = gradient_like(batch, m, n, kappa, seed=100 * i + j)
            cases.append(((m, n), kappa, X, exact_polar(X)))

    def worst(method: str, k: int, dtype: torch.dtype, run=None) -> dict[str, float]:
        """Worst error over shapes, per κ; the reference is the exact factor of the input
        as rounded to ``dtype`` (so bf16 rows measure the iteration, not the input rounding)."""
        out: dict[str, float] = {}
        for _, kappa, X, _ in cases:
            Xd = X.to(dtype)
            ref = exact_polar(Xd.double())
            O = run(Xd) if run else orthogonalize(Xd, method=method, steps=k or None, dtype=dtype)
            s, r = errors(O, ref)
            out[f"sig_{kappa:g}"] = max(out.get(f"sig_{kappa:g}", 0.0), s)
            out[f"fro_{kappa:g}"] = max(out.get(f"fro_{kappa:g}", 0.0), r)
        return out

    rows = []
    for method, ks in steps.items():
        for k in ks:
            for dname in dtypes:
                if method == "svd" and dname == "bfloat16":
                    continue
                rows.append({"method": method, "steps": k, "dtype": dname, **worst(method, k, DTYPES[dname])})

    # Timing, float32 compute, largest shape of each kind: batched vs one at a time vs SVD.
    timing = []
    for (m, n), kappa, X, _ in cases:
        if kappa != kappas[0]:
            continue
        X32 = X.float()
        t_svd = timeit(lambda: torch.linalg.svd(X32, full_matrices=False), repeat)
        for method in steps:
            k = DEFAULT_STEPS[method] or None
            t_b = timeit(lambda: orthogonalize(X32, method=method, steps=k), repeat)
            t_l = timeit(lambda: [orthogonalize(x, method=method, steps=k) for x in X32], repeat)
            timing.append({"shape": [m, n], "batch": batch, "method": method, "steps": k or 0,
                           "t_batched_s": t_b, "t_loop_s": t_l, "t_svd_s": t_svd,
                           "batched_over_svd": t_b / t_svd, "loop_over_batched": t_l / t_b})

    # Where the Polar Express safety factor goes.
    s = POLAR_EXPRESS_SAFETY
    safe = [_with_safety(abc, s) for abc in POLAR_EXPRESS[:-1]]
    plain = list(POLAR_EXPRESS[:-1])
    variants = {"both (paper)": (safe, s), "input only": (plain, s), "coefficients only": (safe, 1.0), "none": (plain, 1.0)}
    safety = []
    for name, (head, in_s) in variants.items():
        for k in ([5, 8] if args.quick else [5, 6, 8, 10]):
            sched = (head + [POLAR_EXPRESS[-1]] * k)[:k]
            for dname in dtypes:
                dt = DTYPES[dname]
                errs = worst("", 0, dt, run=lambda Y, sched=sched, in_s=in_s, dt=dt: _newton_schulz(Y, sched, in_s, 1e-7, dt))
                safety.append({"variant": name, "steps": k, "dtype": dname, **errs})

    result = {
        "command": "python benchmarks/polar_accuracy.py" + (" --quick" if args.quick else ""),
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "shapes": shapes, "batch": batch, "kappas": kappas,
        "accuracy": rows, "timing": timing, "safety": safety,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    keys = [f"sig_{k:g}" for k in kappas] + [f"fro_{k:g}" for k in kappas]
    head = " ".join(f"{'max|σ-1| κ=' + k[4:] if k.startswith('sig') else 'rel_fro κ=' + k[4:]:>16s}" for k in keys)

    def line(r: dict) -> str:
        return " ".join(f"{r[k]:16.2e}" for k in keys)

    print(f"shapes {shapes}, batch {batch}; worst case over shapes for each κ")
    print(f"{'method':14s} {'steps':>5s} {'dtype':>9s} {head}")
    for r in rows:
        print(f"{r['method']:14s} {r['steps']:5d} {r['dtype']:>9s} {line(r)}")
    print("\ntiming, float32, default steps (best of %d)" % repeat)
    print(f"{'shape':>12s} {'method':14s} {'steps':>5s} {'t/svd':>7s} {'loop/batched':>13s}")
    for t in timing:
        print(f"{str(tuple(t['shape'])):>12s} {t['method']:14s} {t['steps']:5d} {t['batched_over_svd']:7.3f} {t['loop_over_batched']:13.2f}")
    print("\nPolar Express safety factor placement")
    print(f"{'variant':18s} {'steps':>5s} {'dtype':>9s} {head}")
    for r in safety:
        print(f"{r['variant']:18s} {r['steps']:5d} {r['dtype']:>9s} {line(r)}")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
