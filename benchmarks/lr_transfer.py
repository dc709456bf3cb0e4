"""Learning-rate transfer across width: MLPs on digits, widths 64 … 1024.

For each width w the network is 64 → w (→ w …) → 10 (``--depth`` hidden layers, ReLU,
PyTorch's default init) trained on scikit-learn's digits with minibatches of 128 and a
cosine schedule; every optimizer runs over a ×2 lr grid. The score is the final
full-training-set loss; the optimal lr per width and how far it moves across widths
(in grid steps) is the result. modnorm presets use the modular budgets of the model (``budgets=True``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

import common
from modnorm.demo import load_digits_split

METHODS: dict[str, tuple[dict[str, Any], float]] = {  # name → (fixed hyperparameters, lr grid centre)
    "torch:adamw": ({"weight_decay": 0.0}, 1.6e-2),
    "muon": ({"weight_decay": 0.0, "ns_dtype": "float32", "budgets": True}, 0.08),
    "muadam": ({"weight_decay": 0.0, "budgets": True}, 0.02),
}


def run(method: str, lr: float, width: int, depth: int, data: tuple[torch.Tensor, ...], steps: int, seed: int) -> dict[str, Any]:
    X, y = data[0], data[1]
    torch.manual_seed(seed)
    model = common.mlp([X.shape[1], *([width] * depth), 10])
    fixed, _ = METHODS[method]
    opt = common.make_optimizer(method, model, lr=lr, **fixed)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randint(0, len(y), (128,), generator=gen) for _ in range(steps)]
    loss_fn = nn.CrossEntropyLoss()
    _, ys, _ = common.train_steps(model, opt, lambda s: loss_fn(model(X[batches[s]]), y[batches[s]]), steps,
                                  schedule=lambda s: common.cosine_factor(s, steps), every=steps)
    with torch.no_grad():
        final = float(loss_fn(model(X), y))
    return {"final": final if math.isfinite(final) and math.isfinite(ys[-1]) else float("inf")}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--depth", type=int, default=1, help="hidden layers (default 1: w×64 and 10×w matrices; 2 adds a w×w one, slow at w = 1024)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 30: far from converged, so the lr matters; 10 with --quick)")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    widths, steps, below, above = ([16, 32], 10, 1, 1) if args.quick else ([64, 128, 256, 512, 1024], 30, 5, 5)
    steps = args.steps or steps
    data = load_digits_split(args.seed)
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    rows = []
    for method, (_, centre) in METHODS.items():
        lrs = common.lr_grid(centre, below, above)
        per_width: dict[int, Any] = {}
        panels[common.PRETTY[method]] = {}
        for width in widths:
            best_lr, _, scores = common.tune(lambda lr: run(method, lr, width, args.depth, data, steps, args.seed), lrs)
            per_width[width] = {"best_lr": best_lr, "best_loss": scores[best_lr], "grid": scores, "at_grid_edge": best_lr in (lrs[0], lrs[-1])}
            panels[common.PRETTY[method]][f"w={width}"] = (lrs, [min(v, 10.0) for v in scores.values()])
            print(f"{method:<12} width {width:<5} best lr {best_lr:.3g} loss {scores[best_lr]:.4f}", flush=True)
        steps_moved = round(math.log2(max(r["best_lr"] for r in per_width.values()) / min(r["best_lr"] for r in per_width.values())))
        results[method] = {"per_width": per_width, "optimal_lr_shift_grid_steps": steps_moved, "lr_grid": lrs}
        rows.append([common.PRETTY[method]] + [f"{per_width[w]['best_lr']:.3g}" + ("*" if per_width[w]["at_grid_edge"] else "") for w in widths] + [steps_moved])
    table = common.markdown_table(["optimizer"] + [f"w={w}" for w in widths] + ["shift (×2 steps)"], rows)
    table += "\n\nBest lr per width (* = at the grid edge); shift = log₂(max/min) of the optimal lr over widths."
    common.plot_curves(out / "lr_transfer.png", panels, xlabel="learning rate", ylabel="final train loss (capped at 10)", logx=True)
    meta = {"widths": widths, "depth": args.depth, "steps": steps, "batch": 128, "lr_grid": "centre × 2^k, k = -%d..%d" % (below, above)}
    common.finish(out, "lr_transfer", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
