"""The routed AdamW's width-aware head lr (``adamw_head_width``): an output map (a head, or an
embedding table tied to it) steps with lr · ratio · width / fan_in, everything else with lr · ratio,
checked on a first step against Adam's first step written here (M̂ = G, V̂ = G²)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim.config import ConfigError


class TiedLM(nn.Module):
    """Token and position tables, one hidden layer, a head tied to the token table."""

    def __init__(self, vocab: int = 7, width: int = 6, seq: int = 3) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[-1])
        return self.head(torch.relu(self.mid(self.wte(idx) + self.wpe(pos))))


def untied(width: int = 6) -> nn.Module:
    return nn.Sequential(nn.Embedding(7, width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 5))


def first_step(model: nn.Module, idx: torch.Tensor, **hp) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(gradient, parameter change) per name after one muon step from a fresh state."""
    model = model.double()
    opt = modnorm.optimizer(model, "muon", weight_decay=0.0, ns_dtype="float64", **hp)
    model(idx).pow(2).mean().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    return grads, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def adam_first_step(g: torch.Tensor, lr: float, eps: float = 1e-8) -> torch.Tensor:
    return -lr * g / (g.abs() + eps)


def test_tied_table_is_marked_as_the_heads_and_untied_tables_are_not() -> None:
    tied = modnorm.geometries(TiedLM())
    assert tied["wte.weight"].role == "embedding" and tied["wte.weight"].tied_head and tied["wte.weight"].is_output
    assert not tied["wpe.weight"].tied_head and not tied["wpe.weight"].is_output
    plain = modnorm.geometries(untied())
    assert not plain["0.weight"].is_output and plain["3.weight"].role == "head" and plain["3.weight"].is_output


@pytest.mark.parametrize("width", [6, 12])
def test_head_and_tied_table_step_with_lr_times_width_over_fan_in(width: int) -> None:
    lr, ratio, base = 0.03, 0.5, 4.0
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.manual_seed(0)
    grads, moves = first_step(TiedLM(width=width), idx, lr=lr, adamw_lr_ratio=ratio, adamw_head_width=base)
    for name in ("wte.weight", "wpe.weight", "mid.bias"):
        factor = base / width if name == "wte.weight" else 1.0  # fan_in of the tied (vocab, width) table: width
        torch.testing.assert_close(moves[name], adam_first_step(grads[name], lr * ratio * factor), rtol=1e-12, atol=1e-15)
    torch.manual_seed(0)
    grads, moves = first_step(untied(width), idx, lr=lr, adamw_lr_ratio=ratio, adamw_head_width=base)
    torch.testing.assert_close(moves["3.weight"], adam_first_step(grads["3.weight"], lr * ratio * base / width), rtol=1e-12, atol=1e-15)
    for name in ("0.weight", "3.bias"):  # an untied embedding and the head's bias: width-independent
        torch.testing.assert_close(moves[name], adam_first_step(grads[name], lr * ratio), rtol=1e-12, atol=1e-15)


def test_unset_head_width_leaves_every_route_at_lr_times_ratio() -> None:
    idx = torch.tensor([[1, 2, 3]])
    torch.manual_seed(0)
    grads, moves = first_step(TiedLM(width=8), idx, lr=0.02, adamw_lr_ratio=0.5)
    for name in ("wte.weight", "wpe.weight", "mid.bias"):
        torch.testing.assert_close(moves[name], adam_first_step(grads[name], 0.01), rtol=1e-12, atol=1e-15)


def test_describe_lists_the_head_lr() -> None:
    opt = modnorm.optimizer(untied(8), "muadam", lr=0.1, adamw_head_width=2.0)
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert float(rows["3.weight"]["lr"]) == pytest.approx(0.1 * 2 / 8)
    assert float(rows["0.weight"]["lr"]) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0.0, -64.0])
def test_bad_head_width_is_refused_naming_it(bad: float) -> None:
    model = untied()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="adamw_head_width"):
        modnorm.optimizer(model, "muon", adamw_head_width=bad)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


class ScaledTiedLM(TiedLM):
    """TiedLM with µP's output multiplier: the head wrapped in ``modnorm.Scale`` (the table keeps its input scale)."""

    def __init__(self, factor: float, width: int = 6) -> None:
        super().__init__(width=width)
        self.head = modnorm.Scale(factor, self.head)


def test_output_multiplier_changes_the_function_not_the_first_step() -> None:
    """Wrapping the head in Scale(a) multiplies the logits by a; the roles stay, and every first step is the unwrapped
    model's: Adam's (ε = 0) and Muon's first steps do not depend on the gradient's scale, so the multiplier moves the
    logits a times less per step while every routed lr stays width-independent."""
    idx, a = torch.tensor([[1, 2, 3], [4, 5, 6]]), 0.25
    torch.manual_seed(0)
    plain = TiedLM(width=8).double()
    scaled = ScaledTiedLM(a, width=8).double()
    scaled.load_state_dict(plain.state_dict(), strict=False)
    scaled.head.module.weight = scaled.wte.weight  # re-tied after loading
    torch.testing.assert_close(scaled(idx), a * plain(idx), rtol=1e-14, atol=0)
    geo = modnorm.geometries(scaled)
    assert geo["wte.weight"].tied_head and geo["wte.weight"].is_output and "head.module.weight" not in geo
    moves = {}
    for name, model in (("plain", plain), ("scaled", scaled)):
        opt = modnorm.optimizer(model, "muon", lr=0.03, weight_decay=0.0, ns_dtype="float64", adamw_eps=0.0)
        out = model(idx)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()  # logits' gradient: fixed, so scaled's is a × plain's
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        moves[name] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    assert set(moves["plain"]) == set(moves["scaled"])
    for n, move in moves["plain"].items():
        assert move.abs().max() > 0, n
        torch.testing.assert_close(moves["scaled"][n], move, rtol=1e-9, atol=1e-15)
    g = scaled.wte.weight.grad
    torch.testing.assert_close(moves["scaled"]["wte.weight"], -0.03 * torch.sign(g) * (g != 0), rtol=1e-12, atol=0)  # Adam's first step
