"""The ``modnorm`` command: ``demo``, ``describe`` and ``bench``.

    modnorm demo [--out DIR] [--quick]      train the digits MLP with several optimizers
    modnorm describe                        per-parameter geometry of the demo model
    modnorm bench NAME [--quick] [...]      run benchmarks/NAME.py from a source checkout
"""

from __future__ import annotations

import argparse
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "benchmark_dir", "BENCHMARKS"]

BENCHMARKS: tuple[str, ...] = ("matrix_quadratic", "scale_invariance", "matrix_completion", "char_gpt", "lr_transfer")


def benchmark_dir() -> Path:
    """``benchmarks/`` next to the package (source checkout), else under the working directory."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks").is_dir():
            return root / "benchmarks"
    raise FileNotFoundError("modnorm bench: no benchmarks/ folder found next to the modnorm package or in the working directory; run it from a source checkout of modnorm")


def _describe() -> int:
    import modnorm
    from modnorm.demo import demo_model

    model = demo_model()
    if hasattr(modnorm, "describe"):
        print(modnorm.describe(model))
        return 0
    print("modnorm.describe is not available in this build; the demo model's parameters are:")
    for name, p in model.named_parameters():
        print(f"  {name:<12} {tuple(p.shape)}")
    return 0


def _bench(name: str, rest: Sequence[str]) -> int:
    folder = benchmark_dir()
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
    sub.add_parser("describe", help="print the per-parameter geometry of the demo model")
    bench = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (source checkout)")
    bench.add_argument("name", help=f"benchmark name, e.g. {', '.join(BENCHMARKS)}")
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from modnorm.demo import MissingExtraError, run_demo

        try:
            run_demo(args.out, quick=args.quick, progress=not args.no_progress)
        except MissingExtraError as e:
            raise SystemExit(str(e)) from None
        return 0
    if args.command == "describe":
        return _describe()
    return _bench(args.name, rest)


if __name__ == "__main__":
    sys.exit(main())
