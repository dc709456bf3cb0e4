"""Fair learning-rate tuning of several optimizers on any benchmark script.

Protocol, the same for every method:

1. **lr grid**: ``--grid`` values ``lr₀ · factor^k`` (k centred on 0) around the method's
   default ``lr₀``; short runs of ``--pick-iters`` iterations (the script's schedule
   compressed to that length), seed ``--pick-seed``. For a method with an AdamW route
   (embedding, head), the route's own lr is held at its default meanwhile — for a
   ``*_ratio`` key (relative to ``lr``) the ratio is rescaled by ``lr₀/lr`` so that only the
   hidden-matrix lr moves. While the best lr sits at an edge of the grid, up to
   ``--extend-edges`` more points are added beyond it (the same rule for every method).
2. **route grid** (methods with a route key only): ``--route-grid`` values of the route's
   lr, ``default · factor^k``, at the best lr of step 1 (the centre reuses step 1's run).
3. **full runs**: the best setting for ``--full-iters`` iterations and every seed in
   ``--seeds``; mean and spread are reported.
4. **timing** (``--timing N``): every method at its best setting, ``N`` iterations
   interleaved round-robin in one process (the script's ``--timing``), so the ms / iter
   ratios are measured under the same load; loss-vs-time curves use these medians.

A benchmark script is usable when it accepts ``--timing N`` (when step 4 is asked for), ``--methods M``, ``--lr M=V``, ``--set M.KEY=V``
(VALUE as JSON), ``--iters N``, ``--seed S``, ``--out DIR`` (plus its own options, passed
after ``--``), has a ``METHODS`` dict of default hyperparameters, and writes
``DIR/<script name>.json`` with ``results[M][metric]``; ``benchmarks/char_gpt.py`` does.
Runs happen in this process, one after another.

    python benchmarks/lr_sweep.py --script benchmarks/char_gpt.py --methods torch:muon,muon \\
        --grid 4 --route-grid 3 --pick-iters 500 --full-iters 2000 --seeds 0,1 --out runs/sweep \\
        -- --data tinyshakespeare.txt
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import common

ROUTE_KEYS: dict[str, str] = {"torch:muon": "adamw_lr"}  # modnorm presets with a route: "adamw_lr_ratio"


def load_script(path: str) -> ModuleType:
    """Import a benchmark script by path; it must define ``METHODS`` and ``main()``."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"lr_sweep: --script {path!r} is not a file; pass a benchmark script such as benchmarks/char_gpt.py")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "METHODS", None), dict) or not callable(getattr(module, "main", None)):
        raise SystemExit(f"lr_sweep: {path} needs a METHODS dict and a main() function")
    return module


def route_key(method: str, defaults: dict[str, Any]) -> str | None:
    """The hyperparameter holding the AdamW route's lr, or None when the method has none."""
    if method in ROUTE_KEYS:
        return ROUTE_KEYS[method] if ROUTE_KEYS[method] in defaults else None
    return "adamw_lr_ratio" if "adamw_lr_ratio" in defaults else None


def centred(center: float, n: int, factor: float) -> list[float]:
    """``n`` values ``center · factor^k``, k = −⌊(n−1)/2⌋ … ⌈(n−1)/2⌉ (centre included)."""
    below = (n - 1) // 2
    return common.lr_grid(center, below, n - 1 - below, factor)


def setting_args(settings: dict[str, dict[str, float]]) -> list[str]:
    """``--lr M=V`` / ``--set M.KEY=V`` arguments for {method: {key: value}}."""
    argv: list[str] = []
    for m, values in settings.items():
        for k, v in values.items():
            argv += ["--lr", f"{m}={v!r}"] if k == "lr" else ["--set", f"{m}.{k}={v!r}"]
    return argv


def call(script: ModuleType, argv: list[str], folder: Path, extra: list[str]) -> dict[str, Any]:
    """Run ``script.main()`` in this process with ``argv`` (+ ``--out folder`` and ``extra``); its JSON."""
    saved = sys.argv
    sys.argv = [str(script.__file__), *argv, "--out", str(folder), *extra]
    try:
        script.main()
    finally:
        sys.argv = saved
    return json.loads((folder / f"{Path(str(script.__file__)).stem}.json").read_text())


class Runner:
    """Runs the script for one method and setting; caches by (method, settings, iters, seed)."""

    def __init__(self, script: ModuleType, out: Path, extra: list[str], metric: str, resume: bool = False) -> None:
        self.script, self.out, self.extra, self.metric = script, out, extra, metric
        self.cache: dict[str, dict[str, Any]] = {}
        self.finished: dict[tuple[str, ...], dict[str, Any]] = {}  # --resume: earlier runs by their arguments
        folders = sorted((out / "runs").glob("[0-9][0-9][0-9]")) if resume else []
        for folder in folders:
            file = folder / f"{Path(str(script.__file__)).stem}.json"
            if file.is_file():
                data = json.loads(file.read_text())
                self.finished[self.arguments(data.get("command", "").split()[2:])] = data
        self.next_folder = int(folders[-1].name) + 1 if folders else 0

    @staticmethod
    def arguments(argv: list[str]) -> tuple[str, ...]:
        """A run's arguments without its ``--out FOLDER``."""
        i = argv.index("--out") if "--out" in argv else len(argv)
        return tuple(argv[:i] + argv[i + 2 :])

    def __call__(self, method: str, settings: dict[str, float], iters: int, seed: int) -> dict[str, Any]:
        key = json.dumps([method, sorted(settings.items()), iters, seed])
        if key not in self.cache:
            argv = ["--methods", method, "--iters", str(iters), "--seed", str(seed), *setting_args({method: settings})]
            data = self.finished.get(tuple([*argv, *self.extra]))
            if data is None:
                data = call(self.script, argv, self.out / "runs" / f"{self.next_folder:03d}", self.extra)
                self.next_folder += 1
            result = data["results"][method]
            value = float(result[self.metric]) if result[self.metric] is not None else math.nan
            self.cache[key] = {**result, "score": value if math.isfinite(value) else math.inf, "settings": settings, "iters": iters, "seed": seed}
            print(f"lr_sweep: {method} {settings} iters {iters} seed {seed} → {self.metric} {value:.4f}", flush=True)
        return self.cache[key]


def sweep(method: str, defaults: dict[str, Any], run: Runner, args: Any) -> dict[str, Any]:
    """Steps 1–3 of the protocol for one method."""
    lr0 = float(defaults["lr"])
    route = route_key(method, defaults)

    def with_route(lr: float, route_value: float | None) -> dict[str, float]:
        settings = {"lr": lr}
        if route is not None and route_value is not None:
            settings[route] = route_value * lr0 / lr if route.endswith("_ratio") else route_value
        return settings

    r0 = float(defaults[route]) if route else None
    lr_scores = {lr: run(method, with_route(lr, r0), args.pick_iters, args.pick_seed)["score"] for lr in centred(lr0, args.grid, args.factor)}
    for _ in range(args.extend_edges):  # the best at an edge: one more grid point beyond it
        best_lr = min(lr_scores, key=lambda lr: lr_scores[lr])
        if best_lr not in (min(lr_scores), max(lr_scores)):
            break
        beyond = best_lr * args.factor if best_lr == max(lr_scores) else best_lr / args.factor
        lr_scores[beyond] = run(method, with_route(beyond, r0), args.pick_iters, args.pick_seed)["score"]
    best_lr = min(lr_scores, key=lambda lr: lr_scores[lr])
    best = with_route(best_lr, r0)
    route_scores: dict[float, float] = {}
    if route is not None and r0 is not None and args.route_grid > 0:
        for value in centred(r0, args.route_grid, args.factor):
            route_scores[value] = run(method, with_route(best_lr, value), args.pick_iters, args.pick_seed)["score"]
        best = with_route(best_lr, min(route_scores, key=lambda v: route_scores[v]))
    full = [run(method, best, args.full_iters, seed) for seed in args.seeds]
    finals = [r["score"] for r in full]
    return {
        "lr_grid": lr_scores, "lr_at_edge": best_lr in (min(lr_scores), max(lr_scores)),
        "route_key": route, "route_grid": route_scores, "best": best,
        "route_at_edge": bool(route_scores) and min(route_scores, key=lambda v: route_scores[v]) in (min(route_scores), max(route_scores)),
        "full": [{k: r[k] for k in ("seed", "score", "seconds_per_iter", "val_curve", "train_curve", "hyperparameters")} for r in full],
        "mean": statistics.fmean(finals), "spread": (max(finals) - min(finals)) if finals else 0.0,
        "seconds_per_iter": statistics.fmean(r["seconds_per_iter"] for r in full),
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/lr_sweep")
    p.add_argument("--script", default=str(common.ROOT / "benchmarks" / "char_gpt.py"), help="benchmark script (default benchmarks/char_gpt.py)")
    p.add_argument("--methods", default=None, help="comma-separated methods of the script (default: all of its METHODS)")
    p.add_argument("--metric", default="final_val_loss", help="result key to minimize (default final_val_loss)")
    p.add_argument("--grid", type=int, default=4, help="lr grid size per method (default 4)")
    p.add_argument("--route-grid", type=int, default=3, help="route-lr grid size for methods with an AdamW route (default 3; 0: not tuned)")
    p.add_argument("--factor", type=float, default=2.0, help="grid spacing factor (default 2)")
    p.add_argument("--pick-iters", type=int, default=500, help="iterations of the picking runs (default 500)")
    p.add_argument("--full-iters", type=int, default=2000, help="iterations of the reported runs (default 2000)")
    p.add_argument("--seeds", default="0,1", help="seeds of the reported runs (default 0,1)")
    p.add_argument("--pick-seed", type=int, default=0, help="seed of the picking runs (default 0)")
    p.add_argument("--extend-edges", type=int, default=0, help="while the best lr is at an edge of its grid, add up to N more points beyond it (default 0)")
    p.add_argument("--resume", action="store_true", help="reuse the runs an earlier sweep left in --out (same arguments); new runs go to new folders")
    p.add_argument("--from-json", default=None, help="only re-render the table and plot of a finished sweep's lr_sweep.json (into --out)")
    p.add_argument("--timing", type=int, default=0, help="rounds of interleaved timing at the best settings (default 0: use each run's own clock)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.quick:
        args.grid, args.route_grid, args.pick_iters, args.full_iters, args.seeds, args.timing = 2, 2, 3, 4, "0,1", 2
        extra = ["--quick", *extra]
    if args.grid < 1 or args.route_grid < 0 or args.factor <= 1 or args.extend_edges < 0:
        raise SystemExit("lr_sweep: need --grid ≥ 1, --route-grid ≥ 0, --extend-edges ≥ 0 and --factor > 1")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    out = common.setup(args)
    started = time.perf_counter()
    if args.from_json is not None:
        rerender(Path(args.from_json), out, started)
        return
    script = load_script(args.script)
    methods = [m for m in (args.methods or ",".join(script.METHODS)).split(",") if m]
    unknown = [m for m in methods if m not in script.METHODS]
    if unknown:
        raise SystemExit(f"lr_sweep: unknown --methods {unknown}; {args.script} has {list(script.METHODS)}")
    run = Runner(script, out, extra, args.metric, resume=args.resume)
    results = {m: sweep(m, script.METHODS[m], run, args) for m in methods}
    if args.timing > 0:
        for m, ms in timing(script, out, extra, {m: r["best"] for m, r in results.items()}, args.timing).items():
            results[m]["seconds_per_iter"] = ms / 1000
            results[m]["timed_interleaved"] = True
    table = report(results, args.metric, args.full_iters)
    plot(out / "lr_sweep.png", results)
    config = {k: getattr(args, k) for k in ("script", "metric", "grid", "extend_edges", "route_grid", "factor", "pick_iters", "full_iters", "seeds", "pick_seed", "timing")}
    common.finish(out, "lr_sweep", {"config": {**config, "script_args": extra}, "results": results}, table, started, common.command_line())


def equal_time(results: dict[str, Any], reference: str) -> dict[str, tuple[float, bool]]:
    """Each method's seed-mean validation loss after the wall-clock that ``reference`` needs for its
    full run (ms / iter × iterations), read off the method's validation curve by linear
    interpolation; (value, True) when the method finishes its full run sooner (its final value: it
    was not run longer)."""
    ref = results[reference]
    budget = ref["seconds_per_iter"] * ref["full"][0]["val_curve"]["iter"][-1]
    values: dict[str, tuple[float, bool]] = {}
    for m, r in results.items():
        xs = r["full"][0]["val_curve"]["iter"]
        ys = [statistics.fmean(f["val_curve"]["val_loss"][i] for f in r["full"]) for i in range(len(xs))]
        at = budget / r["seconds_per_iter"]
        if at >= xs[-1]:
            values[m] = (ys[-1], at > xs[-1] * (1 + 1e-9))
            continue
        i = next(k for k, x in enumerate(xs) if x >= at)
        x0, y0 = (xs[i - 1], ys[i - 1]) if i > 0 else (0, math.nan)
        values[m] = (y0 + (ys[i] - y0) * (at - x0) / (xs[i] - x0), False)
    return values


def report(results: dict[str, Any], metric: str, full_iters: int) -> str:
    """The sweep's table: best setting, full-run mean and spread, speed, and the loss at equal
    wall-clock (torch Muon+AdamW's time when it was swept, else the fastest method's)."""
    reference = "torch:muon" if "torch:muon" in results else min(results, key=lambda m: results[m]["seconds_per_iter"])
    timed = equal_time(results, reference)
    rows = [[common.PRETTY.get(m, m), r["best"]["lr"], route_lr(r), f"{r['mean']:.4f}", f"{r['spread']:.4f}", len(r["full"]),
             r["seconds_per_iter"] * 1000, f"{timed[m][0]:.4f}" + (" (done sooner)" if timed[m][1] else ""),
             ", ".join(k for k, edge in (("lr", r["lr_at_edge"]), ("route", r.get("route_at_edge", False))) if edge) or "no"] for m, r in results.items()]
    headers = ["optimizer", "lr", "route lr", f"{metric} @ {full_iters} (mean)", "max − min", "seeds", "ms / iter",
               f"{metric} @ {common.PRETTY.get(reference, reference)}'s time", "best at grid edge"]
    return common.markdown_table(headers, rows)


def route_lr(r: dict[str, Any]) -> float | str:
    """The best setting's AdamW-route lr (``lr · ratio`` for a ``*_ratio`` key), "—" without a route."""
    key = r["route_key"]
    if not key:
        return "—"
    value = float(r["best"][key])
    return float(f"{value * r['best']['lr']:.4g}") if key.endswith("_ratio") else value


def rerender(path: Path, out: Path, started: float) -> None:
    """Table and plot of a finished sweep, from its JSON (``--from-json``)."""
    if not path.is_file():
        raise SystemExit(f"lr_sweep: --from-json {str(path)!r} is not a file; pass the lr_sweep.json a sweep wrote")
    data = json.loads(path.read_text())
    results, config = data["results"], data["config"]
    for r in results.values():  # JSON keys of the grids are strings; the edge flags are recomputed from them
        r["route_at_edge"] = bool(r["route_grid"]) and min(r["route_grid"], key=lambda v: r["route_grid"][v]) in (
            min(r["route_grid"], key=float), max(r["route_grid"], key=float))
    table = report(results, config["metric"], config["full_iters"])
    plot(out / "lr_sweep.png", results)
    common.finish(out, "lr_sweep", data, table, started, common.command_line())


def timing(script: ModuleType, out: Path, extra: list[str], best: dict[str, dict[str, float]], rounds: int) -> dict[str, float]:
    """Median ms / iter of every method at its best setting, measured interleaved by the script."""
    data = call(script, ["--methods", ",".join(best), "--timing", str(rounds), *setting_args(best)], out / "timing", extra)
    return {m: float(r["median_ms_per_iter"]) for m, r in data["results"].items()}


def plot(path: Path, results: dict[str, Any]) -> None:
    """Validation curves of the full runs (seed-mean) against iterations and against seconds."""
    steps: dict[str, Any] = {}
    seconds: dict[str, Any] = {}
    for m, r in results.items():
        xs = r["full"][0]["val_curve"]["iter"]
        ys = [statistics.fmean(f["val_curve"]["val_loss"][i] for f in r["full"]) for i in range(len(xs))]
        steps[common.PRETTY.get(m, m)] = (xs, ys)
        seconds[common.PRETTY.get(m, m)] = ([x * r["seconds_per_iter"] for x in xs], ys)
    common.plot_curves(path, {"validation loss vs iterations": steps, "validation loss vs seconds": seconds}, xlabel="iteration / seconds", logy=False)


if __name__ == "__main__":
    main()
