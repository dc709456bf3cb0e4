"""Every preset on one problem: a 3-layer, 256-wide MLP on mnist1d (40 inputs, 10 classes).

The data set is generated locally (``mnist1d.data.make_dataset``: 4000 training and 1000
test sequences, standardized); ``--cifar DIR`` uses CIFAR-10's python batches instead,
reduced to 256 features by a random orthogonal projection. Each method trains with batch 128 from the same
initialization for 400 steps (about 13 epochs); its lr is picked from centre × {1/3, 1, 3} by the final training loss
under a cosine schedule, then the same lr runs the step (×0.1 at 50% and 75%) and WSD
(5% warmup, last 20% linear decay) schedules. The table gives test accuracy and test loss
at the end. Every modnorm preset runs with ``budgets=False`` (each parameter its preset's
own lr); Prodigy (the ``prodigy`` preset, = prodigyopt's Prodigy) runs at its conventional lr 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import common
from modnorm.optim.schedules import wsd_factor

METHODS: dict[str, tuple[str, dict[str, Any], float]] = {  # name → (preset, fixed hyperparameters, lr centre)
    "sgd": ("sgd", {"momentum": 0.9}, 0.1),
    "adam": ("adamw", {"weight_decay": 0.0}, 1e-3),
    "adamw": ("adamw", {"weight_decay": 0.05}, 1e-3),
    "amsgrad": ("adamw", {"weight_decay": 0.0, "amsgrad": True}, 1e-3),
    "rmsprop": ("rmsprop", {}, 1e-3),
    "adagrad": ("adagrad", {}, 1e-2),
    "lion": ("lion", {}, 1e-4),
    "lamb": ("lamb", {}, 1e-2),
    "lars": ("lars", {"trust_coefficient": 0.02}, 0.3),
    "adamw_schedulefree": ("adamw_schedulefree", {}, 3e-3),
    "muon": ("muon", {"weight_decay": 0.0, "adamw_lr_ratio": 0.05, "ns_dtype": "float32"}, 0.02),
    "muadam": ("muadam", {}, 1e-3),
    "shampoo": ("shampoo", {}, 1e-3),
    "soap": ("soap", {"weight_decay": 0.0}, 3e-3),
    "splus": ("splus", {}, 0.3),
    "kfac": ("kfac", {"damping": 0.1}, 0.03),
    "ekfac": ("ekfac", {"damping": 0.1}, 0.03),
    "kfac_spectral": ("kfac_spectral", {"damping": 0.1}, 0.03),
    "prodigy": ("prodigy", {}, 1.0),
}
QUICK = ["sgd", "adam", "lion", "kfac", "ekfac", "adamw_schedulefree", "prodigy"]
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "cosine": lambda t, T: common.cosine_factor(t, T),
    "step": lambda t, T: 0.1 ** ((t >= T // 2) + (t >= 3 * T // 4)),
    "wsd": lambda t, T: wsd_factor(t, T, max(1, T // 20), T // 5),
}


def load_mnist1d(seed: int, samples: int = 5000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, y, x_test, y_test) of mnist1d generated locally (never downloaded), standardized."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = samples, seed
    d = make_dataset(args)
    x, xt = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["x_test"], dtype=torch.float32)
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, torch.tensor(d["y"]), (xt - mean) / std, torch.tensor(d["y_test"])


def load_cifar10(folder: str, dim: int = 256, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-10 from its python batches in ``folder`` (data_batch_1..5, test_batch; never downloaded),
    standardized per pixel and reduced to ``dim`` features by a random orthogonal projection."""
    import pickle
    from pathlib import Path

    def read(name: str) -> tuple[Tensor, Tensor]:
        with open(Path(folder) / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return torch.tensor(d[b"data"], dtype=torch.float32) / 255.0, torch.tensor(d[b"labels"])

    parts = [read(f"data_batch_{i}") for i in range(1, 6) if (Path(folder) / f"data_batch_{i}").exists()]
    if not parts:
        raise SystemExit(f"no CIFAR-10 python batches (data_batch_1 …) in {folder}")
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    xt, yt = read("test_batch")
    mean, std = x.mean(0), x.std(0) + 1e-6
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(x.shape[1], dim, generator=gen))  # orthonormal columns
    return ((x - mean) / std) @ Q, y, ((xt - mean) / std) @ Q, yt


def make_mlp(inputs: int, width: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))


def build(method: str, model: nn.Module, lr: float, **extra: Any) -> torch.optim.Optimizer:
    preset, fixed, _ = METHODS[method]
    import modnorm

    return modnorm.optimizer(model, preset, lr=lr, budgets=False, **{**fixed, **extra})


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(method: str, lr: float, data: tuple[Tensor, ...], steps: int, schedule: str | Callable[[int, int], float], seed: int, width: int = 256,
          batch: int = 128, evals: int = 20, **extra: Any) -> dict[str, Any]:
    """Train one method; returns the final train/test loss, test accuracy and curves."""
    x, y, xt, yt = data
    model = make_mlp(x.shape[1], width, int(y.max()) + 1, seed)
    opt = build(method, model, lr, **extra)
    gen = torch.Generator().manual_seed(seed)
    base = [g["lr"] for g in opt.param_groups]
    factor = SCHEDULES[schedule] if isinstance(schedule, str) else schedule
    curve: dict[str, list[float]] = {"step": [], "train_loss": [], "test_loss": [], "test_acc": []}
    switch = hasattr(opt, "eval") and METHODS[method][0] == "adamw_schedulefree"
    loss = torch.tensor(float("nan"))
    for t in range(steps):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * factor(t, steps)
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            break
        loss.backward()
        try:
            opt.step()
        except FloatingPointError:
            loss = torch.tensor(float("nan"))
            break
        if (t + 1) % max(1, steps // evals) == 0 or t + 1 == steps:
            if switch:
                opt.eval()
            tl, ta = evaluate(model, xt, yt)
            trl, _ = evaluate(model, x, y)
            if switch:
                opt.train()
            for k, v in zip(curve, (t + 1, trl, tl, ta)):
                curve[k].append(v)
    if switch:
        opt.eval()
    ok = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    train_loss, _ = evaluate(model, x, y) if ok else (float("inf"), 0.0)
    test_loss, test_acc = evaluate(model, xt, yt) if ok else (float("inf"), 0.0)
    if not math.isfinite(train_loss):
        train_loss, test_loss, test_acc = float("inf"), float("inf"), 0.0
    return {"final": train_loss, "test_loss": test_loss, "test_acc": test_acc, "curve": curve}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 400; 10 with --quick)")
    p.add_argument("--cifar", default=None, help="folder of CIFAR-10's python batches: train on it (256-dim projection) instead of mnist1d")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)} (--quick: {','.join(QUICK)})")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    steps = args.steps or (10 if args.quick else 400)
    factors = [1.0] if args.quick else [1 / 3, 1.0, 3.0]
    methods = args.methods.split(",") if args.methods else (QUICK if args.quick else list(METHODS))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {list(METHODS)}")
    evals = 2 if args.quick else 20
    data = load_cifar10(args.cifar, 256, args.seed) if args.cifar else load_mnist1d(args.seed, 300 if args.quick else 5000)
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, tuple[list[int], list[float]]]] = {s: {} for s in SCHEDULES}
    rows = []
    for method in methods:
        centre = METHODS[method][2]
        lrs = [centre] if method == "prodigy" else [centre * f for f in factors]
        best_lr, best, scores = common.tune(lambda lr: train(method, lr, data, steps, "cosine", args.seed, evals=evals), lrs)
        res = {"best_lr": best_lr, "grid": scores, "cosine": {k: v for k, v in best.items() if k != "curve"}}
        panels["cosine"][method] = (best["curve"]["step"], best["curve"]["test_loss"])
        for sched in ("step", "wsd"):
            r = train(method, best_lr, data, steps, sched, args.seed, evals=evals)
            res[sched] = {k: v for k, v in r.items() if k != "curve"}
            panels[sched][method] = (r["curve"]["step"], r["curve"]["test_loss"])
        results[method] = res
        row = [method, best_lr]
        for sched in SCHEDULES:
            row += [res[sched]["test_acc"], res[sched]["test_loss"]]
        rows.append(row)
        print(f"{method:<20} lr={best_lr:.3g} " + " ".join(f"{s}: acc {res[s]['test_acc']:.3f} loss {res[s]['test_loss']:.3g}" for s in SCHEDULES), flush=True)
    headers = ["method", "lr"] + [f"{s} {m}" for s in SCHEDULES for m in ("test acc", "test loss")]
    table = common.markdown_table(headers, rows)
    common.plot_curves(out / "mlp_zoo.png", {f"{s}: test loss": c for s, c in panels.items()}, ylabel="test loss")
    meta = {"data": f"cifar10 ({args.cifar}), 256-dim projection" if args.cifar else "mnist1d", "methods": methods, "steps": steps, "batch": 128, "width": 256, "lr_factors": factors, "tuned_on": "final training loss, cosine schedule"}
    common.finish(out, "mlp_zoo", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
