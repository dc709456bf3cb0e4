"""Feature-scaling invariance on scikit-learn's breast_cancer.

Scaling the inputs, x' = diag(a) x with a = exp(U(0, b)), is the reparametrization
W = W' · diag(a) of the first weight matrix (a scale reparametrization W = A ⊙ W'
with A_ij = a_j). Both networks start as the same function (W'₀ = W₀ · diag(a)⁻¹) and
train full-batch with identical hyperparameters and ε = 0, in float64. Theorem 2 of
"Preconditioned Norms" predicts that a D-norm method is invariant when D ↦ A ⊙ D:
true for D = V^½ (Adam-SANIA, MuAdam-SANIA), false for D = V^¼ (Adam, MuAdam) and for
no preconditioner (Muon). Reported: the max gap between the two loss curves and the
relative mismatch of the first layer mapped back, ‖W'_t · diag(a) − W_t‖ / ‖W_t‖, after
30 steps and at the end, next to its rounding baseline: the same mismatch for features
scaled by 1 + 10⁻¹⁵·N(0, 1), i.e. how fast this trajectory amplifies rounding errors.
A method is invariant (up to rounding) when its mismatch tracks that baseline.
Loss scaling: the same network trained on c·loss (``--loss-scale``, default 0.01); the
table gives the max relative mismatch of all weights against the unscaled run.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

import common

EARLY = 30  # steps: the horizon of the numerical check in the design reference

METHODS: dict[str, dict[str, Any]] = {  # full-batch lrs; ε = 0 and no weight decay everywhere
    "adamw": {"lr": 1e-3, "eps": 0.0, "weight_decay": 0.0},
    "adam_sania": {"lr": 1e-5, "eps": 0.0, "weight_decay": 0.0},
    "muon": {"lr": 0.01, "weight_decay": 0.0, "ns_dtype": "float64"},
    "muadam": {"lr": 1e-3, "eps": 0.0, "weight_decay": 0.0},
    "muadam_sania": {"lr": 1e-4, "eps": 0.0, "weight_decay": 0.0},
    "muadam:sharp": {"lr": 1e-3, "eps": 0.0, "weight_decay": 0.0, "mode": "sharp", "adamw_eps": 0.0},
    # Polyak: lr = fraction of the gap f − 0; every rule of the same degree (routed: Adam-SANIA)
    "adam_sania+polyak": {"lr": 0.1, "eps": 0.0, "weight_decay": 0.0},
    "muadam_sania+polyak": {"lr": 0.1, "eps": 0.0, "weight_decay": 0.0, "adamw_eps": 0.0, "routed_rule": "adam_sania"},
}


def load_data(seed: int) -> tuple[Tensor, Tensor]:
    """Standardized breast_cancer features (569 × 30, float64) and labels."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X_t = torch.tensor(X, dtype=torch.float64)
    X_t = (X_t - X_t.mean(0)) / X_t.std(0)
    return X_t, torch.tensor(y, dtype=torch.long)


def train(method: str, X: Tensor, y: Tensor, scale: Tensor | None, steps: int, seed: int, width: int,
          loss_scale: float = 1.0) -> tuple[list[float], list[Tensor], list[Tensor]]:
    """Loss curve (of the unscaled loss), the first weight matrix after every step mapped back to
    the unscaled problem, and all final weights."""
    torch.manual_seed(seed)
    model = common.mlp([X.shape[1], width, width, 2], activation=nn.Tanh).double()  # no exact-zero gradients (see docs)
    if scale is not None:
        with torch.no_grad():
            model[0].weight.div_(scale)  # same function at step 0
        X = X * scale
    opt = common.make_optimizer(common.preset_name(method), model, **METHODS[method])
    loss_fn = nn.CrossEntropyLoss()
    back = scale if scale is not None else torch.ones(X.shape[1], dtype=X.dtype)
    weights: list[Tensor] = []

    def loss(step: int) -> Tensor:
        weights.append(model[0].weight.detach() * back)
        return loss_fn(model(X), y) * loss_scale

    _, ys, _ = common.train_steps(model, opt, loss, steps)
    weights.append(model[0].weight.detach() * back)
    return [v / loss_scale for v in ys], weights[1:], [p.detach().clone() for p in model.parameters()]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--b", type=float, default=4.0, help="feature scales a = exp(U(0, b)) (default 4: up to ×55)")
    p.add_argument("--steps", type=int, default=None, help="full-batch steps (default 200; 15 with --quick)")
    p.add_argument("--loss-scale", type=float, default=0.01, help="factor c of the loss-scaled run (default 0.01)")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    steps = args.steps or (15 if args.quick else 200)
    width = 16 if args.quick else 64
    X, y = load_data(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    a = torch.exp(torch.rand(X.shape[1], generator=gen, dtype=torch.float64) * args.b)
    jitter = 1.0 + 1e-15 * torch.randn(X.shape[1], generator=gen, dtype=torch.float64)  # rounding-level "scaling"
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    rows = []
    for method in METHODS:
        base, W, final = train(method, X, y, None, steps, args.seed, width)
        scaled, W_scaled, _ = train(method, X, y, a, steps, args.seed, width)
        _, W_jitter, _ = train(method, X, y, jitter, steps, args.seed, width)
        loss_scaled, _, final_c = train(method, X, y, None, steps, args.seed, width, loss_scale=args.loss_scale)
        loss_mismatch = float(torch.sqrt(sum(((u - v) ** 2).sum() for u, v in zip(final_c, final))) / torch.sqrt(sum((v**2).sum() for v in final)))
        if len(loss_scaled) != len(base):
            loss_mismatch = float("inf")
        drift = [float((u - v).norm() / v.norm()) for u, v in zip(W_scaled, W)]
        baseline = [float((u - v).norm() / v.norm()) for u, v in zip(W_jitter, W)]
        n = min(len(base), len(scaled))
        gap = max((abs(u - v) for u, v in zip(base[:n], scaled[:n])), default=float("nan"))
        if len(base) != len(scaled):
            gap = float("inf")  # one of the two runs diverged
        early = min(len(drift), EARLY) - 1
        results[method] = {"hyperparameters": METHODS[method], "max_curve_gap": gap, "first_layer_mismatch": drift[-1],
                           "first_layer_mismatch_early": drift[early], "rounding_baseline": baseline[-1], "rounding_baseline_early": baseline[early],
                           "mismatch_curve": drift, "rounding_baseline_curve": baseline,
                           "final_loss_original": base[-1], "loss_scale_mismatch": loss_mismatch, "final_loss_loss_scaled": loss_scaled[-1], "final_loss_scaled": scaled[-1], "curve_original": base, "curve_scaled": scaled}
        panels[method] = {"original": (list(range(len(base))), base), "scaled": (list(range(len(scaled))), scaled)}
        mismatch_panel = panels.setdefault("first-layer mismatch (dotted: rounding baseline)", {})
        mismatch_panel[method] = (list(range(1, len(drift) + 1)), [max(v, 1e-17) for v in drift])
        mismatch_panel[f"{method} (baseline)"] = (list(range(1, len(baseline) + 1)), [max(v, 1e-17) for v in baseline])
        rows.append([method, METHODS[method]["lr"], base[-1], scaled[-1], gap] + ([drift[early], baseline[early]] if steps > EARLY else []) + [drift[-1], baseline[-1], loss_mismatch])
        print(f"{method:<13} max gap {gap:.3g}  first-layer mismatch {drift[-1]:.3g} (rounding baseline {baseline[-1]:.3g})", flush=True)
    table = common.markdown_table(["method (ε = 0)", "lr", "final loss, original", "final loss, scaled", "max curve gap"]
                                 + ([f"mismatch @ {EARLY}", f"baseline @ {EARLY}"] if steps > EARLY else []) + [f"mismatch @ {steps}", f"baseline @ {steps}", f"loss×{args.loss_scale:g}: mismatch @ {steps}"], rows)
    common.plot_curves(out / "scale_invariance.png", panels, ylabel="train loss", styles={"original": "-", "scaled": "--", **{f"{m} (baseline)": ":" for m in METHODS}})
    meta = {"b": args.b, "scales_min": float(a.min()), "scales_max": float(a.max()), "steps": steps, "width": width, "dtype": "float64"}
    common.finish(out, "scale_invariance", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
