"""Optimizer trajectories on 2-D test functions: Rosenbrock (4 starts), Himmelblau, the saddle x² − y².

The point (x, y) is one 1×2 parameter matrix (so Shampoo sees a matrix: A = G Gᵀ is 1×1,
B = Gᵀ G is 2×2). Every method runs 500 steps at a constant lr picked from a grid (×√10)
by the mean final loss over the starts; on the saddle, which has no minimum, each method
runs 100 steps from (1, 10⁻³) at its Rosenbrock lr and the table gives f at the end (more
negative = escaped faster; a run that leaves |x|, |y| < 10⁶ shows as "diverged", i.e. escaped). Prodigy is the ``prodigy`` preset (prodigyopt's Prodigy; lr 1 is its convention).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import common

FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "rosenbrock": lambda p: (1 - p[..., 0]) ** 2 + 100 * (p[..., 1] - p[..., 0] ** 2) ** 2,
    "himmelblau": lambda p: (p[..., 0] ** 2 + p[..., 1] - 11) ** 2 + (p[..., 0] + p[..., 1] ** 2 - 7) ** 2,
    "saddle": lambda p: p[..., 0] ** 2 - p[..., 1] ** 2,
}
STARTS = {"rosenbrock": [(-1.5, 2.0), (-1.0, -0.5), (1.5, -0.5), (0.0, 2.5)], "himmelblau": [(0.0, 0.0), (-1.0, -4.0)], "saddle": [(1.0, 1e-3)]}
METHODS: dict[str, dict[str, Any]] = {  # name → fixed hyperparameters (modnorm presets, budgets off)
    "sgd": {},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "adagrad": {},
    "rmsprop": {},
    "adam": {"weight_decay": 0.0},
    "amsgrad": {"weight_decay": 0.0, "amsgrad": True},
    "adamw": {"weight_decay": 0.01},
    "lion": {},
    "shampoo": {"momentum": 0.0, "eps": 1e-12},
    "prodigy": {},
}
PRESET = {"nesterov": "sgd", "adam": "adamw", "amsgrad": "adamw"}


def optimizer(method: str, p: Tensor, lr: float) -> torch.optim.Optimizer:
    import modnorm

    return modnorm.optimizer([("xy", p)], PRESET.get(method, method), lr=lr, budgets=False, **METHODS[method])


def run(method: str, fn: str, start: tuple[float, float], lr: float, steps: int) -> dict[str, Any]:
    p = torch.tensor([list(start)], dtype=torch.float64, requires_grad=True)
    opt = optimizer(method, p, lr)
    path = [list(start)]
    f = FUNCTIONS[fn]
    for _ in range(steps):
        opt.zero_grad()
        f(p[0]).backward()
        if not torch.isfinite(p.grad).all():
            break
        opt.step()
        path.append(p.detach()[0].tolist())
        if not all(math.isfinite(v) and abs(v) < 1e6 for v in path[-1]):
            break
    final = float(f(p.detach()[0]))
    return {"final": final if math.isfinite(final) and abs(final) < 1e12 else float("inf"), "path": path}


def plot(path: Any, panels: dict[str, tuple[str, dict[str, list[list[float]]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    boxes = {"rosenbrock": (-2, 2, -1, 3), "himmelblau": (-5, 5, -5, 5), "saddle": (-1.5, 1.5, -1.5, 1.5)}
    for ax, (title, (fn, trajectories)) in zip(axes.flat, panels.items()):
        x0, x1, y0, y1 = boxes[fn]
        X, Y = torch.meshgrid(torch.linspace(x0, x1, 300), torch.linspace(y0, y1, 300), indexing="xy")
        Z = FUNCTIONS[fn](torch.stack([X, Y], -1).double())
        levels = torch.logspace(-1, 3.5, 25).tolist() if fn != "saddle" else torch.linspace(-2, 2, 21).tolist()
        ax.contour(X, Y, Z if fn == "saddle" else Z + 1e-9, levels=levels, cmap="Greys", linewidths=0.6)
        for label, pts in trajectories.items():
            xy = torch.tensor(pts)
            ax.plot(xy[:, 0].clamp(x0, x1), xy[:, 1].clamp(y0, y1), "-", linewidth=1.1, label=label)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    steps, saddle_steps = (25, 10) if args.quick else (500, 100)
    grid = [10.0**k for k in ((-1.5,) if args.quick else (-4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0))]
    results: dict[str, Any] = {}
    panels: dict[str, tuple[str, dict[str, list[list[float]]]]] = {
        "Rosenbrock from (-1.5, 2)": ("rosenbrock", {}), "Himmelblau from (0, 0)": ("himmelblau", {}), "saddle x² - y² from (1, 1e-3)": ("saddle", {})}
    rows = []
    for method in METHODS:
        lrs = [1.0] if method == "prodigy" else grid
        res: dict[str, Any] = {}
        for fn in ("rosenbrock", "himmelblau"):
            def mean_final(lr: float) -> dict[str, Any]:
                runs = [run(method, fn, s, lr, steps) for s in STARTS[fn]]
                return {"final": sum(r["final"] for r in runs) / len(runs), "runs": runs}

            best_lr, best, scores = common.tune(mean_final, lrs)
            res[fn] = {"best_lr": best_lr, "mean_final": best["final"], "finals": [r["final"] for r in best["runs"]], "grid": scores}
            panel = next(k for k, v in panels.items() if v[0] == fn)
            panels[panel][1][method] = best["runs"][0]["path"]
        saddle = run(method, "saddle", STARTS["saddle"][0], res["rosenbrock"]["best_lr"], saddle_steps)
        res["saddle"] = {"lr": res["rosenbrock"]["best_lr"], "final": saddle["final"]}
        panels["saddle x² - y² from (1, 1e-3)"][1][method] = saddle["path"]
        results[method] = res
        rows.append([method, res["rosenbrock"]["best_lr"], *res["rosenbrock"]["finals"], res["himmelblau"]["best_lr"],
                     res["himmelblau"]["mean_final"], saddle["final"]])
        print(f"{method:<10} rosenbrock {res['rosenbrock']['mean_final']:.3g} himmelblau {res['himmelblau']['mean_final']:.3g} saddle {saddle['final']:.3g}", flush=True)
    starts = [f"Rosenbrock f from {s}" for s in STARTS["rosenbrock"]]
    table = common.markdown_table(["method", "lr (Rosenbrock)", *starts, "lr (Himmelblau)", "Himmelblau mean f", f"saddle f after {saddle_steps} (diverged: left the ±1e6 box)"], rows)
    plot(out / "zoo_2d.png", panels)
    meta = {"steps": steps, "saddle_steps": saddle_steps, "lr_grid": grid, "starts": STARTS, "methods": METHODS}
    common.finish(out, "zoo_2d", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
