"""Cost of the all-or-nothing step: its finiteness check and commit, as a fraction of a step.

GPT-like parameter set (``optimizer_step.gpt_shapes``), fixed gradients. For each optimizer,
steps are timed interleaved (rotating order, so machine load hits all alike); inside every
step the transaction's check (``StepTransaction.all_finite``: one sum per new state tensor
and update, one host read; for buckets on the fused path, ``fused.admit``: one max |x| per
gradient) and its commit (state swap + the parameter writes, which any
optimizer does) are timed too. Reported: median step time, the check's and the swap's share
of it, and for reference a gradient-only check (one sum per gradient) timed in the same loop.

    python benchmarks/step_check.py --quick --out /tmp/check.json
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

from optimizer_step import gpt_builders, gpt_params, gpt_shapes, gpt_step_arguments, write_result  # noqa: E402

import importlib  # noqa: E402

from modnorm.optim import transaction  # noqa: E402

optimizer_module = importlib.import_module("modnorm.optim.optimizer")  # (``modnorm.optim.optimizer`` is the factory)

TIMES: dict[str, float] = {}


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        TIMES[name] = TIMES.get(name, 0.0) + time.perf_counter() - t0
        return out

    return wrapper


PATCHES = ((transaction.StepTransaction, "all_finite", "check"), (optimizer_module, "admit", "check"),
           (transaction.StepTransaction, "commit", "commit"), (transaction.PendingWrite, "apply", "write"))


def grad_check(params) -> bool:
    return bool(torch.stack([p.grad.sum() for _, p in params]).isfinite().all())


def run(args: argparse.Namespace) -> dict:
    originals = [(cls, attr, getattr(cls, attr)) for cls, attr, _ in PATCHES]
    threads = torch.get_num_threads()
    try:
        for cls, attr, name in PATCHES:
            setattr(cls, attr, _timed(name, getattr(cls, attr)))
        torch.set_num_threads(1)
        return _measure(args)
    finally:
        for cls, attr, fn in originals:
            setattr(cls, attr, fn)
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> dict:
    shapes = gpt_shapes(args.width, args.layers, args.vocab)
    table = gpt_builders(shapes)
    names = ["torch.AdamW(foreach)", "modnorm.adamw", "modnorm.muon(ns float32)"]
    entries = {n: (gpt_params(shapes, torch.float32), None) for n in names}
    entries = {n: (ps, table[n](ps)) for n, (ps, _) in entries.items()}
    rows: dict[str, dict[str, list[float]]] = {n: {"step": [], "check": [], "swap": [], "grad_check": []} for n in names}
    for r in range(args.warmup + args.repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            params, opts = entries[n]
            TIMES.clear()
            t0 = time.perf_counter()
            for opt in opts:
                opt.step()
            step = time.perf_counter() - t0
            t0 = time.perf_counter()
            grad_check(params)
            gc = time.perf_counter() - t0
            if r >= args.warmup:
                rows[n]["step"].append(step)
                rows[n]["check"].append(TIMES.get("check", 0.0))
                rows[n]["swap"].append(TIMES.get("commit", 0.0) - TIMES.get("write", 0.0))
                rows[n]["grad_check"].append(gc)
    out = {}
    for n, row in rows.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        out[n] = {"step_ms": 1e3 * med["step"], "check_fraction": med["check"] / med["step"],
                  "swap_fraction": med["swap"] / med["step"], "grad_check_fraction": med["grad_check"] / med["step"]}
    return {"config": vars(args), "results": out}


def main() -> None:
    args = gpt_step_arguments(__doc__)
    result = run(args)
    print("| optimizer | ms/step | check / step | state swap / step | gradient-only check / step |")
    print("|---|---|---|---|---|")
    for n, r in result["results"].items():
        print(f"| {n} | {r['step_ms']:.2f} | {r['check_fraction']:.1%} | {r['swap_fraction']:.1%} | {r['grad_check_fraction']:.1%} |")
    write_result(args.out, "step_check", result)


if __name__ == "__main__":
    main()
