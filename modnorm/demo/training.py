"""Shared training utilities for the demo and the benchmarks.

``make_optimizer(name, model, **hp)`` is the single place where optimizers are built:
names ``"torch:adamw"``, ``"torch:sgd"`` and ``"torch:muon"`` are the PyTorch reference
optimizers, every other name is a ``modnorm.optimizer`` preset. The rest is a small
training loop with an lr schedule, and JSON/PNG writers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "TORCH_OPTIMIZERS",
    "OptimizerChain",
    "make_optimizer",
    "mlp",
    "set_lr_factor",
    "cosine_factor",
    "train_steps",
    "write_json",
    "plot_curves",
    "is_finite_tree",
]

TORCH_OPTIMIZERS: tuple[str, ...] = ("torch:adamw", "torch:sgd", "torch:muon")


class OptimizerChain:
    """Several optimizers stepped together (torch.optim.Muon for hidden matrices + AdamW for the rest)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def _is_hidden_matrix(name: str, p: Tensor, exclude: Sequence[str]) -> bool:
    return p.ndim == 2 and not any(key in name for key in exclude)


def make_optimizer(name: str, model: nn.Module | list[tuple[str, Tensor]], **hp: Any) -> torch.optim.Optimizer | OptimizerChain:
    """Build optimizer ``name`` for ``model`` (a module, or a list of ``(name, parameter)`` pairs).

    A list skips the model's declared geometry: modnorm infers each parameter's geometry
    from its rank (2-D: a hidden matrix) with budget 1 — for bare ``nn.Parameter`` models.

    ``"torch:adamw"``/``"torch:sgd"``: ``torch.optim.AdamW``/``SGD`` with ``hp``.
    ``"torch:muon"``: ``torch.optim.Muon`` on 2-D parameters whose name contains none of
    ``hp["adamw_params"]`` (default: the first and last Linear of a Sequential, i.e.
    ``("0.", "embed", "wte", "wpe", "head")`` plus any name listed), AdamW elsewhere with
    ``hp["adamw_lr"]`` (default: ``lr``). Anything else: ``modnorm.optimizer(model, name, **hp)``;
    ``"PRESET+STAGE"`` (e.g. ``"muadam_sania+polyak"``) is PRESET with ``step_size=STAGE``.
    """
    named = list(model.named_parameters()) if isinstance(model, nn.Module) else list(model)
    if name == "torch:adamw":
        return torch.optim.AdamW([p for _, p in named], **hp)
    if name == "torch:sgd":
        return torch.optim.SGD([p for _, p in named], **hp)
    if name == "torch:muon":
        hp = dict(hp)
        exclude = tuple(hp.pop("adamw_params", ("embed", "wte", "wpe", "head")))
        adamw_lr = hp.pop("adamw_lr", hp.get("lr", 1e-3))
        adamw_betas = hp.pop("adamw_betas", (0.9, 0.999))
        hidden = [p for n, p in named if _is_hidden_matrix(n, p, exclude)]
        rest = [p for n, p in named if not _is_hidden_matrix(n, p, exclude)]
        if not hidden:
            raise ValueError("make_optimizer('torch:muon'): no hidden 2-D matrix left after excluding names containing " f"{exclude}; pass adamw_params=(...) to choose which parameters go to AdamW")
        opts: list[torch.optim.Optimizer] = [torch.optim.Muon(hidden, **hp)]
        if rest:
            opts.append(torch.optim.AdamW(rest, lr=adamw_lr, betas=adamw_betas, weight_decay=hp.get("weight_decay", 0.0)))
        return OptimizerChain(*opts)
    from ..optim.factory import optimizer

    if "+" in name:
        name, stage = name.split("+", 1)
        hp = {"step_size": stage, **hp}
    return optimizer(model, name, **hp)


def mlp(dims: Sequence[int], activation: Callable[[], nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    """A plain multilayer perceptron ``dims[0] → … → dims[-1]`` of nn.Linear layers."""
    if len(dims) < 2:
        raise ValueError(f"mlp: dims needs at least input and output sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def set_lr_factor(opt: torch.optim.Optimizer | OptimizerChain, factor: float) -> None:
    """Set every group's lr to ``factor`` × its lr at the first call (kept as ``initial_lr``)."""
    for g in opt.param_groups:
        g.setdefault("initial_lr", float(g["lr"]) if not isinstance(g["lr"], Tensor) else g["lr"].item())
        lr = g["initial_lr"] * factor
        if isinstance(g["lr"], Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def cosine_factor(step: int, total: int, warmup: int = 0, final: float = 0.0) -> float:
    """Linear warmup for ``warmup`` steps, then cosine from 1 to ``final`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer | OptimizerChain,
    loss_fn: Callable[[int], Tensor],
    steps: int,
    schedule: Callable[[int], float] | None = None,
    clip: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    every: int = 1,
) -> tuple[list[int], list[float], float]:
    """Run ``steps`` optimizer steps; ``loss_fn(step)`` returns the training loss.

    Returns (recorded steps, recorded losses, wall seconds). A loss is recorded every
    ``every`` steps and at the last step; training stops early on a non-finite loss or a
    non-finite gradient that the optimizer refuses (recorded as ``nan``).
    """
    xs: list[int] = []
    ys: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        if schedule is not None:
            set_lr_factor(opt, schedule(step))
        loss = loss_fn(step)
        value = float(loss.detach())
        if step % every == 0 or step == steps - 1 or not math.isfinite(value):
            xs.append(step)
            ys.append(value if math.isfinite(value) else float("nan"))
        if on_step is not None:
            on_step(step, value)
        if not math.isfinite(value):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        try:
            step_optimizer(opt, loss)
        except FloatingPointError:  # a modnorm optimizer refused a non-finite gradient: the run diverged
            xs.append(step)
            ys.append(float("nan"))
            break
    return xs, ys, time.perf_counter() - start


def step_optimizer(opt: torch.optim.Optimizer | OptimizerChain, loss: Tensor) -> None:
    """``opt.step()``, handing a modnorm optimizer the loss (a step-size stage such as
    ``step_size="polyak"`` needs it)."""
    from ..optim.optimizer import ModnormOptimizer

    if isinstance(opt, ModnormOptimizer):
        opt.step(loss=loss.detach())
    else:
        opt.step()


def is_finite_tree(obj: Any) -> bool:
    """True when every float in a nested dict/list structure is finite."""
    if isinstance(obj, dict):
        return all(is_finite_tree(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(is_finite_tree(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    return obj


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON (NaN → null, ±inf → "inf"/"-inf"), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    return path


def plot_curves(
    path: str | Path,
    panels: dict[str, dict[str, tuple[Iterable[float], Iterable[float]]]],
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = True,
    logx: bool = False,
    styles: dict[str, str] | None = None,
) -> Path:
    """One subplot per panel, one line per curve name: ``panels[title][label] = (xs, ys)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels.items()):
        for label, (xs, ys) in curves.items():
            ax.plot(list(xs), list(ys), (styles or {}).get(label, "-"), label=label, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    _shrink_png(path)
    return path


def _shrink_png(path: Path) -> None:
    """Re-save as a 64-colour palette PNG (a few times smaller; plots have few colours)."""
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib; keep the full-colour file otherwise
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)
