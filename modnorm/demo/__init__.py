"""``modnorm demo``: train a small MLP on scikit-learn's bundled digits with several optimizers.

Each optimizer starts from the same initialization and sees the same minibatches; the
demo prints a table (final train loss, test accuracy, wall time) and writes
``results.json`` and ``loss_curves.png`` (training loss and test accuracy) to the output
folder. It needs the ``demo`` extra (``pip install "modnorm[demo]"``: scikit-learn for
the data, matplotlib for the plot, tqdm for the progress bar); without it ``run_demo``
raises ``MissingExtraError`` naming what is missing, before any work.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..table import format_table
from .training import _shrink_png, cosine_factor, make_optimizer, mlp, train_steps, write_json

__all__ = ["DEMO_OPTIMIZERS", "DEMO_EXTRA", "MissingExtraError", "require_demo_extra", "demo_model", "load_digits_split", "run_demo"]

#: import name → package of the ``demo`` extra
DEMO_EXTRA: dict[str, str] = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}


class MissingExtraError(ImportError):
    """A package of an optional extra is not installed; the message says how to install it."""


def require_demo_extra(progress: bool = True) -> None:
    """Raise ``MissingExtraError`` unless the demo's packages import (tqdm only when ``progress``)."""
    missing = []
    for module, package in DEMO_EXTRA.items():
        if module == "tqdm" and not progress:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingExtraError(f"modnorm demo needs {', '.join(missing)}, not installed here; install the demo extra: pip install \"modnorm[demo]\"")

#: optimizer name → hyperparameters. "torch:*" are PyTorch's own optimizers (the baseline).
DEMO_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "torch:adamw": {"lr": 3e-3, "weight_decay": 0.01},
    # budgets=True: modnorm presets scale each layer's lr by its modular budget (1/3 per
    # layer of this 3-layer MLP), so lr 9e-3 here is torch AdamW's per-layer step at 3e-3.
    "sgd": {"lr": 0.3, "momentum": 0.9, "budgets": True},
    "adamw": {"lr": 9e-3, "weight_decay": 0.01, "budgets": True},
    "muon": {"lr": 0.02, "budgets": True},
    "muadam": {"lr": 0.01, "budgets": True},
    "muadam_sania": {"lr": 1e-4, "budgets": True},  # D = V^½ makes the step scale like 1/|gradient|: a far smaller lr
}


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits (1797 images of 8×8 pixels, 10 classes) scaled to [0, 1]: (X_train, y_train, X_test, y_test)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X_t = torch.tensor(X, dtype=torch.float32) / 16.0
    y_t = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y_t), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y_t) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return X_t[train], y_t[train], X_t[test], y_t[test]


class _NoBar:
    """Stands in for a tqdm bar when the progress bar is off (tqdm need not be installed)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, text: str) -> None:
        return None


def _progress_bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="modnorm demo", unit="step")


def demo_model(width: int = 128, seed: int = 0) -> nn.Sequential:
    """The demo network: 64 → width → width → 10 ReLU MLP."""
    torch.manual_seed(seed)
    return mlp([64, width, width, 10])


def _train_one(name: str, hp: dict[str, Any], data: tuple[Tensor, ...], steps: int, batch: int, seed: int, bar: Any) -> dict[str, Any]:
    X, y, X_test, y_test = data
    model = demo_model(seed=seed)
    opt = make_optimizer(name, model, **hp)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randint(0, len(y), (batch,), generator=gen) for _ in range(steps)]
    loss_fn = nn.CrossEntropyLoss()

    def step_loss(step: int) -> Tensor:
        idx = batches[step]
        return loss_fn(model(X[idx]), y[idx])

    def test_accuracy() -> float:
        with torch.no_grad():
            return float((model(X_test).argmax(-1) == y_test).float().mean())

    every = max(1, steps // 20)
    acc_steps: list[int] = []
    accs: list[float] = []

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % every == 0:  # before this step's update: the accuracy after `step` updates
            acc_steps.append(step)
            accs.append(test_accuracy())

    xs, ys, seconds = train_steps(model, opt, step_loss, steps, schedule=lambda s: cosine_factor(s, steps, final=0.1), on_step=on_step, every=max(1, steps // 100))
    bar.update(steps - 1 - xs[-1])  # a diverged run stops early
    accuracy = test_accuracy()
    acc_steps.append(xs[-1] + 1)
    accs.append(accuracy)
    with torch.no_grad():
        train_loss = float(loss_fn(model(X), y))
    return {
        "hyperparameters": hp,
        "final_train_loss": train_loss,
        "test_accuracy": accuracy,
        "seconds": seconds,
        "curve": {"step": xs, "loss": ys},
        "accuracy_curve": {"step": acc_steps, "accuracy": accs},
    }


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """The printed results table."""
    rows = [{
        "optimizer": name, "lr": f"{r['hyperparameters'].get('lr', float('nan')):.3g}", "train loss": f"{r['final_train_loss']:.3g}",
        "test acc": f"{r['test_accuracy']:.3f}", "time (s)": f"{r['seconds']:.2f}",
    } for name, r in results.items()]
    return format_table(rows, ["optimizer", "lr", "train loss", "test acc", "time (s)"])


def run_demo(out: str | Path = "runs/demo", quick: bool = False, optimizers: dict[str, dict[str, Any]] | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train the demo MLP with each optimizer; write ``out/results.json`` and ``out/loss_curves.png``.

    ``quick`` shrinks the run (60 steps instead of 400) for tests. Raises
    ``MissingExtraError`` first when a package of the ``demo`` extra is missing.
    """
    require_demo_extra(progress)
    from .plot import plot_demo

    optimizers = DEMO_OPTIMIZERS if optimizers is None else optimizers
    steps, batch = (60, 64) if quick else (400, 128)
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and the cores are shared
    data = load_digits_split(seed)
    results: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    with _progress_bar(steps * len(optimizers), progress) as bar:
        for name, hp in optimizers.items():
            bar.set_postfix_str(name)
            results[name] = _train_one(name, hp, data, steps, batch, seed, bar)
    out = Path(out)
    summary = {
        "dataset": "sklearn digits (1437 train / 360 test, 64 features, 10 classes)",
        "model": "MLP 64-128-128-10, ReLU",
        "steps": steps,
        "batch_size": batch,
        "schedule": "cosine from lr to 0.1·lr",
        "total_seconds": time.perf_counter() - start,
        "results": results,
    }
    write_json(out / "results.json", summary)
    _shrink_png(plot_demo(out / "loss_curves.png", results))
    print(results_table(results))
    print(f"wrote {out / 'results.json'} and {out / 'loss_curves.png'} ({summary['total_seconds']:.1f} s)")
    return summary
