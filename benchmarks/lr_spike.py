"""The lr spike at preconditioner refresh: SOAP and SPlus on the mnist1d MLP (``mlp_zoo``).

The lr follows a cosine schedule, multiplied by ``spike`` on the step of each refresh of
the eigenbases (steps 1, 1 + k, 1 + 2k, …; ``modnorm.optim.schedules.RefreshSpike``'s
rule), for spike ∈ {1, 2, 4} × refresh interval k ∈ {10, 50}. Each preset keeps one lr
(its mlp_zoo grid centre); the table gives the final training loss and test accuracy.
"""

from __future__ import annotations

import time
from typing import Any

import common
import mlp_zoo

LRS = {"soap": 3e-3, "splus": 0.3}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 400; 10 with --quick)")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    steps = args.steps or (10 if args.quick else 400)
    spikes, intervals = ([1.0, 4.0], [5]) if args.quick else ([1.0, 2.0, 4.0], [10, 50])
    data = mlp_zoo.load_mnist1d(args.seed, 300 if args.quick else 5000)
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    rows = []
    cosine = mlp_zoo.SCHEDULES["cosine"]
    for preset, lr in LRS.items():
        for k in intervals:
            key = f"{preset} k={k}"
            panels[key] = {}
            for spike in spikes:
                schedule = lambda t, T, k=k, spike=spike: cosine(t, T) * (spike if t % k == 0 else 1.0)  # noqa: E731
                r = mlp_zoo.train(preset, lr, data, steps, schedule, args.seed, evals=2 if args.quick else 20, precondition_frequency=k)
                results[f"{key} spike={spike:g}"] = {k2: v for k2, v in r.items() if k2 != "curve"}
                panels[key][f"spike ×{spike:g}"] = (r["curve"]["step"], r["curve"]["train_loss"])
                rows.append([preset, k, spike, r["final"], r["test_acc"]])
                print(f"{key} spike={spike:g}: train loss {r['final']:.4g}, test acc {r['test_acc']:.3f}", flush=True)
    table = common.markdown_table(["preset", "refresh interval k", "spike", "final train loss", "test acc"], rows)
    common.plot_curves(out / "lr_spike.png", panels, ylabel="train loss")
    meta = {"steps": steps, "lrs": LRS, "spikes": spikes, "intervals": intervals, "base": "cosine"}
    common.finish(out, "lr_spike", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
