"""The GPT of ``examples/gpt_modnorm.py`` written in plain torch.nn.

modnorm recovers its composition by tracing; two declarations make it the same
modular network as the modnorm version (see ``modnorm_rules``):

- ``Rotary`` is registered as a bond of sensitivity 1 (it is an orthogonal map; traced
  op by op, its two-branch formula would count sensitivity 2);
- the ``blocks`` stack gets total mass ``blocks_mass`` (modula's block mass 5).

Parameter names match the modnorm version, so state_dicts load across.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

__all__ = ["GPTConfig", "GPT", "modnorm_rules"]

GELU_MAX_SLOPE = 0.5 * (1.0 + math.erf(1.0)) + math.sqrt(2.0) * math.exp(-1.0) / math.sqrt(2.0 * math.pi)


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # training context length; the model (rotary positions) accepts any length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    blocks_mass: float = 5.0
    norm_gain: bool = False
    attn_scale: float | None = None


class Rotary(nn.Module):
    """Rotary position embedding of (batch, heads, time, d_head)."""

    def __init__(self, base: float = 10000.0) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: Tensor) -> Tensor:
        T, d = x.shape[-2], x.shape[-1]
        half = d // 2
        freqs = self.base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
        angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freqs[None, :]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class NormalizedGELU(nn.Module):
    """GELU divided by its maximum slope (Lipschitz constant 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x) / GELU_MAX_SLOPE


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attn_scale: float | None = None) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.attn_scale = attn_scale if attn_scale is not None else 1.0 / math.sqrt(self.d_head)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary()

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.o((1.0 / 3.0) * y)


class Residual(nn.Module):
    """(1 − 1/L)·x + (1/L)·block(x)."""

    def __init__(self, block: nn.Module, L: int) -> None:
        super().__init__()
        self.block, self.L = block, float(L)

    def forward(self, x: Tensor) -> Tensor:
        return (1.0 - 1.0 / self.L) * x + (1.0 / self.L) * self.block(x)


class GPT(nn.Module):
    """forward(idx: (B, T) int64) -> logits (B, T, vocab_size)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, depth = cfg.n_embd, 2 * cfg.n_layer
        blocks: list[nn.Module] = []
        for _ in range(cfg.n_layer):
            attn = CausalSelfAttention(d, cfg.n_head, cfg.attn_scale)
            mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), NormalizedGELU(), nn.Linear(4 * d, d, bias=False))
            blocks.append(Residual(nn.Sequential(nn.RMSNorm(d, elementwise_affine=cfg.norm_gain), attn), depth))
            blocks.append(Residual(nn.Sequential(nn.RMSNorm(d, elementwise_affine=cfg.norm_gain), mlp), depth))
        self.wte = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.RMSNorm(d, elementwise_affine=cfg.norm_gain)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        return self.lm_head(self.norm(self.blocks(self.wte(idx))))


def modnorm_rules(cfg: GPTConfig):  # -> modnorm.LayerRules
    """The declarations that make this plain model the modular network of gpt_modnorm."""
    import modnorm

    rules = modnorm.LayerRules()
    rules.register_bond(Rotary, 1.0)
    rules.set_mass("blocks", cfg.blocks_mass)
    return rules


if __name__ == "__main__":
    import modnorm

    cfg = GPTConfig(n_layer=2, n_embd=64)
    print(modnorm.describe(GPT(cfg), rules=modnorm_rules(cfg)))
