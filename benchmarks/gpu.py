"""GPU readiness: Newton–Schulz throughput, optimizer steps against a training step, bf16 accuracy.

On a CUDA device (default) the script measures:

- ``matmul``: the bf16 matrix-product throughput (TFLOP/s) of an n×n product, the peak
  the iteration can approach;
- ``ns``: ``modnorm.orthogonalize`` (Polar Express, ``dtype="auto"``: bf16, 6 steps) on the
  hidden matrices of a 124M GPT (d = 768, 12 layers: 48 of 768×768, 12 of 3072×768, 12 of
  768×3072, one batched call per shape), in TFLOP/s (per step and m ≤ n: 4m²n + 2m³
  flops) and as a fraction of the matmul peak;
- ``steps``: one optimizer step of modnorm ``muon`` and ``muadam`` and of torch.optim.Muon
  (hidden) + AdamW (rest) on that model, and one forward + backward of it (bf16 autocast,
  batch × 1024 tokens), median of interleaved repeats; and each step's peak memory beyond
  what existed before it, × the parameter bytes (CUDA: the allocator's peak; CPU:
  torch.profiler's allocation events);
- ``accuracy``: max |σ−1| of bf16 Polar Express at 5–8 steps on gradient-like matrices
  (singular values log-uniform in [1e-2, 1]) against float64 SVD.

Without a CUDA device it prints why, writes ``{"skipped": ...}`` and exits 0, unless
``--device cpu`` asks for the same measurements on the CPU. ``--quick``: small sizes.

    python benchmarks/gpu.py --out runs/gpu.json
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import modnorm  # noqa: E402
from modnorm.demo.training import write_json  # noqa: E402
from modnorm.polar import orthogonalize  # noqa: E402
from modnorm.polar_dtype import auto_dtype  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hidden_shapes(d: int, layers: int) -> dict[tuple[int, int], int]:
    """Shape → count of a GPT's hidden matrices (q, k, v, o; MLP up and down)."""
    return {(d, d): 4 * layers, (4 * d, d): layers, (d, 4 * d): layers}


def ns_flops(m: int, n: int, steps: int) -> float:
    """Flops of ``steps`` quintic steps on an m×n matrix (short side s = min(m, n))."""
    s, l = min(m, n), max(m, n)
    return steps * (4.0 * s * s * l + 2.0 * s**3)


def measure_matmul(device: torch.device, n: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2.0 * n**3 / timed(lambda: a @ b, device, repeats) / 1e12


def measure_ns(device: torch.device, d: int, layers: int, repeats: int) -> dict[str, float]:
    mats = {s: torch.randn(c, *s, device=device) for s, c in hidden_shapes(d, layers).items()}
    dtype = auto_dtype(device, torch.float32, d)
    steps = 6 if dtype == torch.bfloat16 else 8
    t = timed(lambda: [orthogonalize(X, dtype="auto") for X in mats.values()], device, repeats)
    flops = sum(c * ns_flops(*s, steps) for s, c in hidden_shapes(d, layers).items())
    return {"seconds": t, "tflops": flops / t / 1e12, "dtype": str(dtype).removeprefix("torch."), "steps": steps}


def measure_accuracy(device: torch.device, n: int) -> dict[int, float]:
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(4, n, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, n, n, generator=g, dtype=torch.float64))
    G = (U * torch.logspace(0, -2, n, dtype=torch.float64)) @ V.mT
    X = G.to(device=device, dtype=torch.bfloat16)
    out = {}
    for k in (5, 6, 7, 8):
        O = orthogonalize(X, method="polar_express", steps=k, dtype=torch.bfloat16)
        out[k] = float((torch.linalg.svdvals(O.double().cpu()) - 1).abs().max())
    return out


def measure_steps(device: torch.device, d: int, layers: int, vocab: int, batch: int, ctx: int, repeats: int) -> dict[str, float]:
    from gpt_modnorm import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=vocab, block_size=ctx, n_layer=layers, n_head=max(1, d // 64), n_embd=d)
    idx = torch.randint(vocab, (batch, ctx), device=device)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        m = GPT(cfg).to(device)
        for p in m.parameters():
            p.grad = torch.randn_like(p) * 1e-2
        return m

    def torch_muon(m: torch.nn.Module) -> list[torch.optim.Optimizer]:
        hidden = [p for n, p in m.named_parameters() if p.ndim == 2 and not n.startswith(("wte", "lm_head"))]
        rest = [p for n, p in m.named_parameters() if p.ndim != 2 or n.startswith(("wte", "lm_head"))]
        return [torch.optim.Muon(hidden, lr=0.02), torch.optim.AdamW(rest, lr=1e-3)]

    contenders: dict[str, tuple[torch.nn.Module, list[torch.optim.Optimizer]]] = {}
    for name, make in (("torch.Muon+AdamW", torch_muon), ("modnorm.muon", lambda m: [modnorm.optimizer(m, "muon")]),
                       ("modnorm.muadam", lambda m: [modnorm.optimizer(m, "muadam")])):
        m = model()
        contenders[name] = (m, make(m))
    net = contenders["modnorm.muon"][0]
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def fwd_bwd() -> None:
        with amp:
            logits = net(idx)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx.flatten()).backward()

    jobs: dict[str, Callable[[], None]] = {"fwd+bwd": fwd_bwd}
    jobs.update({k: (lambda opts=opts: [o.step() for o in opts]) for k, (_, opts) in contenders.items()})
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for fn in jobs.values():
        fn()
    for r in range(repeats):  # interleaved
        names = list(jobs)[r % len(jobs):] + list(jobs)[: r % len(jobs)]
        for k in names:
            _sync(device)
            t0 = time.perf_counter()
            jobs[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    for k, (m, opts) in contenders.items():  # memory after the timing: every step is a steady one
        param_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
        out[f"peak:{k}"] = peak_step_bytes(device, lambda opts=opts: [o.step() for o in opts]) / param_bytes
    return out


def peak_step_bytes(device: torch.device, step: Callable[[], object]) -> float:
    """Peak bytes one ``step()`` allocates beyond what existed before it: the CUDA allocator's peak,
    or torch.profiler's CPU allocation events (``optimizer_step.peak_step_bytes``)."""
    if device.type != "cuda":
        from optimizer_step import peak_step_bytes as cpu_peak

        return float(cpu_peak(step))
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        result: dict = {"skipped": "no CUDA device (torch.cuda.is_available() is False); --device cpu measures the CPU"}
        print(result["skipped"])
    else:
        d, layers, vocab, batch, ctx, n = (64, 2, 256, 2, 64, 256) if args.quick else (768, 12, 50304, 8, 1024, 8192)
        if device.type == "cpu" and not args.quick:
            n = 2048
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = measure_matmul(device, n, args.repeats)
        ns = measure_ns(device, d, layers, args.repeats)
        measured = measure_steps(device, d, layers, vocab, batch, ctx, args.repeats)
        steps = {k: v for k, v in measured.items() if not k.startswith("peak:")}
        memory = {k.removeprefix("peak:"): v for k, v in measured.items() if k.startswith("peak:")}
        result = {
            "device": name, "torch": torch.__version__, "quick": args.quick,
            "model": {"d": d, "layers": layers, "vocab": vocab, "batch": batch, "ctx": ctx},
            "matmul_bf16_tflops": peak, "ns": {**ns, "fraction_of_matmul_peak": ns["tflops"] / peak},
            "steps_ms": {k: 1e3 * v for k, v in steps.items()},
            "step_over_fwd_bwd": {k: v / steps["fwd+bwd"] for k, v in steps.items() if k != "fwd+bwd"},
            "step_over_torch_muon": {k: v / steps["torch.Muon+AdamW"] for k, v in steps.items() if k.startswith("modnorm")},
            "peak_step_x_params": memory,
            "bf16_polar_express_max_sigma_err": measure_accuracy(device, 64 if args.quick else 512),
        }
        print(f"{name}: bf16 matmul {peak:.1f} TFLOP/s; Newton–Schulz ({ns['dtype']}, {ns['steps']} steps) {ns['tflops']:.1f} TFLOP/s "
              f"= {ns['tflops'] / peak:.0%} of it")
        print("| step | ms | × fwd+bwd | × torch Muon+AdamW | peak step memory × params |\n|---|---:|---:|---:|---:|")
        for k, v in result["steps_ms"].items():
            vs_muon = f"{result['step_over_torch_muon'][k]:.2f}" if k in result["step_over_torch_muon"] else ""
            peak_x = f"{memory[k]:.2f}" if k in memory else ""
            print(f"| {k} | {v:.2f} | {result['step_over_fwd_bwd'].get(k, 1.0):.3f} | {vs_muon} | {peak_x} |")
        print("bf16 Polar Express max|σ−1| by steps:", {k: f"{v:.1e}" for k, v in result["bf16_polar_express_max_sigma_err"].items()})
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
