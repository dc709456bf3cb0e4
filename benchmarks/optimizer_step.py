"""Optimizer step time and state size: modnorm presets vs torch.optim.Muon / torch.optim.AdamW.

GPT-like parameter set (no biases): token embedding (vocab × d), per layer q, k, v, o
(d × d), MLP up (4d × d) and down (d × 4d), output head (vocab × d). Hidden matrices
(q/k/v/o/up/down) take the matrix rule; embedding and head take AdamW — for modnorm via
their declared roles, for the torch baseline as torch.optim.Muon(hidden) + AdamW(rest).

Every optimizer owns a copy of the same weights with the same fixed gradients. After
``--warmup`` steps each, ``--repeats`` rounds time one ``step()`` of every optimizer in
a rotating order (interleaved, so machine load hits all alike); the table reports the
median and mean step time, ratios of medians to the baselines, and the optimizer-state
bytes relative to AdamW's. ``--profile NAME`` prints torch.profiler's top ops for one entry.

    python benchmarks/optimizer_step.py --quick --out /tmp/step.json
    python benchmarks/optimizer_step.py --width 384 --layers 4 --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modnorm  # noqa: E402
from modnorm import Geometry, RowNorm  # noqa: E402
from modnorm.norms import ColNorm  # noqa: E402

PRESETS = ("muon", "muadam", "muadam_sania", "adamw", "soap", "shampoo")


def gpt_shapes(width: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, int], str]]:
    """(name, shape, role) of a GPT-like model's weights."""
    d = width
    out = [("embed", (vocab, d), "embedding")]
    for i in range(layers):
        for n in ("q", "k", "v", "o"):
            out.append((f"h{i}.attn.{n}", (d, d), "hidden"))
        out.append((f"h{i}.mlp.up", (4 * d, d), "hidden"))
        out.append((f"h{i}.mlp.down", (d, 4 * d), "hidden"))
    out.append(("head", (vocab, d), "head"))
    return out


def make_params(shapes, dtype: torch.dtype, seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for name, shape, _ in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype) / shape[1] ** 0.5)
        p.grad = torch.randn(shape, generator=g, dtype=dtype) * 1e-2
        params.append((name, p))
    return params


def state_bytes(opts: list[torch.optim.Optimizer]) -> int:
    total = 0
    for opt in opts:
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
    return total


class Entry:
    """One optimizer configuration (possibly two torch optimizers stepped together)."""

    def __init__(self, name: str, build: Callable[[list], list[torch.optim.Optimizer]], shapes, dtype) -> None:
        self.name = name
        self.params = make_params(shapes, dtype)
        self.opts = build(self.params)
        self.times: list[float] = []

    def step(self) -> None:
        for opt in self.opts:
            opt.step()


def builders(shapes, preset_hp: dict[str, dict]) -> dict[str, Callable]:
    roles = {name: role for name, _, role in shapes}

    def split(params):
        hidden = [p for n, p in params if roles[n] == "hidden"]
        other = [p for n, p in params if roles[n] != "hidden"]
        return hidden, other

    geometries = {}
    for name, _, role in shapes:
        if role == "embedding":
            geometries[name] = Geometry(ColNorm(layout="embedding"), role="embedding")
        elif role == "head":
            geometries[name] = Geometry(RowNorm(), role="head")

    def modnorm_entry(preset: str) -> Callable:
        return lambda params: [modnorm.ModnormOptimizer(params, preset, geometries=geometries, **preset_hp.get(preset, {}))]

    out: dict[str, Callable] = {
        "torch.AdamW(foreach)": lambda params: [torch.optim.AdamW([p for _, p in params], lr=1e-3, foreach=True)],
        "torch.AdamW(fused)": lambda params: [torch.optim.AdamW([p for _, p in params], lr=1e-3, fused=True)],
        "torch.Muon+AdamW": lambda params: [
            torch.optim.Muon(split(params)[0], lr=0.02),
            torch.optim.AdamW(split(params)[1], lr=1e-3, foreach=True),
        ],
    }
    for preset in PRESETS:
        out[f"modnorm.{preset}"] = modnorm_entry(preset)
    # torch.optim.Muon always runs Newton–Schulz in bf16 (slow on CPUs without bf16 matmul units);
    # this row shows the same Muon with float32 iterations.
    out["modnorm.muon(ns float32)"] = lambda params: [modnorm.ModnormOptimizer(params, "muon", geometries=geometries, ns_dtype="float32")]
    return out


def run(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    shapes = gpt_shapes(args.width, args.layers, args.vocab)
    preset_hp = {"shampoo": {"precondition_frequency": args.precondition_frequency},
                 "soap": {"precondition_frequency": args.precondition_frequency}}
    entries = []
    for name, build in builders(shapes, preset_hp).items():
        try:
            entries.append(Entry(name, build, shapes, dtype))
        except (RuntimeError, ValueError) as e:  # e.g. fused AdamW unavailable for this device/dtype
            print(f"skipping {name}: {e}", file=sys.stderr)
    for e in entries:
        for _ in range(args.warmup):
            e.step()
    for r in range(args.repeats):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            t0 = time.perf_counter()
            e.step()
            e.times.append(time.perf_counter() - t0)
    by = {e.name: e for e in entries}
    med = {e.name: statistics.median(e.times) for e in entries}
    adamw_bytes = state_bytes(by["torch.AdamW(foreach)"].opts)
    rows = []
    for e in entries:
        row = {
            "optimizer": e.name,
            "median_ms": 1e3 * med[e.name],
            "mean_ms": 1e3 * statistics.fmean(e.times),
            "x_torch_muon": med[e.name] / med["torch.Muon+AdamW"],
            "x_torch_adamw_foreach": med[e.name] / med["torch.AdamW(foreach)"],
            "state_mib": state_bytes(e.opts) / 2**20,
            "state_x_adamw": state_bytes(e.opts) / adamw_bytes,
        }
        if "torch.AdamW(fused)" in med:
            row["x_torch_adamw_fused"] = med[e.name] / med["torch.AdamW(fused)"]
        row["x_muon_ns_fp32"] = med[e.name] / med["modnorm.muon(ns float32)"]
        rows.append(row)
    n_params = sum(a * b for _, (a, b), _ in shapes)
    return {
        "config": {**vars(args), "n_params": n_params, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                   "threads": torch.get_num_threads(), "preset_hp": preset_hp},
        "rows": rows,
    }


def print_table(result: dict) -> str:
    cols = [("optimizer", "{:<26}"), ("median_ms", "{:>10.2f}"), ("mean_ms", "{:>10.2f}"), ("x_torch_muon", "{:>13.2f}"),
            ("x_torch_adamw_foreach", "{:>22.2f}"), ("x_torch_adamw_fused", "{:>20.2f}"), ("x_muon_ns_fp32", "{:>15.2f}"),
            ("state_mib", "{:>10.1f}"), ("state_x_adamw", "{:>14.2f}")]
    cols = [(c, f) for c, f in cols if c in result["rows"][0]]
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    lines = [head, "|" + "|".join("---" for _ in cols) + "|"]
    for row in result["rows"]:
        lines.append("| " + " | ".join(f.format(row[c]).strip() for c, f in cols) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def profile(args: argparse.Namespace, name: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dtype = getattr(torch, args.dtype)
    shapes = gpt_shapes(args.width, args.layers, args.vocab)
    preset_hp = {"shampoo": {"precondition_frequency": args.precondition_frequency}, "soap": {"precondition_frequency": args.precondition_frequency}}
    e = Entry(name, builders(shapes, preset_hp)[name], shapes, dtype)
    for _ in range(args.warmup):
        e.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeats):
            e.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default); 1 is steadiest on a shared machine")
    ap.add_argument("--precondition-frequency", type=int, default=10, help="shampoo/soap eigendecomposition refresh")
    ap.add_argument("--quick", action="store_true", help="width 64, 2 layers, vocab 256, 5 repeats: seconds")
    ap.add_argument("--profile", metavar="NAME", help="print torch.profiler's top ops for this entry (e.g. modnorm.muadam) instead")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--table-from", metavar="JSON", help="print the table of an earlier --out file and exit")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.width, args.layers, args.vocab, args.repeats, args.warmup = 64, 2, 256, 5, 1
    if args.table_from:
        result = json.loads(Path(args.table_from).read_text())
        med = {r["optimizer"]: r["median_ms"] for r in result["rows"]}
        for r in result["rows"]:
            r.setdefault("x_muon_ns_fp32", r["median_ms"] / med["modnorm.muon(ns float32)"])
        print_table(result)
        return
    if args.profile:
        profile(args, args.profile)
        return
    result = run(args)
    print(f"# {result['config']['n_params'] / 1e6:.2f}M parameters, width {args.width}, {args.layers} layers, vocab {args.vocab}, "
          f"{args.dtype}, {result['config']['threads']} threads, median of {args.repeats} interleaved steps")
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
