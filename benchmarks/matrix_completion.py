"""Low-rank matrix completion: RMSE and the rank of the learned factors.

Ratings R = U Vᵀ + noise (n_users × n_items, true rank k) are observed on a random
subset of entries, split into train and validation. The model X = P Qᵀ (factors of
rank r > k, small random init) is fit full-batch to the train entries by mean squared
error. Each method's lr is picked from a ×2 grid by the final validation RMSE. Logged
over training: train/validation RMSE and, for each factor F, the effective rank
exp(H(σ/Σσ)) (Roy & Vetterli 2007) and the stable rank ‖F‖²_F / ‖F‖²₂.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

import common

METHODS: dict[str, tuple[dict[str, Any], float]] = {  # name → (fixed hyperparameters, lr grid centre)
    "torch:adamw": ({"weight_decay": 0.0}, 2.5e-3),
    "muon": ({"weight_decay": 0.0, "ns_dtype": "float32"}, 0.08),
    "muadam": ({"weight_decay": 0.0}, 2.5e-3),
    "muadam_sania": ({"weight_decay": 0.0}, 2e-4),
    "muadam:sharp": ({"weight_decay": 0.0, "mode": "sharp"}, 2.5e-3),
    "muadam_sania+polyak": ({"weight_decay": 0.0}, 0.1),  # Polyak: lr = fraction of the gap f − 0
    "adam_sania+polyak": ({"weight_decay": 0.0}, 0.1),
}


def effective_rank(F: Tensor) -> float:
    """exp of the entropy of the normalized singular values."""
    s = torch.linalg.svdvals(F.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(F: Tensor) -> float:
    """‖F‖²_F / ‖F‖²₂."""
    s = torch.linalg.svdvals(F.double())
    return float((s**2).sum() / s[0] ** 2)


def make_data(n_users: int, n_items: int, k: int, observed: float, noise: float, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, k, generator=gen)
    V = torch.randn(n_items, k, generator=gen)
    R = U @ V.T / math.sqrt(k) + noise * torch.randn(n_users, n_items, generator=gen)
    mask = torch.rand(n_users, n_items, generator=gen) < observed
    idx = mask.nonzero()
    perm = torch.randperm(len(idx), generator=gen)
    n_val = len(idx) // 5
    return {"R": R, "train": idx[perm[n_val:]], "val": idx[perm[:n_val]]}


class Factorization(nn.Module):
    def __init__(self, n_users: int, n_items: int, rank: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.P = nn.Parameter(0.1 * torch.randn(n_users, rank, generator=gen))
        self.Q = nn.Parameter(0.1 * torch.randn(n_items, rank, generator=gen))

    def forward(self, idx: Tensor) -> Tensor:
        return (self.P[idx[:, 0]] * self.Q[idx[:, 1]]).sum(-1)


def rmse(model: Factorization, data: dict[str, Tensor], split: str) -> float:
    idx = data[split]
    with torch.no_grad():
        return float(((model(idx) - data["R"][idx[:, 0], idx[:, 1]]) ** 2).mean().sqrt())


def run(method: str, lr: float, data: dict[str, Tensor], rank: int, steps: int, seed: int, log_every: int) -> dict[str, Any]:
    n_users, n_items = data["R"].shape
    model = Factorization(n_users, n_items, rank, seed)
    fixed, _ = METHODS[method]
    opt = common.make_optimizer(common.preset_name(method), list(model.named_parameters()), lr=lr, **fixed)  # bare matrices: hidden, budget 1
    idx, target = data["train"], data["R"][data["train"][:, 0], data["train"][:, 1]]
    log: dict[str, list[float]] = {k: [] for k in ("step", "train_rmse", "val_rmse", "erank_P", "erank_Q", "srank_P", "srank_Q")}

    def record(step: int, value: float) -> None:
        if step % log_every and step != steps - 1:
            return
        log["step"].append(step)
        log["train_rmse"].append(rmse(model, data, "train"))
        log["val_rmse"].append(rmse(model, data, "val"))
        for name, F in (("P", model.P.detach()), ("Q", model.Q.detach())):
            finite = bool(torch.isfinite(F).all())
            log[f"erank_{name}"].append(effective_rank(F) if finite else float("nan"))
            log[f"srank_{name}"].append(stable_rank(F) if finite else float("nan"))

    common.train_steps(model, opt, lambda s: ((model(idx) - target) ** 2).mean(), steps, schedule=lambda s: common.cosine_factor(s, steps, final=0.1), on_step=record)
    final_val = rmse(model, data, "val")
    return {"final": final_val if math.isfinite(final_val) else float("inf"), "log": log}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="full-batch steps (default 500; 20 with --quick)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"matrix_completion: unknown --methods {unknown}; choose from {list(METHODS)}")
    out = common.setup(args)
    started = time.perf_counter()
    if args.quick:
        shape, k, rank, steps, below, above = (60, 40), 3, 8, 20, 0, 0
    else:
        shape, k, rank, steps, below, above = (300, 200), 5, 32, 500, 3, 3
    steps = args.steps or steps
    data = make_data(*shape, k=k, observed=0.25, noise=0.1, seed=args.seed)
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {"validation RMSE": {}, "train RMSE": {}, "effective rank of P": {}, "stable rank of P": {}}
    rows = []
    for method in methods:
        centre = METHODS[method][1]
        lrs = common.lr_grid(centre, below, above)
        best_lr, best, scores = common.tune(lambda lr: run(method, lr, data, rank, steps, args.seed, max(1, steps // 50)), lrs)
        log = best["log"]
        results[method] = {"best_lr": best_lr, "grid": scores, "final_val_rmse": best["final"], **{f"final_{k}": v[-1] for k, v in log.items() if k != "step"}, "log": log}
        label = common.PRETTY[method]
        for title, key in (("validation RMSE", "val_rmse"), ("train RMSE", "train_rmse"), ("effective rank of P", "erank_P"), ("stable rank of P", "srank_P")):
            panels[title][label] = (log["step"], log[key])
        rows.append([label, best_lr, log["train_rmse"][-1], best["final"], min(log["val_rmse"]), log["erank_P"][-1], log["erank_Q"][-1], log["srank_P"][-1], log["srank_Q"][-1]])
        print(f"{method:<13} lr={best_lr:.3g} val RMSE {best['final']:.4f}", flush=True)
    headers = ["method", "lr", "train RMSE", "val RMSE", "best val RMSE", "erank P", "erank Q", "srank P", "srank Q"]
    table = common.markdown_table(headers, rows)
    common.plot_curves(out / "matrix_completion.png", panels, ylabel="")
    meta = {"shape": list(shape), "true_rank": k, "model_rank": rank, "observed": 0.25, "noise": 0.1, "steps": steps,
            "n_train": len(data["train"]), "n_val": len(data["val"]), "noise_floor_rmse": 0.1}
    common.finish(out, "matrix_completion", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
