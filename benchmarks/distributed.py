"""Benchmark: whole-matrix LMOs on FSDP2-sharded matrices, all_to_all vs replicated.

For W gloo ranks (CPU processes on this machine) and N same-shape matrices sharded
row-wise (``Shard(0)``), one "step" computes the spectral LMO (Polar Express
Newton–Schulz) of all N whole matrices and leaves each rank its shards, two ways:

- ``all_to_all`` (modnorm.distributed): each rank receives ~N/W whole matrices,
  orthogonalizes them in one batched call, and sends the slices back;
- ``replicated``: every rank all-gathers every matrix and orthogonalizes all N
  (what DTensor's implicit redistribution or a ZeRO-1-style gather does).

``single`` is one process orthogonalizing all N (the work each replicated rank repeats).

A second table times a whole ``optimizer.step()`` (preset muon, float32 Newton–Schulz)
for a stack of N Linear(d, d) layers: FSDP2 (``fully_shard`` per layer; modnorm's
sharded pipeline) against DDP (replicated parameters: every rank runs every LMO).
Bytes are those the step itself sends (DDP's gradient all-reduce happens in backward).
Reported: median seconds per step and bytes sent per rank per step (measured for
all_to_all by ``modnorm.distributed.counting()``; the all-gather's are (W−1)·local bytes).
On a machine with fewer cores than ranks the times measure contention, not scaling.

    python benchmarks/distributed.py --quick --json benchmarks/distributed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modnorm import Spectral  # noqa: E402
from modnorm.distributed import counting, distributed_lmo, layout_of  # noqa: E402
from modnorm.distributed.launch import launch  # noqa: E402


def _matrices(n: int, m: int, k: int) -> torch.Tensor:
    return torch.randn(n, m, k, generator=torch.Generator().manual_seed(0))


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(world: int, n: int, m: int, k: int, reps: int) -> dict[str, float]:
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    norm = Spectral()
    Gs = [distribute_tensor(g, mesh, [Shard(0)]) for g in _matrices(n, m, k)]

    def a2a() -> None:
        distributed_lmo(norm, Gs)

    def replicated() -> None:
        whole = torch.stack([g.full_tensor() for g in Gs])
        out = norm.lmo(whole)
        r, c = dist.get_rank(), -(-m // world)
        out[:, r * c : (r + 1) * c].contiguous()

    def timed(fn) -> float:
        dist.barrier()
        return _time(lambda: (fn(), dist.barrier()), reps)

    with counting() as stats:
        a2a()
    a2a_bytes = stats.bytes_sent
    step_fsdp, step_fsdp_bytes = _optimizer_step_time(world, n, m, reps, "fsdp")
    step_ddp, _ = _optimizer_step_time(world, n, m, reps, "ddp")
    local_bytes = sum(g.to_local().numel() * g.element_size() for g in Gs)
    layout_of(Gs[0])  # validates the sharding
    return {
        "all_to_all_s": timed(a2a),
        "replicated_s": timed(replicated),
        "all_to_all_bytes": float(a2a_bytes),
        "replicated_bytes": float(local_bytes * (world - 1)),
        "step_fsdp_s": step_fsdp,
        "step_ddp_s": step_ddp,
        "step_fsdp_bytes": float(step_fsdp_bytes),
    }


def _optimizer_step_time(world: int, n: int, d: int, reps: int, mode: str) -> tuple[float, int]:
    """Median seconds of ``opt.step()`` and the bytes one step sends, for N Linear(d, d)."""
    import torch.distributed as dist
    from torch import nn

    import modnorm

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(d, d, bias=False) for _ in range(n)])
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model)
    opt = modnorm.optimizer(model, "muon", lr=0.01, ns_dtype="float32")
    model(torch.randn(4, d)).square().mean().backward()

    def step() -> None:
        opt.step()
        dist.barrier()

    step()  # initializes state
    with counting() as stats:
        step()
    sent = stats.bytes_sent
    return _time(step, reps), sent


def compile_probe(steps: int = 6) -> dict[str, object]:
    """``torch.compile(opt.step, backend="eager")`` for muadam with a tensor lr and a LambdaLR
    schedule: graphs, graph breaks, recompiles and the largest difference from eager."""
    import logging

    import torch._dynamo as dynamo
    from torch import nn
    from torch._dynamo.utils import counters

    import modnorm

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)

    def run(compiled: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
        opt = modnorm.optimizer(m, "muadam", lr=torch.tensor(0.01), ns_dtype="float32")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        for t in range(steps):
            g = torch.Generator().manual_seed(t)
            x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            step()
            sched.step()
        return [p.detach().clone() for p in m.parameters()]

    eager = run(False)
    dynamo.reset()
    counters.clear()
    compiled = run(True)
    breaks = counters["graph_break"]
    return {
        "steps": steps,
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": sorted({k.split("\n")[0][:100] for k in breaks}),
        "max_abs_diff_vs_eager": max(float((a - b).abs().max()) for a, b in zip(eager, compiled)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--json", type=Path, default=Path("benchmarks/distributed.json"))
    p.add_argument("--compile-probe", action="store_true", help="only probe torch.compile(opt.step) (single process)")
    a = p.parse_args()
    if a.compile_probe:
        res = compile_probe()
        for k, v in res.items():
            print(f"{k}: {v}")
        return
    n, m, k, reps = (8, 256, 256, 3) if a.quick else (16, 1024, 1024, 5)
    torch.set_num_threads(1)
    norm = Spectral()
    X = _matrices(n, m, k)
    single = _time(lambda: norm.lmo(X), reps)
    rows = []
    for w in a.worlds:
        res = launch(worker, w, w, n, m, k, reps)
        slowest = {key: max(r[key] for r in res) for key in res[0]}
        rows.append({"world": w, "n": n, "shape": [m, k], "single_s": single, **slowest})
    print("Spectral LMO of N sharded matrices (seconds per step; MB sent per rank per step)")
    print("| ranks | N x shape | single s | all_to_all s | replicated s | all_to_all MB/rank | replicated MB/rank |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['world']} | {n} x {m}x{k} | {r['single_s']:.4f} | {r['all_to_all_s']:.4f} | {r['replicated_s']:.4f} "
            f"| {r['all_to_all_bytes'] / 1e6:.3f} | {r['replicated_bytes'] / 1e6:.3f} |"
        )
    print()
    print("optimizer.step(), preset muon, N x Linear(d, d) (seconds per step; MB the step sends per rank)")
    print("| ranks | N x d | FSDP2 step s | DDP step s | FSDP2 step MB/rank | DDP step MB/rank |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world']} | {n} x {m} | {r['step_fsdp_s']:.4f} | {r['step_ddp_s']:.4f} | {r['step_fsdp_bytes'] / 1e6:.3f} | 0.000 |")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"quick": a.quick, "threads_per_rank": 1, "rows": rows}, indent=2))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
