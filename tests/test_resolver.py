"""The resolver with strategies passed in, and a node type added without touching the library."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
from torch import nn

import modnorm
from modnorm.composition import Atom, Bond, Chain, Node, Tuple, render
from modnorm.graph import TraceError
from modnorm.resolver import Resolver, Strategy, resolve
from modnorm.trace import FxTrace


class Gated(nn.Module):
    """a → ×2 → b, behind control flow on values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = h * 1.0
        return self.b(2.0 * h)


class Known(Strategy):
    """Knows Gated's composition; defers every other module."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def node(self, module: nn.Module, resolver: Resolver) -> Node | None:
        self.asked.append(type(module).__name__)
        if not isinstance(module, Gated):
            return None
        return Chain([resolver.resolve(module.a), Bond(2.0), resolver.resolve(module.b)])


class Refuses(Strategy):
    def node(self, module: nn.Module, resolver: Resolver) -> Node | None:
        raise TraceError("refused on purpose")


def _budgets(analysis) -> dict[str, float]:
    return {n: i.budget for n, i in analysis.params.items()}


def test_a_strategy_passed_in_recovers_what_fx_cannot() -> None:
    model = Gated()
    with pytest.warns(UserWarning, match="could not be recovered"):
        flat = resolve(model, strategies=(FxTrace(),))
    assert flat.untraced and "torch.fx could not trace" in flat.untraced[0][1]
    # the flat tuple: each Linear (mass 1) gets half of the budget
    assert _budgets(flat) == pytest.approx({"a.weight": 0.5, "a.bias": 0.5, "b.weight": 0.5, "b.bias": 0.5})
    known = Known()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain = resolve(model, strategies=(known, FxTrace()))
    assert known.asked == ["Gated"] and chain.untraced == []
    # Chain(a, ×2, b): a gets t·(1/2)/(2·1) = 1/4, b gets t·(1/2) = 1/2
    assert _budgets(chain) == pytest.approx({"a.weight": 0.25, "a.bias": 0.25, "b.weight": 0.5, "b.bias": 0.5})


def test_strategies_run_in_order_and_the_last_failure_names_the_fallback() -> None:
    with pytest.warns(UserWarning, match="refused on purpose"):
        refused = resolve(Gated(), strategies=(Refuses(),))
    assert refused.untraced == [("<model> (Gated)", "refused on purpose")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first_wins = resolve(Gated(), strategies=(Known(), Refuses()))
    assert first_wins.untraced == []
    with pytest.warns(UserWarning, match="no strategy recovers"):
        none = resolve(Gated(), strategies=())
    assert _budgets(none)["a.weight"] == pytest.approx(0.5)


class Amplified(Node):
    """``factor · child`` as one node of its own (the library writes it Chain([child, Bond(factor)]))."""

    def __init__(self, child: Node, factor: float) -> None:
        self.child, self.factor = child, factor

    @property
    def mass(self) -> float:  # type: ignore[override]
        return self.child.mass

    @property
    def sensitivity(self) -> float:  # type: ignore[override]
        return self.factor * self.child.sensitivity

    def children(self) -> Sequence[Node]:
        return (self.child,)

    def with_children(self, children: Sequence[Node]) -> Node:
        return Amplified(children[0], self.factor)

    def budgets(self, t: float = 1.0) -> Iterator[tuple[Atom, float]]:
        return self.child.budgets(t / self.factor)

    def norm(self, atom_norm: Callable[[Atom], float]) -> float:
        return self.factor * self.child.norm(atom_norm)

    def terminals(self) -> tuple[list[Atom], bool]:
        return self.child.terminals()


class AmplifiedBlock(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor, self.inner = factor, nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * self.inner(x)

    def modular(self, ctx: Resolver) -> Node:
        return Amplified(ctx.resolve(self.inner), self.factor)


def test_a_new_node_type_is_one_subclass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), AmplifiedBlock(3.0), nn.Tanh(), nn.Linear(3, 2))
    analysis = modnorm.network.analyze(model)
    assert "Amplified" in render(analysis.root)
    # the same network composed by hand with the library's own nodes: Chain(inner, Bond(3))
    a = nn.Linear(3, 3)
    inner = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 3))
    reference = nn.Sequential(a, modnorm.Scale(3.0, inner), nn.Tanh(), nn.Linear(3, 2))
    reference.load_state_dict({k.replace("1.inner.", "1.module."): v for k, v in model.state_dict().items()})
    expected = modnorm.budgets(reference)
    got = {n: i.budget for n, i in analysis.params.items()}
    assert list(got.values()) == pytest.approx(list(expected.values()), rel=1e-12)
    # by hand: the block (mass 2 of 4, then Tanh and a Linear: ν 1) gets 1/2, its inside 1/2 ÷ 3 = 1/6,
    # and the first of its two Linears (followed by ReLU and a Linear: ν 1) half of that
    assert got["1.inner.0.weight"] == pytest.approx(1 / 12) and got["0.weight"] == pytest.approx(1 / 4 / 3)
    tensors = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    renamed = {k.replace("1.inner.", "1.module."): v for k, v in tensors.items()}
    assert modnorm.modular_norm(model, tensors) == pytest.approx(modnorm.modular_norm(reference, renamed), rel=1e-12)
    assert isinstance(Tuple([Amplified(Bond(1.0), 2.0)]).with_children([Bond(1.0)]), Tuple)
