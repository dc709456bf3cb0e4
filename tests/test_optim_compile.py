"""``modnorm.optimizer(..., compile=True)``: each bucket's update runs under torch.compile.

Compiled and eager steps agree (float64, 1e-12) for adamw, muon and muadam, and compiled
adamw equals torch.optim.AdamW; an lr schedule
that changes lr every step causes no recompile (lr enters as a 0-d tensor); there is no
graph break. ``aot_eager`` traces exactly what inductor receives, without the C++ compile
time (inductor itself is measured in docs/optimizer.md).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import modnorm

BACKEND = {"backend": "aot_eager"}
EXTRA = {"muon": {"ns_dtype": "float64"}, "muadam": {"ns_method": "jordan"}, "adamw": {}}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3, bias=False)).double()


def _train(preset: str, compile: bool | dict, steps: int, lr: float | torch.Tensor = 0.02, after=None):
    model = _model()
    opt = modnorm.optimizer(model, preset, lr=lr, compile=compile, **EXTRA[preset])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.5 * s))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    lrs = []
    for k in range(steps):
        if after is not None and k == steps // 2:
            after()
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        lrs.append(float(opt.param_groups[0]["lr"]))
        sched.step()
    return [p.detach().clone() for p in model.parameters()], lrs, opt


@pytest.mark.parametrize("preset", ["adamw", "muon", "muadam"])
def test_compiled_step_matches_eager_without_recompiles(preset: str) -> None:
    torch._dynamo.reset()
    counters.clear()
    seen: dict[str, int] = {}

    def mark() -> None:  # graphs compiled during the first half (step 1, then a dynamic step count)
        seen["graphs"] = counters["stats"]["unique_graphs"]

    eager, lrs, _ = _train(preset, False, 6, lr=torch.tensor(0.02))
    compiled, _, opt = _train(preset, BACKEND, 6, lr=torch.tensor(0.02), after=mark)
    assert len(set(lrs)) == 6  # the schedule changed lr every step
    buckets = len(opt._compiled)
    assert buckets >= 2
    assert counters["stats"]["unique_graphs"] == seen["graphs"] <= 2 * buckets, "lr or step changes recompiled"
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    moved = max(float((a - b).abs().max()) for a, b in zip(eager, [p.detach() for p in _model().parameters()]))
    assert moved > 1e-3
    for a, b in zip(compiled, eager):
        assert float((a - b).abs().max()) < 1e-12


def test_compiled_adamw_equals_torch_adamw() -> None:
    """The independent reference: torch.optim.AdamW under the same schedule (float64 rounding
    differs by the order of operations only)."""
    torch._dynamo.reset()
    compiled, _, _ = _train("adamw", BACKEND, 6, lr=torch.tensor(0.02))
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.5 * s))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    for _ in range(6):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        sched.step()
    start = [p.detach() for p in _model().parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(compiled, start)) > 1e-3
    for a, b in zip(compiled, model.parameters()):
        assert float((a - b.detach()).abs().max()) < 1e-8


def test_compiled_float_lr_and_deepcopy() -> None:
    torch._dynamo.reset()
    eager, _, _ = _train("adamw", False, 3, lr=0.02)
    compiled, _, opt = _train("adamw", BACKEND, 3, lr=0.02)
    for a, b in zip(compiled, eager):
        assert float((a - b).abs().max()) < 1e-12
    clone = copy.deepcopy(opt)
    assert clone._compile == BACKEND and clone._compiled == {}


def test_compile_option_is_checked() -> None:
    with pytest.raises(modnorm.ConfigError, match="compile"):
        modnorm.optimizer(_model(), "adamw", compile="yes")


def test_compiled_buckets_inside_compiled_step() -> None:
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    opt = modnorm.optimizer(model, "adamw", lr=0.02, compile=BACKEND)
    step = torch.compile(opt.step, backend="eager")  # planning stays eager; the buckets still compile
    x = torch.randn(4, 6, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        step()
    assert len(opt._compiled) == 3 and counters["stats"]["unique_graphs"] == 6


def test_compile_option_survives_load_state_dict() -> None:
    """torch's load_state_dict re-runs __setstate__; the compile option must not fall back to eager."""
    _, _, opt = _train("adamw", BACKEND, 2)
    opt.load_state_dict(opt.state_dict())
    opt._compiled.clear()
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt._compile == BACKEND and len(opt._compiled) >= 1
