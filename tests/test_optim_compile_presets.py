"""Every preset under ``compile=True`` (aot_eager) follows its eager trajectory; compiled sgd,
adamw and adagrad equal their torch.optim peers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim import PRESETS
from modnorm.optim.hessian import functional_loss


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def run(preset: str, compile: bool | dict, **given: object) -> list[torch.Tensor]:
    model = _model()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    loss_of = lambda out: ((out - y) ** 2).mean()  # noqa: E731  (what _steps minimizes)
    fields = PRESETS[preset].hyperparameters.model_fields
    hp: dict = {"ns_dtype": "float64"} if "ns_dtype" in fields else {}
    if "loss_fn" in fields:
        hp.update(loss_fn=functional_loss(model, loss_of, x), loss_params=dict(model.named_parameters()), every=1)
    if "precondition_frequency" in fields:
        hp["precondition_frequency"] = 1
    opt = modnorm.optimizer(model, preset, compile=compile, **hp, **given)
    return _steps(model, opt, x, y)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    for _ in range(2):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_compiled_preset_matches_eager(preset: str) -> None:
    torch._dynamo.reset()
    for a, b in zip(run(preset, {"backend": "aot_eager"}), run(preset, False)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


PEERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.05),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05),
}


@pytest.mark.parametrize("preset", sorted(PEERS))
def test_compiled_preset_equals_torch_optim(preset: str) -> None:
    """The independent reference: torch.optim's peer of the preset, on the same model and data."""
    torch._dynamo.reset()
    hp = {"momentum": 0.9} if preset == "sgd" else {}
    compiled = run(preset, {"backend": "aot_eager"}, lr=0.05, **hp)
    model = _model()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)  # run()'s draws after _model()
    ref = _steps(model, PEERS[preset](model.parameters()), x, y)
    start = [p.detach() for p in _model().parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(ref, start)) > 1e-3
    for a, b in zip(compiled, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
