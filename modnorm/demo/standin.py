"""Temporary stand-in for modnorm.optimizer (removed once it lands)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..norms import Spectral
from ..preconditioned import DNorm


class _StandIn(torch.optim.Optimizer):
    def __init__(self, params: Any, preset: str, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.95, budgets: bool = True) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum))
        self.preset = preset
        self.spectral = Spectral(method="polar_express")

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["t"] += 1
                t, G = st["t"], p.grad
                p.mul_(1 - g["lr"] * g["weight_decay"])
                if self.preset == "muon" and p.ndim == 2:
                    st["m"].lerp_(G, 1 - g["momentum"])
                    p.add_(self.spectral.lmo(G.lerp(st["m"], g["momentum"])), alpha=-g["lr"])
                    continue
                st["m"].lerp_(G, 1 - b1)
                st["v"].lerp_(G * G, 1 - b2)
                M = st["m"] / (1 - b1**t)
                V = st["v"] / (1 - b2**t)
                if self.preset in ("muadam", "muadam_sania") and p.ndim == 2:
                    D = (V + g["eps"]) ** (0.25 if self.preset == "muadam" else 0.5)
                    p.add_(DNorm(self.spectral, D).lmo(M), alpha=-g["lr"])
                else:
                    p.add_(M / (V.sqrt() + g["eps"]), alpha=-g["lr"])


def standin_optimizer(model: nn.Module, preset: str, **hp: Any) -> torch.optim.Optimizer:
    if preset == "sgd":
        return torch.optim.SGD(model.parameters(), lr=hp.get("lr", 0.1), momentum=hp.get("momentum", 0.9))
    return _StandIn(model.parameters(), preset, **hp)
