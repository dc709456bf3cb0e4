"""How long ``import modnorm`` takes, relative to ``import torch``.

Each sample is a fresh ``python -c "import X"`` subprocess timed from the inside
(``time.perf_counter`` and ``time.process_time`` around the import, so interpreter start-up
is excluded). The two imports alternate (torch, modnorm, torch, …) so that load on a shared
machine affects both alike; the script prints the median of each and their ratio, in wall
time and in CPU time (the process's own, which load inflates less).

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

PROBE = ("import time; t, c = time.perf_counter(), time.process_time(); import {module}; "
         "print(time.perf_counter() - t, time.process_time() - c)")


def sample(module: str) -> tuple[float, float]:
    """(wall, CPU) seconds one fresh interpreter spends in ``import module``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, check=True, capture_output=True, text=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def measure(repeats: int) -> dict[str, float]:
    """Median import seconds (wall and CPU) of torch and modnorm (alternating samples) and their ratios."""
    if repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1, got {repeats}")
    sample("modnorm")  # warm the file cache once
    times: dict[str, list[tuple[float, float]]] = {"torch": [], "modnorm": []}
    for _ in range(repeats):
        for module in times:
            times[module].append(sample(module))
    med = {m: [statistics.median(s[i] for s in t) for i in (0, 1)] for m, t in times.items()}
    return {"torch_s": med["torch"][0], "modnorm_s": med["modnorm"][0], "ratio": med["modnorm"][0] / med["torch"][0],
            "torch_cpu_s": med["torch"][1], "modnorm_cpu_s": med["modnorm"][1], "cpu_ratio": med["modnorm"][1] / med["torch"][1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="samples of each import (default: 15)")
    args = p.parse_args()
    r = measure(args.repeats)
    print(f"median of {args.repeats}     wall      CPU")
    print(f"import torch   {r['torch_s']:7.3f} s {r['torch_cpu_s']:7.3f} s")
    print(f"import modnorm {r['modnorm_s']:7.3f} s {r['modnorm_cpu_s']:7.3f} s   (includes torch)")
    print(f"ratio          {r['ratio']:7.2f}   {r['cpu_ratio']:7.2f}")


if __name__ == "__main__":
    main()
