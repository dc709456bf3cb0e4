"""Learning-rate transfer across depth and width on a transformers GPT-2 and a ResNet-like CNN.

GPT-2 (``transformers.GPT2LMHeadModel`` from a config, random init, no dropout; its
``Conv1D`` layers replaced by the equivalent ``nn.Linear``, transposed weight, so that only
the composition is under test) learns a synthetic next-token task: sequences of a fixed
random Markov chain over 64 tokens (each token has 4 likely successors), 32 tokens, batch
16. The CNN (3×3 conv stem, BatchNorm, ``blocks`` basic residual blocks, pooling, linear
head) classifies scikit-learn's 8×8 digits, batch 64. Depth goes 2 → 8 (transformer
layers / residual blocks) at the base width, width ×4 at depth 2 (GPT-2 64 → 256, CNN
16 → 64 channels). Each (model, size, optimizer) runs a ×2 lr grid with a cosine schedule;
the score is the held-out loss after training; the result is where the best lr moves
(in grid steps). The step time of each optimizer relative to torch's AdamW is measured
side by side on the largest configurations. ``--budgets`` picks one lr for every layer
(``false``, the library default), the captured modular budgets (``true``) or both.
``--methods`` adds the width-aware options: ``muon_head`` (muon with ``adamw_head_width`` = the
base width: the head's, here the tied token table's, AdamW lr ∝ 1/width) and
``muadam_norm_head`` (muadam with ``normalize=True``, D / RMS(D), and the same head lr);
``muon_out`` and ``muadam_norm_out`` (µP's output multiplier: the head wrapped in
``modnorm.Scale(base width / width)``, every routed lr width-independent; muadam normalized).
``--models`` and ``--sizes`` restrict the run; ``--seeds N`` scores each lr by the mean
held-out loss over N seeds (task, init and batches drawn from each).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

import common
from modnorm.demo import load_digits_split
from modnorm.detect import conv1d_as_linear

BASE_WIDTH = "base width"  # stands for the family's base width (GPT-2 64, CNN 16; quick: 32, 4)
METHODS: dict[str, tuple[str, dict[str, Any], float]] = {  # name → (preset, fixed hyperparameters, lr grid centre)
    "muon": ("muon", {"weight_decay": 0.0}, 0.2),
    "muadam": ("muadam", {"weight_decay": 0.0}, 0.08),
    # the width-aware options: the head's (and a tied table's) AdamW lr ∝ base width / fan_in; MuAdam's D / RMS(D)
    "muon_head": ("muon", {"weight_decay": 0.0, "adamw_head_width": BASE_WIDTH}, 0.2),
    "muadam_norm_head": ("muadam", {"weight_decay": 0.0, "normalize": True, "adamw_head_width": BASE_WIDTH}, 0.2),
    # µP's output multiplier instead: the head's output × base width / width (the model's change, OUTPUT_MULTIPLIER)
    "muon_out": ("muon", {"weight_decay": 0.0}, 0.2),
    "muadam_norm_out": ("muadam", {"weight_decay": 0.0, "normalize": True}, 0.2),
}
OUTPUT_MULTIPLIER = ("muon_out", "muadam_norm_out")
DEFAULT_METHODS = ("muon", "muadam")
VOCAB, SEQ = 64, 32
SIZES = ("base", "deeper", "wider")  # depth d0 width w0; d1, w0; d0, w1


def gpt2(layers: int, width: int) -> nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=max(1, width // 32), vocab_size=VOCAB, n_positions=SEQ,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return conv1d_as_linear(transformers.GPT2LMHeadModel(cfg))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.na, self.nb = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.nb(self.b(torch.relu(self.na(self.a(x))))))


def cnn(blocks: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         *[Block(width) for _ in range(blocks)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def markov(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((VOCAB, VOCAB), -4.0)
    for t in range(VOCAB):
        logits[t, torch.randperm(VOCAB, generator=g)[:4]] = torch.randn(4, generator=g) + 2.0
    return logits.softmax(-1)


def sample(P: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    x = torch.empty(n, SEQ, dtype=torch.long)
    x[:, 0] = torch.randint(0, VOCAB, (n,), generator=g)
    for t in range(1, SEQ):
        x[:, t] = torch.multinomial(P[x[:, t - 1]], 1, generator=g).squeeze(1)
    return x


class Task:
    """Batches and the held-out loss of one model family."""

    def __init__(self, kind: str, seed: int, base_width: int) -> None:
        self.kind, self.base_width = kind, base_width
        if kind == "gpt2":
            P, g = markov(seed), torch.Generator().manual_seed(seed + 1)
            self.train, self.test = sample(P, 4096, g), sample(P, 256, g)
        else:
            Xtr, ytr, Xte, yte = load_digits_split(seed)
            self.train, self.test = (Xtr.view(-1, 1, 8, 8), ytr), (Xte.view(-1, 1, 8, 8), yte)

    def model(self, depth: int, width: int, output_multiplier: bool = False) -> nn.Module:
        """The model; ``output_multiplier``: its head wrapped in ``modnorm.Scale(base width / width)``."""
        model = gpt2(depth, width) if self.kind == "gpt2" else cnn(depth, width)
        if output_multiplier:
            from modnorm import Scale

            if self.kind == "gpt2":  # the tied table keeps its input scale: only the logits are multiplied
                model.lm_head = Scale(self.base_width / width, model.lm_head)
            else:
                model[-1] = Scale(self.base_width / width, model[-1])
        return model

    def example(self) -> Any:
        return {"input_ids": self.test[:2]} if self.kind == "gpt2" else self.test[0][:2]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.kind == "gpt2":
            return model(input_ids=batch, labels=batch).loss
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    def batch(self, step: int, seed: int) -> Any:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        if self.kind == "gpt2":
            return self.train[torch.randint(0, len(self.train), (16,), generator=g)]
        idx = torch.randint(0, len(self.train[1]), (64,), generator=g)
        return self.train[0][idx], self.train[1][idx]


def make(method: str, model: nn.Module, task: Task, lr: float, budgets: bool = False) -> torch.optim.Optimizer:
    if method == "torch:adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr)
    import modnorm

    preset, fixed, _ = METHODS[method]
    hp = {k: task.base_width if v == BASE_WIDTH else v for k, v in fixed.items()}
    return modnorm.optimizer(model, preset, lr=lr, example_inputs=task.example(), budgets=budgets, **hp)


def run(task: Task, method: str, lr: float, depth: int, width: int, steps: int, seed: int, budgets: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = task.model(depth, width, method in OUTPUT_MULTIPLIER)
    opt = make(method, model, task, lr, budgets)
    base = [g["lr"] for g in opt.param_groups]
    for s in range(steps):
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * common.cosine_factor(s, steps)
        loss = task.loss(model, task.batch(s, seed))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not math.isfinite(float(loss.detach())):
            return {"final": float("inf")}
    model.eval()
    with torch.no_grad():
        final = float(task.loss(model, task.test))
    return {"final": final if math.isfinite(final) else float("inf")}


def step_times(task: Task, depth: int, width: int, repeats: int, budgets: bool, methods: list[str]) -> dict[str, float]:
    """Seconds per optimizer step (forward and backward excluded), the optimizers interleaved."""
    torch.manual_seed(0)
    models = {m: task.model(depth, width, m in OUTPUT_MULTIPLIER) for m in ("torch:adamw", *methods)}
    opts = {m: make(m, models[m], task, 1e-3, budgets) for m in models}
    times = {m: [] for m in models}
    for r in range(repeats + 2):
        for m, model in models.items():
            opts[m].zero_grad()
            task.loss(model, task.batch(r, 0)).backward()
            t = time.perf_counter()
            opts[m].step()
            if r >= 2:  # the first steps build state
                times[m].append(time.perf_counter() - t)
    return {m: sorted(v)[len(v) // 2] for m, v in times.items()}


def shift(best: dict[str, Any], labels: list[str], k: int) -> int | str:
    """log₂ of configuration k's best lr over the base configuration's (grid steps); "—" if either was not run."""
    if labels[0] not in best or labels[k] not in best:
        return "—"
    return round(math.log2(best[labels[k]]["best_lr"] / best[labels[0]]["best_lr"]))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 40; 2 with --quick)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS),
                   help="presets to run (default: muon muadam; muon_head, muadam_norm_head: with the width-aware options; "
                        "muon_out, muadam_norm_out: with the output multiplier)")
    p.add_argument("--budgets", choices=("false", "true", "both"), default="false",
                   help="false: one lr for every layer (the library default); true: the modular budgets; both: one row each")
    p.add_argument("--below", type=int, default=None, help="×2 grid steps below the lr centre (default 2; 1 with --quick)")
    p.add_argument("--models", nargs="+", default=["gpt2", "cnn"], choices=["gpt2", "cnn"], help="model families (default: both)")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="configurations (default: all three)")
    p.add_argument("--seeds", type=int, default=1, help="score = mean held-out loss over this many seeds from --seed (default 1)")
    p.add_argument("--no-timing", action="store_true", help="skip the optimizer step times")
    args = p.parse_args()
    if args.below is not None and args.below < 0:
        p.error(f"--below must be >= 0, got {args.below}")
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    settings = {"false": [False], "true": [True], "both": [False, True]}[args.budgets]
    out = common.setup(args)
    started = time.perf_counter()
    quick = args.quick
    sizes = {"gpt2": {"depth": (2, 8), "width": (64, 256)}, "cnn": {"depth": (2, 8), "width": (16, 64)}}
    if quick:
        sizes = {"gpt2": {"depth": (1, 2), "width": (32, 64)}, "cnn": {"depth": (1, 2), "width": (4, 8)}}  # seconds
    sizes = {k: v for k, v in sizes.items() if k in args.models}
    below, above = (1, 1) if quick else (2, 2)
    below = below if args.below is None else args.below
    seeds = [args.seed + k for k in range(args.seeds)]
    results: dict[str, Any] = {}
    rows, panels = [], {}
    for kind, dims in sizes.items():
        tasks = [Task(kind, seed, dims["width"][0]) for seed in seeds]
        steps = args.steps or (2 if quick else 40)
        d0, d1 = dims["depth"]
        w0, w1 = dims["width"]
        configs = dict(zip(SIZES, ((d0, w0), (d1, w0), (d0, w1))))
        labels = [f"L={d} w={w}" for d, w in configs.values()]
        results[kind] = {}
        for method in args.methods:
            centre = METHODS[method][2]
            lrs = common.lr_grid(centre, below, above)
            results[kind][method] = {}
            for budgets in settings:
                name = f"{method} budgets={str(budgets).lower()}"
                best = {}
                panels[f"{kind} {name}"] = {}
                for size, label in zip(SIZES, labels):
                    if size not in args.sizes:
                        continue
                    depth, width = configs[size]

                    def score(lr: float) -> dict[str, float]:
                        finals = [run(task, method, lr, depth, width, steps, seed, budgets)["final"] for task, seed in zip(tasks, seeds)]
                        return {"final": sum(finals) / len(finals), "per_seed": finals}

                    best_lr, _, scores = common.tune(score, lrs)
                    best[label] = {"best_lr": best_lr, "loss": scores[best_lr], "grid": scores, "at_grid_edge": best_lr in (lrs[0], lrs[-1])}
                    panels[f"{kind} {name}"][label] = (lrs, [min(v, 10.0) for v in scores.values()])
                    print(f"{kind:<5} {name:<21} {label:<10} best lr {best_lr:.3g} loss {scores[best_lr]:.4f} | "
                          + " ".join(f"{v:.3f}" for v in scores.values()), flush=True)
                depth_shift, width_shift = shift(best, labels, 1), shift(best, labels, 2)
                results[kind][method][f"budgets={str(budgets).lower()}"] = {
                    "per_config": best, "depth_shift": depth_shift, "width_shift": width_shift, "lr_grid": lrs}
                rows.append([kind, method, str(budgets).lower()]
                            + [f"{best[lb]['best_lr']:.3g}" + ("*" if best[lb]["at_grid_edge"] else "") if lb in best else "—" for lb in labels]
                            + [depth_shift, width_shift]
                            + [", ".join(f"{best[lb]['loss']:.3f}" if lb in best else "—" for lb in labels)])
        results[kind]["step_time_vs_adamw"] = {}
        for budgets in settings if not args.no_timing else ():
            for depth, width in ((d1, w0), (d0, w1)):
                timing = step_times(tasks[0], depth, width, 1 if quick else 10, budgets, args.methods)
                results[kind]["step_time_vs_adamw"][f"L={depth} w={width} budgets={str(budgets).lower()}"] = {
                    m: timing[m] / timing["torch:adamw"] for m in args.methods}
        results[kind]["configs"] = labels
    table = common.markdown_table(["model", "optimizer", "budgets", "best lr: base", "deeper", "wider", "depth shift", "width shift",
                                   "held-out loss at the best lr (base, deeper, wider)"], rows)
    table += ("\n\nBest lr per configuration (* = at the grid edge); shift = log₂ of the best lr's ratio to the base "
              "configuration's, in ×2 grid steps. Base, deeper, wider: " + "; ".join(
                  f"{k}: {', '.join(results[k]['configs'])}" for k in sizes))
    trows = [[k, cfg, *(f"{v[m]:.2f}×" for m in args.methods)] for k in sizes for cfg, v in results[k]["step_time_vs_adamw"].items()]
    if trows:
        table += "\n\n" + common.markdown_table(["model", "configuration", *(f"{m} step / AdamW step" for m in args.methods)], trows)
    common.plot_curves(out / "lr_transfer_arch.png", panels, xlabel="learning rate", ylabel="held-out loss (capped at 10)", logx=True)
    meta = {"sizes": sizes, "configurations": args.sizes, "lr_grid": "centre × 2^k, k = -%d..%d" % (below, above), "seeds": seeds,
            "budgets": args.budgets}
    common.finish(out, "lr_transfer_arch", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
