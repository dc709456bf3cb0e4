"""KFAC/EKFAC under DDP (2 gloo ranks, half of every batch each): the factors are averaged over
ranks, so training matches a single process on the full batch."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import modnorm
from modnorm.distributed.launch import launch

PRESETS = ("kfac", "ekfac")
HP = {"lr": 0.05, "damping": 1e-3, "stat_decay": 0.5, "update_freq": 2, "root_dtype": "float64", "momentum": 0.5}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)


def train(preset: str, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    model = make_model()
    wrapped = model
    if world > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = nn.parallel.DistributedDataParallel(model)
    opt = modnorm.optimizer(model, preset, budgets=False, **HP)
    for t in range(4):
        x, y = batch(t)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        nn.functional.mse_loss(wrapped(x), y).backward()
        opt.step()
    modnorm.optim.kfac_hooks.remove_kfac_hooks(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(presets: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    import torch.distributed as dist

    return {p: train(p, dist.get_rank(), dist.get_world_size()) for p in presets}


def test_kfac_under_ddp_matches_one_process():
    ranks = launch(worker, 2, PRESETS)
    for preset in PRESETS:
        ref = train(preset)
        start = make_model().state_dict()
        assert max((ref[k] - start[k]).abs().max().item() for k in ref) > 1e-3  # training moved the weights
        for got in ranks:
            for k in ref:
                assert torch.allclose(got[preset][k], ref[k], atol=1e-10), (preset, k, (got[preset][k] - ref[k]).abs().max())
