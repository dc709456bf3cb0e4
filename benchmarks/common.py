"""Shared pieces of the benchmark scripts: arguments, lr grids, tuning, tables, output.

Every benchmark is ``python benchmarks/NAME.py [--quick] [--out DIR]`` and writes
``DIR/NAME.json``, ``DIR/NAME.png`` and ``DIR/NAME.md`` (its markdown results table).
Optimizers are built by ``make_optimizer`` (``modnorm.demo.training``): ``torch:*``
names are PyTorch's optimizers, every other name a ``modnorm.optimizer`` preset
(``PRESET+polyak``: with ``step_size="polyak"``). A method key may carry a ``:label``
suffix to run one preset with two settings (e.g. ``muadam:sharp``); ``preset_name`` strips it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from modnorm.demo.training import (  # noqa: E402,F401
    cosine_factor,
    is_finite_tree,
    make_optimizer,
    mlp,
    plot_curves,
    set_lr_factor,
    step_optimizer,
    train_steps,
    write_json,
)
from modnorm.table import markdown_table  # noqa: E402,F401

PRETTY: dict[str, str] = {
    "torch:adamw": "AdamW (torch)",
    "torch:sgd": "SGD (torch)",
    "torch:muon": "Muon+AdamW (torch)",
    "sgd": "sgd",
    "adamw": "adamw",
    "muon": "muon",
    "muadam": "muadam",
    "muadam_sania": "muadam_sania",
    "soap": "soap",
    "adam_sania+polyak": "adam_sania+polyak",
    "muadam_sania+polyak": "muadam_sania+polyak",
    "muadam+polyak": "muadam+polyak",
    "muadam:sharp": "muadam (sharp)",
    "adam_sania+polyak:plain": "adam_sania+polyak (no growth cap)",
    "muadam_sania+polyak:plain": "muadam_sania+polyak (no growth cap)",
}


def preset_name(method: str) -> str:
    """The optimizer name of a method key (``"muadam:sharp"`` → ``"muadam"``)."""
    return method.split(":")[0] if not method.startswith("torch:") else method


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="CI-sized run (a few seconds)")
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; the matrices are small)")
    return p


def setup(args: argparse.Namespace) -> Path:
    """Apply --threads and --seed; create and return the output folder."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def lr_grid(center: float, below: int, above: int, factor: float = 2.0) -> list[float]:
    """``center · factor^k`` for k = −below … above."""
    return [center * factor**k for k in range(-below, above + 1)]


def final_value(ys: Sequence[float]) -> float:
    """Last recorded value; ``inf`` for a diverged (NaN/inf) run so it never wins a tuning."""
    v = ys[-1] if ys else float("nan")
    return v if math.isfinite(v) else float("inf")


def tune(run: Callable[[float], dict[str, Any]], lrs: Sequence[float], key: str = "final") -> tuple[float, dict[str, Any], dict[float, float]]:
    """Run ``run(lr)`` for each lr; return (best lr, its result, {lr: result[key]}), lowest ``key`` wins."""
    scores: dict[float, float] = {}
    best_lr, best = lrs[0], None
    for lr in lrs:
        result = run(lr)
        score = result[key] if math.isfinite(result[key]) else float("inf")
        scores[lr] = score
        if best is None or score < scores[best_lr]:
            best_lr, best = lr, result
    assert best is not None
    return best_lr, best, scores


def finish(out: Path, name: str, data: dict[str, Any], table: str, started: float, command: str) -> None:
    """Write NAME.json (with the table and the run time) and NAME.md; print the table."""
    data = {"benchmark": name, "command": command, "seconds": time.perf_counter() - started, **data, "table": table}
    write_json(out / f"{name}.json", data)
    (out / f"{name}.md").write_text(f"`{command}` ({data['seconds']:.0f} s)\n\n{table}\n")
    print(table)
    print(f"wrote {out / (name + '.json')}, {out / (name + '.png')}, {out / (name + '.md')} in {data['seconds']:.1f} s")


def command_line() -> str:
    """The command that ran this script, for the results tables."""
    return "python " + " ".join([Path(sys.argv[0]).as_posix().split(f"{ROOT.name}/")[-1], *sys.argv[1:]])
