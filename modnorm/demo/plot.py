"""The demo's figure: training loss and test accuracy per optimizer, side by side.

Every optimizer gets its own colour, line style and marker, so curves that coincide
(``adamw`` at 3× the lr of ``torch:adamw`` takes the same steps on a 3-layer MLP) stay
visible. The loss axis is logarithmic and its limits are set from the data, so no
finite point falls outside the axes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["FIGSIZE", "DPI", "demo_figure", "plot_demo"]

FIGSIZE: tuple[float, float] = (12.0, 5.0)  # inches
DPI = 100  # → 1200 × 500 pixels

_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v"), ("--", "x"), (":", "P"), ("-.", "*")]


def _log_limits(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    if not finite:
        return 1e-3, 10.0
    lo, hi = min(finite), max(finite)
    return lo / 2, hi * 2


def _markevery(n: int, k: int) -> tuple[int, int]:
    """About 8 markers per curve, shifted per curve so that coinciding curves show every marker."""
    every = max(1, n // 8)
    return (k * max(1, every // 4)) % every, every


def demo_figure(results: dict[str, dict[str, Any]]) -> Any:
    """The matplotlib figure for ``results[name] = {"curve": {"step", "loss"}, "accuracy_curve": {"step", "accuracy"}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI)
    losses: list[float] = []
    accuracies: list[float] = []
    for k, (name, r) in enumerate(results.items()):
        style, marker = _STYLES[k % len(_STYLES)]
        common = {"linestyle": style, "marker": marker, "markersize": 5, "linewidth": 1.4, "color": f"C{k % 10}"}
        xs, ys = r["curve"]["step"], r["curve"]["loss"]
        ax_loss.plot(xs, ys, markevery=_markevery(len(xs), k), label=f"{name} (last {ys[-1]:.2g})", **common)
        losses += ys
        acc = r["accuracy_curve"]
        ax_acc.plot(acc["step"], acc["accuracy"], markevery=_markevery(len(acc["step"]), k), label=f"{name} (final {acc['accuracy'][-1]:.3f})", **common)
        accuracies += acc["accuracy"]
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(*_log_limits(losses))
    ax_loss.set_title("training loss (minibatch, log scale)")
    ax_loss.set_ylabel("cross-entropy")
    finite_acc = [a for a in accuracies if math.isfinite(a)] or [0.0]
    ax_acc.set_ylim(max(0.0, min(finite_acc) - 0.05), 1.01)
    ax_acc.set_title("test accuracy (360 held-out digits)")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_demo(path: str | Path, results: dict[str, dict[str, Any]]) -> Path:
    """Write ``demo_figure(results)`` as a PNG (1200 × 500 px)."""
    import matplotlib.pyplot as plt

    fig = demo_figure(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
