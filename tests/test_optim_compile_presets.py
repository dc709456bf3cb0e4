"""Every preset under ``compile=True`` (aot_eager) follows its eager trajectory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim import PRESETS
from modnorm.optim.hessian import functional_loss


def run(preset: str, compile: bool | dict) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    loss_of = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    fields = PRESETS[preset].hyperparameters.model_fields
    hp: dict = {"ns_dtype": "float64"} if "ns_dtype" in fields else {}
    if "loss_fn" in fields:
        hp.update(loss_fn=functional_loss(model, loss_of, x), loss_params=dict(model.named_parameters()), every=1)
    if "precondition_frequency" in fields:
        hp["precondition_frequency"] = 1
    opt = modnorm.optimizer(model, preset, compile=compile, **hp)
    for _ in range(2):
        opt.zero_grad()
        loss_of(model(x)).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_compiled_preset_matches_eager(preset: str) -> None:
    torch._dynamo.reset()
    for a, b in zip(run(preset, {"backend": "aot_eager"}), run(preset, False)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
