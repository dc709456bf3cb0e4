"""A small GPT built from modnorm layers: modula's GPT, with optional RMSNorm pre-norms.

    logits = lm_head ∘ norm ∘ blocks ∘ wte
    blocks = Sequential(mass=5)( [Residual(attn ∘ norm, L), Residual(mlp ∘ norm, L)] × n_layer ),  L = 2·n_layer
    attn   = O ∘ (1/3)·causal-attention(rope(Q x), rope(K x), V x)
    mlp    = Linear(4d → d) ∘ GELU/1.1289 ∘ Linear(d → 4d)

With the default ``norm_gain=False`` the RMSNorms are bonds (sensitivity 1, no weights)
and the budgets are modula's: wte and lm_head 1/7, Q/K/V 5/7, O and the MLP layers
5/21, for every depth. ``norm_gain=True`` adds a gain of mass 1 to every norm (then the
budgets change, and are still independent of depth).

``examples/gpt_torch.py`` is the same network in plain torch.nn: its parameter names are
the same, a state_dict of one loads into the other, and ``modnorm.budgets`` agrees.

Run ``python examples/gpt_modnorm.py`` to print ``modnorm.describe`` of a small model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import modnorm  # noqa: E402
from modnorm import layers as L  # noqa: E402

__all__ = ["GPTConfig", "GPT"]


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # training context length; the model (rotary positions) accepts any length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    blocks_mass: float = 5.0
    norm_gain: bool = False
    attn_scale: float | None = None  # softmax temperature; None: 1/√d_head
    init: str = "torch"  # or "normed": every matrix on its norm's unit sphere


class GPT(nn.Module):
    """forward(idx: (B, T) int64) -> logits (B, T, vocab_size)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, depth = cfg.n_embd, 2 * cfg.n_layer

        def norm() -> nn.Module:
            return L.RMSNorm(d, elementwise_affine=cfg.norm_gain)

        def mlp() -> nn.Module:
            return L.Sequential(
                L.Linear(d, 4 * d, bias=False, init=cfg.init), L.GELU(normalize=True),
                L.Linear(4 * d, d, bias=False, head=False, init=cfg.init),
            )

        blocks: list[nn.Module] = []
        for _ in range(cfg.n_layer):
            attn = L.CausalSelfAttention(d, cfg.n_head, attn_scale=cfg.attn_scale, init=cfg.init)
            blocks.append(L.Residual(L.Sequential(norm(), attn), depth))
            blocks.append(L.Residual(L.Sequential(norm(), mlp()), depth))
        self.wte = L.Embedding(cfg.vocab_size, d, init=cfg.init)
        self.blocks = L.Sequential(*blocks, mass=cfg.blocks_mass)
        self.norm = norm()
        self.lm_head = L.Linear(d, cfg.vocab_size, bias=False, head=True, init=cfg.init)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lm_head(self.norm(self.blocks(self.wte(idx))))


if __name__ == "__main__":
    model = GPT(GPTConfig(n_layer=2, n_embd=64))
    print(modnorm.describe(model))
