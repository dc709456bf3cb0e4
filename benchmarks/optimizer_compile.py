"""Eager vs ``compile=True`` optimizer steps: time, graphs, graph breaks, recompiles.

GPT-like parameter set of benchmarks/optimizer_step.py with fixed gradients. For each
preset, an eager and a compiled (inductor by default) optimizer take ``--warmup`` steps
under a LambdaLR schedule that changes lr every step, then ``--repeats`` interleaved timed
steps (schedule still running). Reported: median ms per step, compiled/eager ratio,
dynamo's unique graphs and graph breaks, graphs added after warm-up (recompiles caused by
lr or step changes: should be 0), and the largest weight difference compiled vs eager.

    python benchmarks/optimizer_compile.py --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import modnorm  # noqa: E402
from optimizer_step import gpt_params, gpt_shapes, gpt_step_parser  # noqa: E402


def _optimizer(preset: str, shapes, compile_opts) -> tuple[list, torch.optim.Optimizer, object]:
    params = gpt_params(shapes, torch.float32)
    geometries = {}
    for name, _, role in shapes:  # the same geometries as optimizer_step.py's modnorm entries
        if role in ("embedding", "head"):
            geometries[name] = modnorm.Geometry(modnorm.norms.ColNorm(layout="embedding") if role == "embedding" else modnorm.RowNorm(), role=role)
    extra = {"ns_dtype": "float32"} if preset == "muon" else {}
    opt = modnorm.ModnormOptimizer(params, preset, geometries=geometries, lr=torch.tensor(1e-3), compile=compile_opts, **extra)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.01 * s))
    return params, opt, sched


def main(argv: list[str] | None = None) -> None:
    from torch._dynamo.utils import counters

    ap = gpt_step_parser(__doc__)
    ap.add_argument("--presets", nargs="+", default=["adamw", "muadam", "muon"])
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.width, args.repeats = 64, 5
    shapes = gpt_shapes(args.width, args.layers, args.vocab)
    print(f"# width {args.width}, {args.layers} layers, vocab {args.vocab}, float32, {args.threads} thread(s), backend {args.backend}, "
          f"LambdaLR changing lr every step, median of {args.repeats} interleaved steps")
    print("| preset | eager ms | compiled ms | compiled/eager | graphs | graph breaks | graphs added after warm-up | max |Δw| |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        torch._dynamo.reset()
        counters.clear()
        runs = {"eager": _optimizer(preset, shapes, False), "compiled": _optimizer(preset, shapes, {"backend": args.backend})}
        for _, opt, sched in runs.values():
            for _ in range(args.warmup):
                opt.step()
                sched.step()
        warm_graphs = counters["stats"]["unique_graphs"]
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.repeats):
            for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                _, opt, sched = runs[k]
                t0 = time.perf_counter()
                opt.step()
                times[k].append(time.perf_counter() - t0)
                sched.step()
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        diff = max(float((a.detach() - b.detach()).abs().max()) for (_, a), (_, b) in zip(runs["eager"][0], runs["compiled"][0]))
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        print(f"| {preset} | {med['eager']:.2f} | {med['compiled']:.2f} | {med['compiled'] / med['eager']:.2f} | {graphs} | {breaks} | "
              f"{graphs - warm_graphs} | {diff:.1e} |")


if __name__ == "__main__":
    main()
