"""How long ``import modnorm`` takes, relative to ``import torch``.

Each sample is a fresh ``python -c "import X"`` subprocess timed from the inside
(``time.perf_counter`` around the import, so interpreter start-up is excluded). The two
imports alternate (torch, modnorm, torch, …) so that load on a shared machine affects
both alike; the script prints the median of each and their ratio.

    python benchmarks/import_time.py              # 15 samples of each
    python benchmarks/import_time.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def sample(module: str) -> float:
    """Seconds one fresh interpreter spends in ``import module``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(repeats: int) -> dict[str, float]:
    """Median import seconds of torch and modnorm (alternating samples) and their ratio."""
    if repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {repeats}")
    sample("modnorm")  # warm the file cache once
    times: dict[str, list[float]] = {"torch": [], "modnorm": []}
    for _ in range(repeats):
        for module in times:
            times[module].append(sample(module))
    torch_s, modnorm_s = statistics.median(times["torch"]), statistics.median(times["modnorm"])
    return {"torch_s": torch_s, "modnorm_s": modnorm_s, "ratio": modnorm_s / torch_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="samples of each import (default: 15)")
    args = p.parse_args()
    r = measure(args.repeats)
    print(f"import torch   {r['torch_s']:.3f} s (median of {args.repeats})")
    print(f"import modnorm {r['modnorm_s']:.3f} s (median of {args.repeats}; includes torch)")
    print(f"ratio          {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
