"""Budgets users can trust: plain residual sums in the convex form, no frozen matrix, decay that follows the step."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm.layers import defaults as D


class Res(nn.Module):
    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_plain_residual_stack_closed_form(k: int) -> None:
    # Linear → k × (x + W x) → Linear. Each sum: (k/(k+1))·x + (1/(k+1))·Wx, mass 1/(k+1), ν 1; μ = 2 + k/(k+1).
    # The branch's share (1/(k+1))/μ is multiplied back by k + 1: every layer gets 1/μ, at every depth.
    net = nn.Sequential(nn.Linear(3, 4, bias=False), *[Res(nn.Linear(4, 4, bias=False)) for _ in range(k)], nn.Linear(4, 2, bias=False))
    b = modnorm.budgets(net)
    assert b == pytest.approx({n: 1 / (2 + k / (k + 1)) for n in b})


def test_declared_residual_weights_are_kept() -> None:
    # a sum that already scales its operands (modnorm.Residual, or written out) is not rewritten
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(4, 4, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.75 * x + 0.25 * self.f(x)

    net = nn.Sequential(nn.Linear(4, 4, bias=False), Scaled())
    # Chain(first, Tuple(0.75·id, 0.25·f), add): μ 2, the block's ν 0.75 + 0.25 = 1; f gets (1/2)/0.25 = 2
    assert modnorm.budgets(net) == pytest.approx({"0.weight": 1 / 2, "1.f.weight": 2.0})


def test_decoupled_weight_decay_takes_the_budget() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False))
    budgets = modnorm.budgets(net)
    for preset in ("muon", "adamw", "muadam"):
        model = nn.Sequential(*[m for m in net]).double()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = modnorm.optimizer(model, preset, lr=0.1, weight_decay=0.5, budgets=True)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # no step: only the decay moves W
        opt.step()
        for n, p in model.named_parameters():
            if n == "4.weight":  # the head takes its preset's head route, with that route's own decay
                continue
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * budgets[n] * 0.5), msg=f"{preset} {n}")
            p.data.copy_(before[n])


# -- no frozen matrix on ResNet-, MobileNet-, ConvNeXt-like and transformer models -------------------------

def _bn_conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = _bn_conv(cin, cout, 3, stride), _bn_conv(cout, cout)
        self.down = _bn_conv(cin, cout, 1, stride) if stride > 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return F.relu(self.b(F.relu(self.a(x))) + skip)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cout // 4
        self.a, self.b, self.c = _bn_conv(cin, mid, 1), _bn_conv(mid, mid, 3, stride), _bn_conv(mid, cout, 1)
        self.down = _bn_conv(cin, cout, 1, stride) if stride > 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))) + skip)


def resnet(block: type, blocks: list[int], width: int = 8) -> nn.Module:
    layers: list[nn.Module] = [_bn_conv(3, width), nn.ReLU()]
    c = width
    for i, n in enumerate(blocks):
        for j in range(n):
            out = width * 2 ** i * (4 if block is Bottleneck else 1)
            layers.append(block(c, out, 2 if j == 0 and i > 0 else 1))
            c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


class Inverted(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.f = nn.Sequential(_bn_conv(c, h, 1), nn.ReLU6(), _bn_conv(h, h, 3, groups=h), nn.ReLU6(), _bn_conv(h, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def mobilenet(width: int = 8, blocks: int = 6) -> nn.Module:
    return nn.Sequential(_bn_conv(3, width), nn.ReLU6(), *[Inverted(width) for _ in range(blocks)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(1e-6 * torch.ones(c))  # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))
        h = self.gamma * self.pw2(F.gelu(self.pw1(h)))
        return x + h.permute(0, 3, 1, 2)


def convnext(width: int = 8, blocks: int = 6) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 4, 4), *[ConvNeXtBlock(width) for _ in range(blocks)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


class PreNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def transformer(d: int = 16, blocks: int = 6) -> nn.Module:
    return nn.Sequential(nn.Embedding(20, d), *[PreNorm(d) for _ in range(blocks)], nn.LayerNorm(d), nn.Linear(d, 20))


ZOO = {
    "resnet18-like": (lambda: resnet(Basic, [2, 2, 2, 2], width=4), lambda: torch.randn(2, 3, 8, 8)),
    "resnet50-like": (lambda: resnet(Bottleneck, [3, 4, 6, 3], width=4), lambda: torch.randn(2, 3, 8, 8)),
    "mobilenet-like": (mobilenet, lambda: torch.randn(2, 3, 8, 8)),
    "convnext-like": (convnext, lambda: torch.randn(2, 3, 8, 8)),
    "transformer": (transformer, lambda: torch.randint(0, 20, (2, 8))),
}


def relative_changes(kind: str, preset: str, lr: float, steps: int = 2) -> dict[str, float]:
    """‖ΔW‖/‖W‖ per step, averaged over ``steps`` steps, for every weight matrix (conv kernels included)."""
    make, data = ZOO[kind]
    torch.manual_seed(0)
    model = make()
    rules = modnorm.LayerRules()
    rules.override("*gamma", D.vector())
    opt = modnorm.optimizer(model, preset, rules=rules, lr=lr, example_inputs=data(), budgets=True)
    mats = {n: p for n, p in model.named_parameters() if p.ndim >= 2}
    change = dict.fromkeys(mats, 0.0)
    for _ in range(steps):
        x = data()
        out = model(x)
        loss = (out.float() ** 2).mean()
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().clone() for n, p in mats.items()}
        opt.step()
        for n, p in mats.items():
            change[n] += float((p.detach() - before[n]).norm() / before[n].norm()) / steps
    return change


@pytest.mark.parametrize("kind", list(ZOO))
@pytest.mark.parametrize("preset, lr", [("muon", 0.02), ("muadam", 0.003)])
def test_no_weight_matrix_is_frozen(kind: str, preset: str, lr: float) -> None:
    change = relative_changes(kind, preset, lr)
    median = statistics.median(change.values())
    frozen = {n: c / median for n, c in change.items() if not c >= median / 100}
    assert not frozen, frozen


def test_layer_scale_parameters_join_where_they_are_used() -> None:
    # gamma * h read mid-forward used to bridge from the source: not series-parallel, flat fall-back (ratios 1e10)
    rules = modnorm.LayerRules()
    rules.override("*gamma", D.vector())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traced = modnorm.budgets(convnext(), rules=rules)
        captured = modnorm.budgets(convnext(), rules=rules, example_inputs=torch.randn(2, 3, 16, 16))
    assert traced == pytest.approx(captured)
    assert max(traced.values()) / min(traced.values()) < 2
