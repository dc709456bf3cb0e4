"""Long runs at a constant setting: does the loss ever rise above its start, do the weights run away?

A tanh MLP 4 → 16 → 16 → 1 (biases, float64) fits 64 random targets full batch (the loss
cannot reach 0, so f* = 0 lies below the reachable loss), at a constant lr for many
steps, every matrix rule of one degree (MuAdam-SANIA's embedding/head/vectors use
Adam-SANIA, ε = 0). Reported per setting: the worst loss over the run relative to the
starting loss (every step counts; ∞ when the run diverged), the final loss, and the
largest |weight|.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

import common

SANIA = {"eps": 0.0, "ns_method": "svd", "adamw_eps": 0.0, "routed_rule": "adam_sania"}
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {  # label → (preset, hyperparameters)
    "muadam_sania, constant lr 1e-4": ("muadam_sania", {"lr": 1e-4, **SANIA}),
    "muadam_sania+polyak, no growth cap, lr 0.3": ("muadam_sania", {"step_size": "polyak", "polyak_growth": None, "lr": 0.3, **SANIA}),
    "muadam_sania+polyak, lr 0.3": ("muadam_sania", {"step_size": "polyak", "lr": 0.3, **SANIA}),
    "muadam_sania+polyak, no growth cap, lr 0.1": ("muadam_sania", {"step_size": "polyak", "polyak_growth": None, "lr": 0.1, **SANIA}),
    "muadam_sania+polyak, lr 0.1": ("muadam_sania", {"step_size": "polyak", "lr": 0.1, **SANIA}),
    "adam_sania+polyak, lr 0.1": ("adam_sania", {"step_size": "polyak", "lr": 0.1, "eps": 0.0}),
    "muadam (sharp), constant lr 1e-2": ("muadam", {"mode": "sharp", "lr": 1e-2, "eps": 0.0, "adamw_eps": 0.0, "ns_method": "svd"}),
    "muadam, constant lr 3e-3": ("muadam", {"lr": 3e-3, "eps": 0.0, "adamw_eps": 0.0, "ns_method": "svd"}),
}


def run(preset: str, hp: dict[str, Any], steps: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = common.mlp([4, 16, 16, 1], activation=nn.Tanh).double()
    g = torch.Generator().manual_seed(seed + 100)
    X, Y = torch.randn(64, 4, generator=g, dtype=torch.float64), torch.randn(64, 1, generator=g, dtype=torch.float64)
    opt = common.make_optimizer(preset, list(model.named_parameters()), **hp)
    log: list[float] = []
    every = max(1, steps // 200)
    try:
        xs, ys, _ = common.train_steps(model, opt, lambda s: 0.5 * ((model(X) - Y) ** 2).mean(), steps, every=every,
                                       on_step=lambda s, v: log.append(v))
    except FloatingPointError:  # the optimizer refused a non-finite gradient: diverged
        xs = list(range(0, len(log), every)) + [len(log)]
        ys = log[::every] + [float("nan")]
    wmax = max(float(p.detach().abs().max()) for p in model.parameters())
    worst = max(log) if all(math.isfinite(v) for v in log) and math.isfinite(ys[-1]) else float("inf")
    return {"worst_over_start": worst / log[0], "final": ys[-1], "max_abs_weight": wmax, "curve": {"step": xs, "loss": ys}}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 10000; 50 with --quick)")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    steps = args.steps or (50 if args.quick else 10_000)
    results, rows, panel = {}, [], {}
    for label, (preset, hp) in SETTINGS.items():
        r = run(preset, hp, steps, args.seed)
        results[label] = r
        rows.append([label, r["worst_over_start"], r["final"], r["max_abs_weight"]])
        panel[label] = (r["curve"]["step"], r["curve"]["loss"])
        print(f"{label:<48} worst/start {r['worst_over_start']:.3g}  final {r['final']:.3g}  max|W| {r['max_abs_weight']:.3g}", flush=True)
    table = common.markdown_table(["setting", "max loss / start loss", f"loss @ {steps}", "max |W|"], rows)
    common.plot_curves(out / "constant_lr_stability.png", {"train loss": panel}, ylabel="loss")
    common.finish(out, "constant_lr_stability", {"config": {"steps": steps}, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
