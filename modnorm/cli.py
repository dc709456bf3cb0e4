"""The ``modnorm`` command: ``demo``, ``describe`` and ``bench``.

    modnorm demo [--out DIR] [--quick]      train the digits MLP with several optimizers
    modnorm describe [TARGET] [--optimizer PRESET [--lr LR]] [--tree]
                                            per-parameter table of a model (default: the demo's),
                                            or of the optimizer PRESET builds for it
    modnorm bench NAME [--quick] [...]      run benchmarks/NAME.py from a source checkout

TARGET is ``package.module:NAME`` (imported; the working directory is on the path) or
``path/to/file.py:NAME`` (run as a module, not as ``__main__``); ``:NAME`` defaults to
``:model``. NAME is an ``nn.Module``, a modnorm optimizer, or a function of no arguments
returning one of them.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "benchmark_dir", "load_target", "BENCHMARKS"]

BENCHMARKS: tuple[str, ...] = ("matrix_quadratic", "scale_invariance", "matrix_completion", "char_gpt", "lr_transfer", "zoo_2d", "mlp_zoo", "lr_spike")


def benchmark_dir() -> Path:
    """``benchmarks/`` next to the package (source checkout), else under the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks").is_dir():
            return root / "benchmarks"
    raise FileNotFoundError("modnorm bench: no benchmarks/ folder found next to the modnorm package or in the working directory; run it from a source checkout of modnorm")


def load_target(target: str) -> Any:
    """The object TARGET names (see the module docstring), called if it is a factory."""
    import importlib

    import torch

    where, _, name = target.partition(":")
    name = name or "model"
    if where.endswith(".py") or Path(where).is_file():
        if not Path(where).is_file():
            raise SystemExit(f"modnorm describe: no file {where!r}")
        namespace = runpy.run_path(where, run_name="__modnorm_describe__")
    else:
        if str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            namespace = vars(importlib.import_module(where))
        except ModuleNotFoundError as e:
            raise SystemExit(f"modnorm describe: cannot import {where!r} ({e}); give package.module:NAME or path/to/file.py:NAME") from None
    if name not in namespace:
        raise SystemExit(f"modnorm describe: {where!r} defines no {name!r}; name the model or its factory after a colon, e.g. {where}:make_model")
    obj = namespace[name]
    if not isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)) and callable(obj):
        obj = obj()
    if not isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
        raise SystemExit(f"modnorm describe: {target!r} gave a {type(obj).__name__}, not an nn.Module or an optimizer")
    return obj


def _describe(target: str | None, preset: str | None, lr: float | None, tree: bool) -> int:
    import torch

    from .describe import describe
    from .optim.factory import optimizer

    if target is None:
        from .demo import demo_model

        obj: Any = demo_model()
    else:
        obj = load_target(target)
    if preset is not None:
        if not isinstance(obj, torch.nn.Module):
            raise SystemExit("modnorm describe: --optimizer needs a model, and the target is already an optimizer")
        obj = optimizer(obj, preset, **({} if lr is None else {"lr": lr}))
    elif lr is not None:
        raise SystemExit("modnorm describe: --lr needs --optimizer PRESET")
    print(describe(obj, tree=tree) if isinstance(obj, torch.nn.Module) else describe(obj))
    return 0


def _bench(name: str, rest: Sequence[str]) -> int:
    try:
        folder = benchmark_dir()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    script = folder / f"{name}.py"
    if not script.is_file():
        available = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")
        raise SystemExit(f"modnorm bench: no benchmark named {name!r}; available: {', '.join(available)}")
    sys.argv = [str(script), *rest]
    sys.path.insert(0, str(folder))
    runpy.run_path(str(script), run_name="__main__")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modnorm`` console script and of ``python -m modnorm``."""
    parser = argparse.ArgumentParser(prog="modnorm", description="Optimizers generated from the modular norm of a network.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP on scikit-learn's digits with AdamW and modnorm presets")
    demo.add_argument("--out", default="runs/demo", help="output folder for results.json and loss_curves.png (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a few-second run (60 steps), for tests")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    desc = sub.add_parser("describe", help="per-parameter table of a model (default: the demo's) or of its optimizer")
    desc.add_argument("target", nargs="?", help="package.module:NAME or path/to/file.py:NAME (NAME: a model, an optimizer, or a factory; default 'model')")
    desc.add_argument("--optimizer", metavar="PRESET", help="describe modnorm.optimizer(model, PRESET) instead: norm used, route, effective lr")
    desc.add_argument("--lr", type=float, help="the optimizer's lr (with --optimizer)")
    desc.add_argument("--tree", action="store_true", help="append the composition tree (models only)")
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    bench.add_argument("name", help=f"benchmark name, e.g. {', '.join(BENCHMARKS)}")
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from .demo import MissingExtraError, run_demo

        try:
            run_demo(args.out, quick=args.quick, progress=not args.no_progress)
        except MissingExtraError as e:
            raise SystemExit(str(e)) from None
        return 0
    if args.command == "describe":
        return _describe(args.target, args.optimizer, args.lr, args.tree)
    return _bench(args.name, rest)


if __name__ == "__main__":
    sys.exit(main())
