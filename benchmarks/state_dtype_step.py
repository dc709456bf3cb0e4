"""Step time and state memory of 16-bit optimizer state (``state_dtype="bfloat16"``) against float32 state.

GPT-like parameter set (``optimizer_step.gpt_shapes``), float32 parameters, fixed gradients.
For adamw and muon (Newton–Schulz in float32, so that only the state differs), one optimizer
per state setting — float32, bfloat16 with stochastic rounding, bfloat16 rounded to nearest —
each on its own copy of the weights; after ``--warmup`` steps, ``--repeats`` rounds time one
step of every contender in a rotating order (interleaved: machine load hits all alike).
Reported: median ms / step, its ratio to the float32-state step, and the state's bytes.

    python benchmarks/state_dtype_step.py --quick --out /tmp/state_dtype.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimizer_step import gpt_geometries, gpt_params, gpt_shapes, gpt_step_arguments, write_result  # noqa: E402

import modnorm  # noqa: E402
from modnorm.table import markdown_table  # noqa: E402

SETTINGS = {"float32": {}, "bfloat16 stochastic": {"state_dtype": "bfloat16"},
            "bfloat16 nearest": {"state_dtype": "bfloat16", "state_rounding": "nearest"}}
PRESETS = {"adamw": {}, "muon": {"ns_dtype": "float32"}}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim)


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    shapes = gpt_shapes(args.width, args.layers, args.vocab)
    geometries = gpt_geometries(shapes)
    entries = {}
    for preset, hp in PRESETS.items():
        for label, storage in SETTINGS.items():
            params = gpt_params(shapes, torch.float32)
            entries[f"{preset} / {label}"] = modnorm.ModnormOptimizer(params, preset, geometries=geometries, rounding_seed=0, **hp, **storage)
    names = list(entries)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            entries[n].step()
            if r >= args.warmup:
                times[n].append(time.perf_counter() - t0)
    out = {}
    for n in names:
        preset = n.split(" / ")[0]
        base = statistics.median(times[f"{preset} / float32"])
        med = statistics.median(times[n])
        out[n] = {"step_ms": 1e3 * med, "vs_float32": med / base, "state_bytes": state_bytes(entries[n])}
    return {"config": vars(args), "results": out}


def main() -> None:
    args = gpt_step_arguments(__doc__)
    result = measure(args)
    rows = [[n, r["step_ms"], r["vs_float32"], r["state_bytes"] / 2**20] for n, r in result["results"].items()]
    print(markdown_table(["optimizer / state", "ms / step", "× float32 state", "state MiB"], rows))
    write_result(args.out, "state_dtype_step", result)


if __name__ == "__main__":
    main()
