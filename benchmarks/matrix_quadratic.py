"""Ill-conditioned matrix quadratic L(W) = ½ Tr(Wᵀ A W B).

A and B are SPD with log-spaced eigenvalues in [κ^{-1/2}, 1] each, so the Hessian
A ⊗ B has condition number κ. Their eigenbases are the identity ("diagonal"), a random
orthogonal matrix ("orthogonal") or the normalized Hadamard matrix ("hadamard").
Each method runs from the same W₀ ~ N(0, 1) with a cosine lr schedule to 0 and its lr
picked from a grid (×4 steps) by the final loss; the table gives L(W_T)/L(W₀).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor, nn

import common

METHODS: dict[str, tuple[dict[str, Any], float]] = {  # name → (fixed hyperparameters, lr grid centre)
    "torch:sgd": ({"momentum": 0.9}, 0.5),
    "torch:adamw": ({"weight_decay": 0.0}, 0.05),
    "muon": ({"weight_decay": 0.0, "ns_dtype": "float32"}, 0.1),
    "muadam": ({"weight_decay": 0.0}, 0.05),
    "muadam_sania": ({"weight_decay": 0.0}, 0.005),
    "muadam:sharp": ({"weight_decay": 0.0, "mode": "sharp"}, 0.05),
    "adam_sania+polyak": ({"weight_decay": 0.0}, 0.25),  # Polyak: lr = fraction of the gap f − f* (f* = 0 here)
    "muadam_sania+polyak": ({"weight_decay": 0.0}, 0.25),
    "muadam+polyak": ({"weight_decay": 0.0}, 0.25),
    "adam_sania+polyak:plain": ({"weight_decay": 0.0, "polyak_growth": None}, 0.25),  # no growth cap
    "muadam_sania+polyak:plain": ({"weight_decay": 0.0, "polyak_growth": None}, 0.25),
}


def hadamard(n: int) -> Tensor:
    """Sylvester's Hadamard matrix divided by √n (orthogonal); n must be a power of 2."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"hadamard: n must be a power of 2, got {n}")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(n)


def rotation(kind: str, n: int, gen: torch.Generator) -> Tensor:
    if kind == "diagonal":
        return torch.eye(n, dtype=torch.float64)
    if kind == "orthogonal":
        Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(R))
    if kind == "hadamard":
        return hadamard(n)
    raise ValueError(f"unknown rotation {kind!r}; choose diagonal, orthogonal or hadamard")


def problem(n: int, kappa: float, kind: str, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(A, B, W₀) in float32; each of A, B has condition number √κ."""
    gen = torch.Generator().manual_seed(seed)
    eig = torch.logspace(0, -0.5 * math.log10(kappa), n, dtype=torch.float64)
    QA, QB = rotation(kind, n, gen), rotation(kind, n, gen)
    perm = torch.randperm(n, generator=gen)
    A = QA @ torch.diag(eig) @ QA.T
    B = QB @ torch.diag(eig[perm]) @ QB.T
    W0 = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return A.float(), B.float(), W0.float()


class Quadratic(nn.Module):
    def __init__(self, A: Tensor, B: Tensor, W0: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(W0.clone())
        self.register_buffer("A", A)
        self.register_buffer("B", B)

    def forward(self) -> Tensor:
        return 0.5 * (self.weight * (self.A @ self.weight @ self.B)).sum()


def run(method: str, lr: float, A: Tensor, B: Tensor, W0: Tensor, steps: int) -> dict[str, Any]:
    model = Quadratic(A, B, W0)
    fixed, _ = METHODS[method]
    opt = common.make_optimizer(common.preset_name(method), list(model.named_parameters()), lr=lr, **fixed)  # bare matrices: hidden, budget 1
    initial = float(model().detach())
    xs, ys, _ = common.train_steps(model, opt, lambda s: model(), steps, schedule=lambda s: common.cosine_factor(s, steps), every=max(1, steps // 50))
    with torch.no_grad():
        last = float(model())
    final = last / initial if math.isfinite(last) else float("inf")
    return {"final": final, "curve": {"step": xs, "relative_loss": [y / initial for y in ys]}}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300; 20 with --quick)")
    p.add_argument("--n", type=int, default=None, help="matrix size n (default 128; 16 with --quick)")
    p.add_argument("--kinds", default="diagonal,orthogonal,hadamard", help="comma-separated eigenbases (default: all three)")
    p.add_argument("--kappas", default=None, help="comma-separated condition numbers (default 1e2,1e4,1e6; 1e4 with --quick)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    n, steps, kappas, below, above = (16, 20, [1e4], 1, 1) if args.quick else (128, 300, [1e2, 1e4, 1e6], 3, 3)
    steps, n = args.steps or steps, args.n or n
    kappas = [float(k) for k in args.kappas.split(",")] if args.kappas else kappas
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"matrix_quadratic: unknown --methods {unknown}; choose from {list(METHODS)}")
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    rows = []
    for kind in args.kinds.split(","):
        for kappa in kappas:
            A, B, W0 = problem(n, kappa, kind, args.seed)
            key = f"{kind} κ=1e{round(math.log10(kappa))}"
            results[key] = {}
            panels[key] = {}
            for method in methods:
                centre = METHODS[method][1]
                lrs = common.lr_grid(centre, below, above, factor=4.0)
                best_lr, best, scores = common.tune(lambda lr: run(method, lr, A, B, W0, steps), lrs)
                results[key][method] = {"best_lr": best_lr, "final_relative_loss": best["final"], "grid": scores, "curve": best["curve"]}
                panels[key][common.PRETTY[method]] = (best["curve"]["step"], best["curve"]["relative_loss"])
                edge = " (grid edge)" if best_lr in (lrs[0], lrs[-1]) else ""
                print(f"{key:<22} {method:<14} lr={best_lr:.3g}{edge} L_T/L_0={best['final']:.3g}", flush=True)
            rows.append([kind, f"1e{round(math.log10(kappa))}"] + [results[key][m]["final_relative_loss"] for m in methods])
    headers = ["eigenbasis", "κ"] + [common.PRETTY[m] for m in methods]
    table = common.markdown_table(headers, rows)
    common.plot_curves(out / "matrix_quadratic.png", panels, ylabel="L(W_t) / L(W_0)")
    meta = {"n": n, "steps": steps, "kappas": kappas, "lr_grid": f"centre × 4^k, k = -{below}..{above}", "schedule": "cosine to 0"}
    common.finish(out, "matrix_quadratic", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
