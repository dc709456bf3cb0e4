"""Causal self-attention built from modnorm layers, declaring modula's composition.

    y = O( s · Attn(Q x, K x, V x) ),   Attn(q, k, v) = softmax(q kᵀ·scale + causal mask) v

with rotary position embedding on q and k. As a composition:
Chain(Tuple(Q, K, V), attention bond (ν = 1), s, O). The tuple has ν = 3, so the
output scale s = 1/3 (modula's choice, the default) makes the layer's sensitivity 1;
the tuple's budget is multiplied by 1/s = 3. With mass 1 per projection the budgets
inside the layer are Q, K, V: 3t/4 each and O: t/4 — modula's ``Attention``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..composition import Bond, Chain, Node, Tuple, scaled
from .linear import Linear

if TYPE_CHECKING:
    from ..resolver import Resolver

__all__ = ["CausalSelfAttention", "rotary"]


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x (batch, heads, time, d_head), d_head even: an orthogonal map (ν = 1)."""
    T, d = x.shape[-2], x.shape[-1]
    half = d // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with Q, K, V, O as ``modnorm.layers.Linear`` (no bias by default).

    ``output_scale`` multiplies the attention output before O (1/3: sensitivity 1);
    ``attn_scale`` is the softmax temperature (default 1/√d_head; modula uses 1/d_head).
    """

    def __init__(
        self, d_model: int, n_heads: int, bias: bool = False, *, output_scale: float = 1.0 / 3.0,
        attn_scale: float | None = None, rope: bool = True, init: str = "torch",
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"CausalSelfAttention: d_model={d_model} must be divisible by n_heads={n_heads}")
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"CausalSelfAttention: rope needs an even head dimension, got {d_model // n_heads}")
        if not output_scale > 0:
            raise ValueError(f"CausalSelfAttention: output_scale must be positive, got {output_scale!r}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.output_scale, self.rope = float(output_scale), bool(rope)
        self.attn_scale = attn_scale if attn_scale is not None else 1.0 / math.sqrt(self.d_head)
        self.q, self.k, self.v, self.o = (Linear(d_model, d_model, bias=bias, head=False, init=init) for _ in range(4))

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if self.rope:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.o(self.output_scale * y)

    def modular(self, ctx: Resolver) -> Node:
        qkv = Tuple([ctx.resolve(self.q), ctx.resolve(self.k), ctx.resolve(self.v)])
        attn = Chain([qkv, Bond(1.0, name="causal attention")])
        return Chain([scaled(self.output_scale, attn), ctx.resolve(self.o)])
