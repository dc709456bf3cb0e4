"""Snapshots of parameters and optimizer state, and a small model, for tests that a refused step changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def tiny_mlp() -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """A seeded 4 → 6 → 3 tanh MLP and a closure computing its loss on fixed inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(8, 4)
    return model, lambda: model(x).pow(2).mean()


def snapshot(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]]]:
    """Copies of the parameters and of their optimizer state."""
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state}
    return [p.detach().clone() for p in params], state


def unchanged(opt: torch.optim.Optimizer, params: list[torch.Tensor], snap: tuple[list[torch.Tensor], dict[int, dict[str, Any]]]) -> bool:
    """Whether parameters and state are bitwise equal to the snapshot (no state key added or lost)."""
    values, state = snap
    if not all(torch.equal(a, b) for a, b in zip(params, values)):
        return False
    now = {id(p): opt.state[p] for p in params if p in opt.state}
    return now.keys() == state.keys() and all(torch.equal(now[i][k], state[i][k]) for i in state for k in state[i])


def train_squares(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1, inputs: int = 10) -> None:
    """``steps`` optimizer steps on the mean square of ``net``'s output for seeded (32, inputs) batches."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, inputs, generator=g)
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
