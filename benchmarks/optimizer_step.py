"""Optimizer step time and memory: modnorm presets against torch.optim and pytorch-optimizer.

One run reports every ratio of the performance table (docs/benchmarks.md):

- on a GPT-like parameter set (token embedding vocab × d; per layer q, k, v, o d × d, MLP
  up 4d × d and down d × 4d; head vocab × d; no biases; hidden matrices take the matrix
  rule, embedding and head AdamW): modnorm ``adamw`` vs torch AdamW (fused and foreach),
  ``sgd`` vs torch SGD (momentum 0.9, foreach), ``muon`` vs torch Muon(hidden) +
  AdamW(rest), ``muadam`` vs pytorch-optimizer's AdaMuon, ``soap`` vs its SOAP and
  ``shampoo`` vs its Shampoo (both + torch AdamW on embedding/head; Shampoo timed on
  steps without an inverse-root refresh), each library at its own defaults;
- the peak memory a step allocates beyond parameters, gradients and state, as a multiple
  of the parameter bytes (torch.profiler's CPU allocation events, one step after warm-up);
- a ResNet-18 optimizer step (real ``nn.Module``, random gradients) of muon, scion and
  muadam relative to torch AdamW's;
- ``import modnorm`` / ``import torch`` wall time (fresh interpreters).

Every optimizer owns a copy of the same weights and fixed gradients. After ``--warmup``
steps each, ``--repeats`` rounds time one step of every contender in a rotating order
(interleaved, so machine load hits all alike); ratios are of medians within the run.
Contenders whose step takes under 50 ms (adamw, sgd and their torch peers, ~10 ms at size
S) then take ``--fast-repeats`` more rounds among themselves: a load blip moves such a
step by 10%, so their medians are over all their rounds. pytorch-optimizer ("po") contenders are skipped when it is not installed.

    python benchmarks/optimizer_step.py --size S --out runs/step_S.json
    python benchmarks/optimizer_step.py --quick --out /tmp/step.json
    python benchmarks/optimizer_step.py --size S --profile modnorm.muadam
    python benchmarks/optimizer_step.py --size S --only modnorm.soap,po.SOAP+AdamW
    python benchmarks/optimizer_step.py --size M --only "torch.AdamW(foreach),torch.Muon+AdamW,modnorm.muon,modnorm.muon(batched)"
    python benchmarks/optimizer_step.py --profile resnet:modnorm.muon --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import modnorm  # noqa: E402
from modnorm import Geometry, RowNorm  # noqa: E402
from modnorm.norms import ColNorm, SpectralConv  # noqa: E402
from modnorm.polar_dtype import cpu_report  # noqa: E402

try:
    import pytorch_optimizer as po
except ImportError:  # the peers are optional
    po = None

# (width, layers, vocab): S = 8.9M, M = 41.9M, L = 135M parameters.
SIZES: dict[str, tuple[int, int, int]] = {"quick": (64, 2, 256), "S": (256, 6, 8192), "M": (512, 8, 16384), "L": (768, 12, 32768)}
NO_REFRESH = 10**9  # Shampoo's refresh interval when timing the steps between refreshes
FAST_STEP_S = 0.05  # entries whose median step is shorter get ``--fast-repeats`` more interleaved rounds

# (measure, modnorm entry, peer entry, target ratio)
RATIOS: list[tuple[str, str, str, float]] = [
    ("adamw / torch AdamW(fused)", "modnorm.adamw", "torch.AdamW(fused)", 1.1),
    ("adamw / torch AdamW(foreach)", "modnorm.adamw", "torch.AdamW(foreach)", 1.0),
    ("sgd / torch SGD", "modnorm.sgd", "torch.SGD", 1.05),
    ("muon / torch Muon(hidden) + AdamW(rest)", "modnorm.muon", "torch.Muon+AdamW", 1.0),
    ("muon(ns float32) / torch Muon(hidden) + AdamW(rest)", "modnorm.muon(ns float32)", "torch.Muon+AdamW", 1.0),
    ("muon(ns_products batched) / torch Muon(hidden) + AdamW(rest)", "modnorm.muon(batched)", "torch.Muon+AdamW", 1.0),
    ("muadam / po.AdaMuon", "modnorm.muadam", "po.AdaMuon", 1.1),
    ("muadam(ns float32) / po.AdaMuon", "modnorm.muadam(ns float32)", "po.AdaMuon", 1.1),
    ("soap / po.SOAP", "modnorm.soap", "po.SOAP+AdamW", 1.0),
    ("shampoo / po.Shampoo (steps without refresh)", "modnorm.shampoo", "po.Shampoo+AdamW", 1.0),
]
MEMORY = ["modnorm.soap", "po.SOAP+AdamW", "modnorm.shampoo", "po.Shampoo+AdamW", "modnorm.muadam", "po.AdaMuon",
          "modnorm.muon", "torch.Muon+AdamW", "modnorm.adamw", "torch.AdamW(foreach)"]
RESNET = ["torch.AdamW(foreach)", "modnorm.muon", "modnorm.scion", "modnorm.muadam", "modnorm.muadam(ns float32)", "modnorm.muon(batched)",
          "modnorm.muon(conv flatten)"]


def gpt_shapes(width: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, int], str]]:
    """(name, shape, role) of a GPT-like model's weights."""
    d = width
    out = [("embed", (vocab, d), "embedding")]
    for i in range(layers):
        out += [(f"h{i}.attn.{n}", (d, d), "hidden") for n in ("q", "k", "v", "o")]
        out += [(f"h{i}.mlp.up", (4 * d, d), "hidden"), (f"h{i}.mlp.down", (d, 4 * d), "hidden")]
    out.append(("head", (vocab, d), "head"))
    return out


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


def resnet18(width: int = 64, classes: int = 1000) -> nn.Module:
    """ResNet-18 (He et al. 2016): 7×7 stem, four stages of two basic blocks, linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, c in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [_Block(cin, c, 1 if i == 0 else 2), _Block(c, c, 1)]
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def _with_grads(params: list[tuple[str, torch.Tensor]], seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2


def gpt_params(shapes: list, dtype: torch.dtype) -> list[tuple[str, nn.Parameter]]:
    g = torch.Generator().manual_seed(0)
    params = [(n, nn.Parameter(torch.randn(s, generator=g, dtype=dtype) / s[1] ** 0.5)) for n, s, _ in shapes]
    _with_grads(params)
    return params


def _tensors(value: Any) -> list[torch.Tensor]:
    """Tensors in a state value, also inside lists/tuples (pytorch-optimizer's SOAP keeps its bases in lists)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def state_bytes(opts: list[torch.optim.Optimizer]) -> int:
    return sum(t.numel() * t.element_size() for o in opts for st in o.state.values() for v in st.values() for t in _tensors(v))


def peak_step_bytes(step: Callable[[], None]) -> int:
    """Peak of the bytes one ``step()`` allocates on the CPU beyond what existed before it (freed
    bytes count back). The profiler sees only the frees of blocks it saw allocated, so a first
    ``step()`` runs under it too: the state that step makes, replaced by the measured one, is then
    seen freed. The measured step is the second, from the bytes live when it starts."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function("peak_step_bytes: measured step"):
            step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    mark = next(e for e in events if e.get("name") == "peak_step_bytes: measured step" and e.get("ph") == "X")
    start, end = mark["ts"], mark["ts"] + mark["dur"]
    live, base, peak = 0, None, 0
    for e in sorted((e for e in events if e.get("name") == "[memory]" and e["ts"] <= end), key=lambda e: e["ts"]):
        if base is None and e["ts"] >= start:
            base = peak = live  # the bytes live when the measured step starts
        live += e["args"]["Bytes"]
        peak = max(peak, live)
    return 0 if base is None else peak - base


class Entry:
    """One contender: its own copy of the parameters and the optimizers stepped together."""

    def __init__(self, name: str, build: Callable[[list], list[torch.optim.Optimizer]], params: list[tuple[str, nn.Parameter]]) -> None:
        self.name, self.params, self.times = name, params, []
        self.opts = build(params)

    def step(self) -> None:
        for opt in self.opts:
            opt.step()


def _split(params: list, hidden: set[str]) -> tuple[list, list]:
    return [p for n, p in params if n in hidden], [p for n, p in params if n not in hidden]


def gpt_geometries(shapes: list) -> dict[str, Geometry]:
    """The embedding's and the head's geometries (the hidden matrices' is inferred from their rank)."""
    geometries = {n: Geometry(ColNorm(layout="embedding"), role="embedding") for n, _, r in shapes if r == "embedding"}
    geometries.update({n: Geometry(RowNorm(), role="head") for n, _, r in shapes if r == "head"})
    return geometries


def gpt_step_parser(doc: str) -> argparse.ArgumentParser:
    """The options every interleaved step benchmark on the GPT-like set takes: its size
    (width, layers, vocab), warm-up and repeats, and ``--quick``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="width 64, 5 repeats")
    return ap


def gpt_step_arguments(doc: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Options of step_check and state_dtype_step: ``gpt_step_parser``'s and ``--out``;
    ``--quick``: width 64, 5 repeats, 1 warm-up."""
    ap = gpt_step_parser(doc)
    ap.add_argument("--out", type=str, default=None, help="JSON file or directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.width, args.repeats, args.warmup = 64, 5, 1
    return args


def write_result(out: str | None, name: str, result: dict) -> None:
    """``result`` as JSON at ``out`` (a file, or a directory that gets ``name``.json); nothing without ``out``."""
    if out:
        path = Path(out)
        if path.is_dir() or not path.suffix:
            path.mkdir(parents=True, exist_ok=True)
            path = path / f"{name}.json"
        path.write_text(json.dumps(result, indent=1))


def gpt_builders(shapes: list) -> dict[str, Callable]:
    hidden = {n for n, _, r in shapes if r == "hidden"}
    geometries = gpt_geometries(shapes)

    def mn(preset: str, **hp: Any) -> Callable:
        return lambda ps: [modnorm.ModnormOptimizer(ps, preset, geometries=geometries, **hp)]

    def with_adamw(make: Callable) -> Callable:  # a peer on the hidden matrices, torch AdamW on the rest
        return lambda ps: [make(_split(ps, hidden)[0]), torch.optim.AdamW(_split(ps, hidden)[1], lr=1e-3, foreach=True)]

    out: dict[str, Callable] = {
        "torch.AdamW(fused)": lambda ps: [torch.optim.AdamW([p for _, p in ps], lr=1e-3, fused=True)],
        "torch.AdamW(foreach)": lambda ps: [torch.optim.AdamW([p for _, p in ps], lr=1e-3, foreach=True)],
        "torch.SGD": lambda ps: [torch.optim.SGD([p for _, p in ps], lr=1e-3, momentum=0.9, foreach=True)],
        "torch.Muon+AdamW": with_adamw(lambda h: torch.optim.Muon(h, lr=0.02)),
        "modnorm.adamw": mn("adamw"),
        "modnorm.sgd": mn("sgd", momentum=0.9),
        "modnorm.muon": mn("muon"),
        "modnorm.muon(ns float32)": mn("muon", ns_dtype="float32"),
        "modnorm.muon(batched)": mn("muon", ns_products="batched"),
        "modnorm.muadam": mn("muadam"),
        "modnorm.muadam(ns float32)": mn("muadam", ns_dtype="float32"),
        "modnorm.muadam(5 ns steps)": mn("muadam", ns_steps=5),  # po.AdaMuon's count of Newton–Schulz steps
        "modnorm.soap": mn("soap", precondition_frequency=10),
        "modnorm.shampoo": mn("shampoo", precondition_frequency=NO_REFRESH),
    }
    if po is not None:
        out["po.AdaMuon"] = lambda ps: [po.AdaMuon([{"params": _split(ps, hidden)[0], "use_muon": True},
                                                    {"params": _split(ps, hidden)[1], "use_muon": False}])]
        out["po.SOAP+AdamW"] = with_adamw(lambda h: po.SOAP(h, precondition_frequency=10))
        out["po.Shampoo+AdamW"] = with_adamw(lambda h: po.Shampoo(h, preconditioning_compute_steps=NO_REFRESH))
    return out


def resnet_builders() -> dict[str, Callable]:
    def mn(preset: str, **hp: Any) -> Callable:
        return lambda model: [modnorm.optimizer(model, preset, **hp)]

    def flatten(model: nn.Module) -> list[torch.optim.Optimizer]:  # the (d_out, d_in·k²) norm, declared per conv
        flat = {n: Geometry(SpectralConv(layout="flatten"), role="conv") for n, p in model.named_parameters() if p.ndim == 4}
        return [modnorm.ModnormOptimizer(list(model.named_parameters()), "muon", geometries={**modnorm.geometries(model), **flat})]

    return {
        "torch.AdamW(foreach)": lambda model: [torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)],
        "modnorm.muon": mn("muon"),
        "modnorm.scion": mn("scion"),
        "modnorm.muadam": mn("muadam"),
        "modnorm.muadam(ns float32)": mn("muadam", ns_dtype="float32"),
        "modnorm.muadam(5 ns steps)": mn("muadam", ns_steps=5),  # po.AdaMuon's count of Newton–Schulz steps
        "modnorm.muon(batched)": mn("muon", ns_products="batched"),
        "modnorm.muon(conv flatten)": flatten,
    }


def time_interleaved(entries: list[Entry], warmup: int, repeats: int) -> dict[str, float]:
    """Median step seconds per entry, entries stepped in a rotating order each round."""
    for e in entries:
        for _ in range(warmup):
            e.step()
    for r in range(repeats):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            t0 = time.perf_counter()
            e.step()
            e.times.append(time.perf_counter() - t0)
    return {e.name: statistics.median(e.times) for e in entries}


def import_ratio(repeats: int) -> dict[str, float]:
    """``benchmarks/import_time.py``'s measurement: median seconds inside ``import X`` (fresh interpreters, alternating)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from import_time import measure

    return measure(repeats)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    shapes = gpt_shapes(*SIZES[args.size])
    param_bytes = sum(a * b for _, (a, b), _ in shapes) * torch.finfo(dtype).bits // 8
    only = set(args.only.split(",")) if args.only else None
    builders, resnet = gpt_builders(shapes), resnet_builders()
    if only is not None and only - set(builders) - set(resnet):
        raise SystemExit(f"--only: unknown entries {sorted(only - set(builders) - set(resnet))}; choose from {sorted({*builders, *resnet})}")
    entries = [Entry(name, build, gpt_params(shapes, dtype)) for name, build in builders.items() if only is None or name in only]
    med = time_interleaved(entries, args.warmup, args.repeats)
    fast = [e for e in entries if med[e.name] < FAST_STEP_S]
    if args.fast_repeats and len(fast) > 1:  # steps of ~10 ms move with every load blip: more rounds, among themselves
        time_interleaved(fast, 0, args.fast_repeats)
        med.update({e.name: statistics.median(e.times) for e in fast})
    by = {e.name: e for e in entries}
    table = [{"optimizer": e.name, "median_ms": 1e3 * med[e.name], "mean_ms": 1e3 * statistics.fmean(e.times),
              "state_x_params": state_bytes(e.opts) / param_bytes} for e in entries]
    rows = [{"measure": m, "value": med[a] / med[b], "target": f"≤ {t}"} for m, a, b, t in RATIOS if a in med and b in med]
    for name in MEMORY:
        if name in by:
            peak = peak_step_bytes(by[name].step) / param_bytes
            next(r for r in table if r["optimizer"] == name)["peak_step_x_params"] = peak
            rows.append({"measure": f"peak step memory beyond state, × parameter bytes: {name}", "value": peak, "target": ""})
    width, classes = (8, 10) if args.size == "quick" else (64, 1000)
    res = []
    chosen = RESNET if only is None else [n for n in RESNET if n in only]
    if chosen and chosen[0] != RESNET[0]:  # the ResNet rows are ratios to torch AdamW's step
        chosen.insert(0, RESNET[0])
    for name in chosen:
        build = resnet[name]
        torch.manual_seed(0)
        model = resnet18(width, classes).to(dtype)
        _with_grads(list(model.named_parameters()))
        res.append(Entry(name, lambda ps, build=build, model=model: build(model), []))
    rmed = time_interleaved(res, args.warmup, args.repeats) if res else {}
    for e in res[1:]:
        rows.append({"measure": f"ResNet-18 step / torch AdamW step: {e.name}", "value": rmed[e.name] / rmed[res[0].name],
                     "target": "≤ 3" if e.name == "modnorm.muon" else ("≤ 4" if e.name == "modnorm.muadam" else "")})
    imp = import_ratio(args.import_repeats) if args.import_repeats and only is None else None
    if imp:
        rows.append({"measure": "import modnorm / import torch", "value": imp["ratio"], "target": "≤ 1.2"})
    n_params = sum(a * b for _, (a, b), _ in shapes)
    return {
        "config": {**vars(args), "n_params": n_params, "torch": torch.__version__, "cpu": cpu_name(),
                   "threads": torch.get_num_threads(), "ns_auto": cpu_report(), "po": po is not None,
                   "resnet18_params": sum(p.numel() for p in resnet18(width, classes).parameters())},
        "rows": rows,
        "entries": table,
        "resnet_ms": {k: 1e3 * v for k, v in rmed.items()},
        "ns_products": {f"{kind} {e.name}": o.ns_products_auto for kind, es in (("gpt", entries), ("resnet", res)) for e in es
                        for o in e.opts if hasattr(o, "ns_products_auto")},
        "import": imp,
    }


def format_tables(result: dict) -> str:
    c = result["config"]
    head = (f"{c['cpu']}, torch {c['torch']}, {c['threads']} thread(s), {c['dtype']}, size {c['size']} "
            f"({c['n_params'] / 1e6:.1f}M parameters), median of {c['repeats']} interleaved steps"
            + (f" (+{c['fast_repeats']} among those under {FAST_STEP_S * 1e3:.0f} ms)" if c.get("fast_repeats") else "")
            + "; ns_dtype='auto' per size class "
            + ", ".join(f"{k}: {v} ({c['ns_auto']['bf16_speedup'][k]:.2f}×)" for k, v in c["ns_auto"]["choice"].items()))
    lines = [head, "", "| measure | value | target |", "|---|---:|---|"]
    lines += [f"| {r['measure']} | {r['value']:.2f} | {r['target']} |" for r in result["rows"]]
    lines += ["", "| optimizer | median ms | mean ms | state × params | peak step × params |", "|---|---:|---:|---:|---:|"]
    for r in result["entries"]:
        peak = f"{r['peak_step_x_params']:.2f}" if "peak_step_x_params" in r else ""
        lines.append(f"| {r['optimizer']} | {r['median_ms']:.2f} | {r['mean_ms']:.2f} | {r['state_x_params']:.2f} | {peak} |")
    lines += ["", "| ResNet-18 | median ms |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in result["resnet_ms"].items()]
    return "\n".join(lines)


def profile(args: argparse.Namespace, name: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    if name.startswith("resnet:"):  # a ResNet-18 contender
        model = resnet18().to(getattr(torch, args.dtype))
        _with_grads(list(model.named_parameters()))
        e = Entry(name, lambda ps: resnet_builders()[name.removeprefix("resnet:")](model), [])
    else:
        shapes = gpt_shapes(*SIZES[args.size])
        e = Entry(name, gpt_builders(shapes)[name], gpt_params(shapes, getattr(torch, args.dtype)))
    for _ in range(args.warmup):
        e.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeats):
            e.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="S", choices=sorted(SIZES), help="S 8.9M, M 41.9M, L 135M parameters")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--import-repeats", type=int, default=5, help="fresh-interpreter imports per module (0: skip)")
    ap.add_argument("--fast-repeats", type=int, default=50, help="more interleaved rounds among the entries whose step takes "
                    "under 50 ms (adamw, sgd and their peers); their medians are over all their rounds (0: none)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="size 'quick' (width 64), 3 repeats: seconds (plus the imports unless --import-repeats 0)")
    ap.add_argument("--only", metavar="NAMES", help="comma-separated entries to time (e.g. modnorm.soap,po.SOAP+AdamW); "
                    "ResNet-18 rows only for ResNet entries named (with torch AdamW, their baseline); no import row")
    ap.add_argument("--profile", metavar="NAME", help="print torch.profiler's top ops for this entry instead (resnet:NAME for a ResNet-18 one)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--table-from", metavar="JSON", help="print the tables of an earlier --out file and exit")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.repeats, args.warmup, args.fast_repeats = "quick", 3, 1, 3
    if args.table_from:
        print(format_tables(json.loads(Path(args.table_from).read_text())))
        return None
    if args.profile:
        profile(args, args.profile)
        return None
    result = run(args)
    print(format_tables(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
