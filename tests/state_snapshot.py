"""Snapshots of parameters and optimizer state, for tests that a refused step changes nothing."""

from __future__ import annotations

from typing import Any

import torch


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
