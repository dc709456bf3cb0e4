"""Character-level GPT on a text file (e.g. tinyshakespeare), nanoGPT's CPU recipe.

Recipe (nanoGPT shakespeare_char on CPU, published val loss ≈ 1.88 after 2000 iters):
4 layers, 4 heads, width 128, context 64, batch 12, lr warmup 100 iters then cosine to
lr/10, β2 = 0.99, weight decay 0.1, gradient clipping 1.0, 2000 iterations, 90/10
train/validation split. ``--arch modula`` (default) is ``examples/gpt_modnorm.py`` (modula's
GPT: rotary positions, RMSNorm, residuals scaled 1/L); ``--arch gpt2`` is transformers'
``GPT2LMHeadModel`` with the same sizes (learned positions, LayerNorm, biases, GELU MLP,
tied embedding and head, dropout 0) — nanoGPT's own architecture. Every optimizer sees the
same batches; the validation loss is estimated on fixed validation batches.
"""

from __future__ import annotations

import json
import math
import statistics
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

# Hyperparameters: the recipe's (β2 0.99, weight decay 0.1) on top of each optimizer's defaults.
# modnorm's muon with its defaults (one lr for all layers, bf16 Newton–Schulz) and these settings is
# torch.optim.Muon + AdamW: lr 0.02 on the hidden matrices, the AdamW route at lr · 0.05 = 1e-3.
# muadam: the best of a ×2 lr grid at 500 iterations (3e-3 … 3.75e-4, docs/benchmarks.md), route 1e-3.
METHODS: dict[str, dict[str, Any]] = {
    "torch:adamw": {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
    "torch:muon": {"lr": 0.02, "weight_decay": 0.1, "adamw_lr": 1e-3, "adamw_betas": (0.9, 0.99), "adamw_params": ("wte", "wpe", "lm_head")},
    "muon": {"lr": 0.02, "weight_decay": 0.1, "adamw_lr_ratio": 0.05, "adamw_betas": (0.9, 0.99), "adamw_weight_decay": 0.1},
    "muadam": {"lr": 7.5e-4, "betas": (0.9, 0.99), "adamw_lr_ratio": 1.33, "adamw_betas": (0.9, 0.99)},
    # SANIA's step is ∝ 1/|G| (D = V^½), so its lr lives on another scale: a grid around 7.5e-4 had its
    # best at the bottom edge (val 2.49 at 2000); a 300-iteration probe put the region near 1e-5. Route lr 1e-3.
    "muadam_sania": {"lr": 2.5e-5, "betas": (0.9, 0.99), "adamw_lr_ratio": 40.0, "adamw_betas": (0.9, 0.99)},
    # SOAP's published nanoGPT settings (lr 3e-3, β 0.95, preconditioner every 10 steps) with the recipe's β2 and decay
    "soap": {"lr": 3e-3, "beta2": 0.99, "weight_decay": 0.1, "adamw_lr_ratio": 0.33, "adamw_betas": (0.9, 0.99), "adamw_weight_decay": 0.1},
    # Polyak step (f* = 0, lr = fraction of the gap), Adam-SANIA on embedding/head/vectors (same degree)
    "muadam_sania+polyak": {"lr": 0.1, "betas": (0.9, 0.99), "weight_decay": 0.0, "routed_rule": "adam_sania", "adamw_betas": (0.9, 0.99)},
}
DEFAULT_METHODS = [m for m in METHODS if m != "adamw"]  # modnorm's adamw is torch's (bitwise): run it by name, e.g. with --state-dtype


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


def build_model(arch: str, cfg: GPTConfig) -> torch.nn.Module:
    """The network of ``--arch``: modula's GPT, or transformers' GPT-2 with the same sizes."""
    if arch == "modula":
        return GPT(cfg)
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise SystemExit("char_gpt: --arch gpt2 needs transformers (pip install transformers)") from None
    config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def lm_loss(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
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
    model = build_model(args.arch, cfg)
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


def time_interleaved(hps: dict[str, dict[str, Any]], cfg: GPTConfig, train_ids: Tensor, args: Any) -> dict[str, Any]:
    """Median wall-clock of one training iteration (forward, backward, clip, step) per method,
    measured round-robin — one iteration of each method per round, after 3 warm-up rounds — so
    every method sees the same machine load."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    setups = {}
    for method, hp in hps.items():
        torch.manual_seed(args.seed)
        model = build_model(args.arch, cfg)
        setups[method] = (model, common.make_optimizer(method, model, **hp))
    times: dict[str, list[float]] = {m: [] for m in hps}
    for r in range(args.timing + 3):
        x, y = batch(train_ids, args.batch, cfg.block_size, gen)
        for method, (model, opt) in setups.items():
            started = time.perf_counter()
            loss = lm_loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            common.step_optimizer(opt, loss)
            if r >= 3:
                times[method].append(time.perf_counter() - started)
    return {m: {"hyperparameters": hps[m], "median_ms_per_iter": 1000 * statistics.median(t), "rounds": len(t)} for m, t in times.items()}


def parse_override(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in METHODS or not value:
        raise SystemExit(f"char_gpt: --lr expects METHOD=VALUE with METHOD one of {list(METHODS)}, got {text!r}")
    return name, float(value)


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``METHOD.KEY=VALUE`` (VALUE as JSON, else a string) → (method, key, value)."""
    target, _, raw = text.partition("=")
    method, _, key = target.rpartition(".")
    if method not in METHODS or not key or not raw:
        raise SystemExit(f"char_gpt: --set expects METHOD.KEY=VALUE with METHOD one of {list(METHODS)}, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return method, key, tuple(value) if isinstance(value, list) else value


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "runs/bench")
    p.add_argument("--data", default=None, help=f"path of a UTF-8 text corpus (default: {default_data()}; tinyshakespeare: {TINYSHAKESPEARE_URL})")
    p.add_argument("--iters", type=int, default=None, help="training iterations per optimizer (default 2000; 4 with --quick)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {','.join(METHODS)} (default: all but adamw)")
    p.add_argument("--lr", action="append", default=[], type=parse_override, help="override a learning rate, e.g. --lr muon=0.03 (repeatable)")
    p.add_argument("--set", action="append", default=[], type=parse_setting, dest="settings",
                   help="override any hyperparameter, VALUE as JSON, e.g. --set muon.budgets=false --set muon.adamw_lr_ratio=0.05 (repeatable)")
    p.add_argument("--eval-interval", type=int, default=250, help="iterations between validation estimates (default 250)")
    p.add_argument("--eval-iters", type=int, default=20, help="validation batches per estimate (default 20, as nanoGPT's CPU recipe)")
    p.add_argument("--batch", type=int, default=12, help="batch size (default 12)")
    p.add_argument("--arch", choices=("modula", "gpt2"), default="modula", help="network: modula's GPT (examples/) or transformers' GPT-2 (default modula)")
    p.add_argument("--state-dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="state_dtype of the modnorm optimizers (default: theirs, float32 here); bfloat16: 16-bit state, float32 steps")
    p.add_argument("--state-rounding", default="stochastic", choices=("stochastic", "nearest"), help="rounding of 16-bit state (default stochastic)")
    p.add_argument("--timing", type=int, default=0, help="instead of training: time N interleaved iterations of every method (median ms / iter)")
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
    hps = {m: {**METHODS[m], **{k: v for n, k, v in args.settings if n == m}, **({"lr": overrides[m]} if m in overrides else {})} for m in methods}
    if args.state_dtype is not None:
        storage = {"state_dtype": args.state_dtype, **({"state_rounding": args.state_rounding} if args.state_dtype != "float32" else {})}
        hps = {m: {**hp, **storage} if not m.startswith("torch:") else hp for m, hp in hps.items()}
    if args.timing > 0:
        timed = time_interleaved(hps, cfg, train_ids, args)
        table = common.markdown_table(["optimizer", "median ms / iter", "× fastest"], [
            [common.PRETTY.get(m, m), r["median_ms_per_iter"], r["median_ms_per_iter"] / min(t["median_ms_per_iter"] for t in timed.values())] for m, r in timed.items()])
        common.finish(out, "char_gpt", {"config": {"timing_rounds": args.timing}, "results": timed}, table, started, common.command_line())
        return
    results: dict[str, Any] = {}
    for method in methods:
        hp = hps[method]
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
    meta = {"arch": args.arch, "state_dtype": args.state_dtype, "state_rounding": args.state_rounding, "model": {k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}, "iters": args.iters,
            "batch": args.batch, "eval_iters": args.eval_iters, "corpus_chars": len(train_ids) + len(val_ids), "published_nanogpt_val_loss_2000_iters": 1.88}
    common.finish(out, "char_gpt", {"config": meta, "results": results}, table, started, common.command_line())


if __name__ == "__main__":
    main()
