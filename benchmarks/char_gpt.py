"""Character-level GPT on a text file (e.g. tinyshakespeare), nanoGPT's CPU recipe.

Recipe (nanoGPT shakespeare_char on CPU, published val loss ≈ 1.88 after 2000 iters):
4 layers, 4 heads, width 128, context 64, batch 12, lr warmup 100 iters then cosine to
lr/10, β2 = 0.99, weight decay 0.1, gradient clipping 1.0, 2000 iterations, 90/10
train/validation split. The network is ``examples/gpt_modnorm.py`` (modula's GPT:
rotary positions, RMSNorm, residuals scaled 1/L), so numbers are comparable across
optimizers here but the architecture is not nanoGPT's. Every optimizer sees the same
batches; the validation loss is estimated on fixed validation batches.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import common

sys.path.insert(0, str(common.ROOT / "examples"))
from gpt_modnorm import GPT, GPTConfig  # noqa: E402

# modnorm lrs from 60-iteration probes (val loss): muon 0.02/0.05/0.15 → 3.53/2.78/2.48,
# muadam 1e-3/3e-3/1e-2 → 2.77/2.46/2.52. Routed AdamW lr = lr · adamw_lr_ratio · budget.
METHODS: dict[str, dict[str, Any]] = {
    "torch:adamw": {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
    "torch:muon": {"lr": 0.02, "weight_decay": 0.1, "adamw_lr": 1e-3, "adamw_betas": (0.9, 0.99), "adamw_params": ("wte", "lm_head")},
    "muon": {"lr": 0.15, "weight_decay": 0.1, "ns_dtype": "float32", "adamw_lr_ratio": 0.14, "adamw_betas": (0.9, 0.99)},
    "muadam": {"lr": 3e-3, "betas": (0.9, 0.99), "weight_decay": 0.0, "adamw_lr_ratio": 2.3, "adamw_betas": (0.9, 0.99)},
    # Polyak step (f* = 0, lr = fraction of the gap), Adam-SANIA on embedding/head/vectors (same degree)
    "muadam_sania+polyak": {"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.0, "routed_rule": "adam_sania", "adamw_betas": (0.9, 0.99)},
}


TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def default_data() -> Path:
    """Where --data looks by default: ~/.cache/modnorm/tinyshakespeare.txt."""
    return Path.home() / ".cache" / "modnorm" / "tinyshakespeare.txt"


def load_corpus(path: str | None) -> tuple[Tensor, Tensor, int]:
    """(train ids, validation ids, vocabulary size) of a character-level corpus, split 90/10."""
    file = Path(path) if path is not None else default_data()
    if path is None and not file.is_file():
        raise SystemExit(
            f"char_gpt: no corpus at {file} (the --data default). Download tinyshakespeare there "
            f"(mkdir -p {file.parent} && curl -o {file} {TINYSHAKESPEARE_URL}) or pass --data PATH of any UTF-8 text file"
        )
    if not file.is_file():
        raise SystemExit(f"char_gpt: --data {path!r} is not a file; pass the path of a UTF-8 text corpus (e.g. tinyshakespeare.txt)")
    text = file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def batch(ids: Tensor, size: int, block: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if len(ids) <= block + 1:
        raise SystemExit(f"char_gpt: a split has {len(ids)} characters, fewer than block_size + 2 = {block + 2}; use a longer corpus")
    start = torch.randint(0, len(ids) - block - 1, (size,), generator=gen)
    x = torch.stack([ids[s : s + block] for s in start.tolist()])
    y = torch.stack([ids[s + 1 : s + block + 1] for s in start.tolist()])
    return x, y


def lm_loss(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    value = sum(float(lm_loss(model, x, y)) for x, y in batches) / len(batches)
    model.train()
    return value


def run(method: str, hp: dict[str, Any], cfg: GPTConfig, data: tuple[Tensor, Tensor], args: Any) -> dict[str, Any]:
    train_ids, val_ids = data
    torch.manual_seed(args.seed)
    model = GPT(cfg)
    opt = common.make_optimizer(common.preset_name(method), model, **hp)
    gen = torch.Generator().manual_seed(args.seed + 1)
    train_batches = [batch(train_ids, args.batch, cfg.block_size, gen) for _ in range(args.iters)]
    vgen = torch.Generator().manual_seed(args.seed + 2)
    val_batches = [batch(val_ids, args.batch, cfg.block_size, vgen) for _ in range(args.eval_iters)]
    evals: dict[str, list[float]] = {"iter": [], "val_loss": []}
    warmup = min(100, args.iters // 10)

    def on_step(step: int, value: float) -> None:
        if (step + 1) % args.eval_interval == 0 and step + 1 < args.iters:
            evals["iter"].append(step + 1)
            evals["val_loss"].append(evaluate(model, val_batches))
            print(f"  {method} iter {step + 1}: train {value:.3f} val {evals['val_loss'][-1]:.3f}", flush=True)

    xs, ys, seconds = common.train_steps(
        model, opt, lambda s: lm_loss(model, *train_batches[s]), args.iters,
        schedule=lambda s: common.cosine_factor(s, args.iters, warmup=warmup, final=0.1), clip=1.0, on_step=on_step, every=10,
    )
    final = evaluate(model, val_batches) if math.isfinite(ys[-1]) else float("inf")
    evals["iter"].append(args.iters)
    evals["val_loss"].append(final)
    return {"hyperparameters": hp, "final_val_loss": final, "final_train_loss": ys[-1], "seconds": seconds,
            "seconds_per_iter": seconds / max(1, len(xs) and xs[-1] + 1), "train_curve": {"iter": xs, "loss": ys}, "val_curve": evals}


def parse_override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in METHODS or not value:
        raise SystemExit(f"char_gpt: --lr expects METHOD=VALUE with METHOD one of {list(METHODS)}, got {text!r}")
    return name, float(value)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--data", default=None, help=f"path of a UTF-8 text corpus (default: {default_data()}; tinyshakespeare: {TINYSHAKESPEARE_URL})")
    p.add_argument("--iters", type=int, default=None, help="training iterations per optimizer (default 2000; 4 with --quick)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--lr", action="append", default=[], type=parse_override, help="override a learning rate, e.g. --lr muon=0.03 (repeatable)")
    p.add_argument("--eval-interval", type=int, default=250, help="iterations between validation estimates (default 250)")
    p.add_argument("--eval-iters", type=int, default=20, help="validation batches per estimate (default 20, as nanoGPT's CPU recipe)")
    p.add_argument("--batch", type=int, default=12, help="batch size (default 12)")
    args = p.parse_args()
    out = common.setup(args)
    started = time.perf_counter()
    train_ids, val_ids, vocab = load_corpus(args.data)
    if args.quick:
        cfg = GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=32)
        args.iters, args.eval_iters, args.batch = args.iters or 4, min(args.eval_iters, 2), 4
    else:
        cfg = GPTConfig(vocab_size=vocab)
        args.iters = args.iters or 2000
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"char_gpt: unknown --methods {unknown}; choose from {list(METHODS)}")
    overrides = dict(args.lr)
    results: dict[str, Any] = {}
    for method in methods:
        hp = {**METHODS[method], **({"lr": overrides[method]} if method in overrides else {})}
        results[method] = run(method, hp, cfg, (train_ids, val_ids), args)
        r = results[method]
        print(f"{method:<12} val {r['final_val_loss']:.4f} ({r['seconds_per_iter'] * 1000:.0f} ms/iter)", flush=True)
    rows = [[common.PRETTY[m], r["hyperparameters"]["lr"], r["final_train_loss"], r["final_val_loss"], r["seconds_per_iter"] * 1000] for m, r in results.items()]
    table = common.markdown_table(["optimizer", "lr", f"train loss @ {args.iters}", f"val loss @ {args.iters}", "ms / iter"], rows)
    panels = {
        "train loss": {common.PRETTY[m]: (r["train_curve"]["iter"], r["train_curve"]["loss"]) for m, r in results.items()},
        "validation loss": {common.PRETTY[m]: (r["val_curve"]["iter"], r["val_curve"]["val_loss"]) for m, r in results.items()},
    }
    common.plot_curves(out / "char_gpt.png", panels, xlabel="iteration", logy=False)
    meta = {"model": {k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}, "iters": args.iters,
            "batch": args.batch, "eval_iters": args.eval_iters, "corpus_chars": len(train_ids) + len(val_ids), "published_nanogpt_val_loss_2000_iters": 1.88}
    common.finish(out, "char_gpt", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
