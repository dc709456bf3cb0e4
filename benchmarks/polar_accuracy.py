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
    O = O.double().cpu()
    if not bool(torch.isfinite(O).all()):
        return math.inf, math.inf
    sig = torch.linalg.svdvals(O)
    rel = torch.linalg.matrix_norm(O - ref) / torch.linalg.matrix_norm(ref)
    return float((sig - 1).abs().max()), float(rel.max())


def timeit(fn, repeat: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small matrices and few settings (seconds)")
    p.add_argument("--out", default=None, help="JSON output path (default runs/polar_accuracy[_quick].json)")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    default = {m: [k] for m, k in DEFAULT_STEPS.items()}
    if args.quick:
        shapes, batch, kappas, repeat = [(32, 32), (48, 16), (16, 48)], 2, [1e2, 1e4], args.repeat
        many = {"jordan": [5], "polar_express": [5, 8], "cubic": [30], "svd": [0]}
        plan = {"float64": many, "bfloat16": default}
        safety_steps = [5, 8]
    else:
        shapes, batch, kappas, repeat = [(128, 128), (512, 128), (128, 512)], 4, [1e1, 1e2, 1e4], args.repeat
        many = {"jordan": [3, 5, 10], "polar_express": [4, 5, 6, 7, 8, 10], "cubic": [10, 20, 30, 40], "svd": [0]}
        # bf16 matmuls are emulated (slow) on most CPUs: default steps and Polar Express at 5.
        plan = {"float64": many, "float32": many, "bfloat16": {**default, "polar_express": [5, 8]}}
        safety_steps = [5, 6, 8, 10]
    steps = many

    cases = []
    for i, (m, n) in enumerate(shapes):
        for j, kappa in enumerate(kappas):
            X = gradient_like(batch, m, n, kappa, seed=100 * i + j)
            cases.append(((m, n), kappa, X.to(device), None))

    def worst(method: str, k: int, dtype: torch.dtype, run=None) -> dict[str, float]:
        """Worst error over shapes, per κ; the reference is the exact factor of the input
        as rounded to ``dtype`` (so bf16 rows measure the iteration, not the input rounding)."""
        out: dict[str, float] = {}
        for _, kappa, X, _ in cases:
            Xd = X.to(dtype)
            ref = exact_polar(Xd.double().cpu())
            O = run(Xd) if run else orthogonalize(Xd, method=method, steps=k or None, dtype=dtype)
            s, r = errors(O, ref)
            out[f"sig_{kappa:g}"] = max(out.get(f"sig_{kappa:g}", 0.0), s)
            out[f"fro_{kappa:g}"] = max(out.get(f"fro_{kappa:g}", 0.0), r)
        return out

    rows = []
    for dname, methods in plan.items():
        for method, ks in methods.items():
            for k in ks:
                if method == "svd" and dname == "bfloat16":
                    continue
                rows.append({"method": method, "steps": k, "dtype": dname, **worst(method, k, DTYPES[dname])})

    # Timing at default steps: batched vs one at a time vs torch.linalg.svd (float32 input).
    timing = []
    tdtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    for (m, n), kappa, X, _ in cases:
        if kappa != kappas[0]:
            continue
        X32 = X.float()
        t_svd = timeit(lambda: torch.linalg.svd(X32, full_matrices=False), repeat, device)
        for method in steps:
            k = DEFAULT_STEPS[method] or None
            t_b = timeit(lambda: orthogonalize(X32, method=method, steps=k, dtype=tdtype), repeat, device)
            t_l = timeit(lambda: [orthogonalize(x, method=method, steps=k, dtype=tdtype) for x in X32], repeat, device)
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
        for k in safety_steps:
            sched = (head + [POLAR_EXPRESS[-1]] * k)[:k]
            for dname in plan:
                dt = DTYPES[dname]
                errs = worst("", 0, dt, run=lambda Y, sched=sched, in_s=in_s, dt=dt: _newton_schulz(Y, sched, in_s, 1e-7, dt))
                safety.append({"variant": name, "steps": k, "dtype": dname, **errs})

    result = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "timing_compute_dtype": str(tdtype),
        "shapes": shapes, "batch": batch, "kappas": kappas,
        "accuracy": rows, "timing": timing, "safety": safety,
    }
    out = Path(args.out or ("runs/polar_accuracy_quick.json" if args.quick else "runs/polar_accuracy.json"))
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
    print(f"\ntiming, compute {tdtype}, default steps, batch {batch} (best of {repeat}), {result['device']}, {result['threads']} threads")
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
