"""The composition algebra: golden budgets, depth independence, and the modular norm's rules."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modnorm
from modnorm import layers as L
from modnorm.composition import Atom, Bond, Chain, Tared, Tuple, scaled
from modnorm.geometry import Geometry
from modnorm.norms import Frobenius

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


# -- golden budgets ------------------------------------------------------------------------

def test_bias_free_three_layer_mlp_gives_each_layer_one_third() -> None:
    mlp = modnorm.Sequential(L.Linear(5, 16, bias=False), L.ReLU(), L.Linear(16, 16, bias=False), L.ReLU(), L.Linear(16, 3, bias=False))
    assert modnorm.budgets(mlp) == pytest.approx({"0.weight": 1 / 3, "2.weight": 1 / 3, "4.weight": 1 / 3}, rel=1e-12)


def modula_gpt(n_blocks: int, d: int = 32, heads: int = 4, vocab: int = 11) -> nn.Module:
    """modula's GPT(…, blocks_mass=5) composed from modnorm layers, written out in the test:
    out ∘ blocks ∘ embed, blocks = ((1−1/2N)·Id + (1/2N)·mlp) ∘ ((1−1/2N)·Id + (1/2N)·att) repeated N
    times and tared to mass 5, att = W ∘ (1/3)·Apply ∘ (V, scores(Q, K)), mlp = Linear ∘ GELU/1.1289 ∘ Linear."""
    L2 = 2 * n_blocks
    blocks = []
    for _ in range(n_blocks):
        blocks.append(modnorm.Residual(L.CausalSelfAttention(d, heads), L2))
        mlp = modnorm.Sequential(L.Linear(d, 4 * d, bias=False), L.GELU(normalize=True), L.Linear(4 * d, d, bias=False))
        blocks.append(modnorm.Residual(mlp, L2))
    return modnorm.Sequential(L.Embedding(vocab, d), modnorm.Sequential(*blocks, mass=5), L.Linear(d, vocab, bias=False))


@pytest.mark.parametrize("depth", [1, 4, 16])
def test_modula_gpt_golden_budgets_at_every_depth(depth: int) -> None:
    b = modnorm.budgets(modula_gpt(depth))
    assert b.pop("0.weight") == pytest.approx(1 / 7)
    assert b.pop("2.weight") == pytest.approx(1 / 7)
    for name, value in b.items():
        expected = 5 / 7 if name.rsplit(".", 2)[-2] in ("q", "k", "v") else 5 / 21
        assert value == pytest.approx(expected, rel=1e-12), name
    assert len(b) == 6 * depth


@pytest.mark.parametrize("depth", [1, 4, 16])
def test_example_gpts_reproduce_the_golden_budgets(depth: int) -> None:
    import gpt_modnorm
    import gpt_torch

    a = gpt_modnorm.GPT(gpt_modnorm.GPTConfig(n_layer=depth, n_embd=32, n_head=4, vocab_size=13))
    cfg = gpt_torch.GPTConfig(n_layer=depth, n_embd=32, n_head=4, vocab_size=13)
    b = gpt_torch.GPT(cfg)
    ba, bb = modnorm.budgets(a), modnorm.budgets(b, rules=gpt_torch.modnorm_rules(cfg))
    assert ba.keys() == bb.keys()
    for name in ba:
        assert ba[name] == pytest.approx(bb[name], rel=1e-12), name
    assert ba["wte.weight"] == pytest.approx(1 / 7) and ba["lm_head.weight"] == pytest.approx(1 / 7)
    assert ba["blocks.0.block.1.q.weight"] == pytest.approx(5 / 7)
    assert ba["blocks.1.block.1.2.weight"] == pytest.approx(5 / 21)


def residual_net(depth: int, width: int = 8, stack_mass: float = 3.0) -> nn.Module:
    blocks = [
        modnorm.Residual(modnorm.Sequential(L.Linear(width, width), L.ReLU(), L.Linear(width, width)), depth)
        for _ in range(depth)
    ]
    return modnorm.Sequential(L.Linear(4, width), modnorm.Sequential(*blocks, mass=stack_mass), L.Linear(width, 2))


def test_residual_budgets_do_not_change_with_depth() -> None:
    # derivation: total mass 1 + 3 + 1; every sensitivity is 1, so in/out get 1/5 and the stack 3/5;
    # block i gets (3/5)/depth, the residual multiplies by depth, the block's two layers split it: 3/10.
    for depth in (1, 3, 9):
        b = modnorm.budgets(residual_net(depth))
        assert b["0.weight"] == pytest.approx(1 / 5) and b["2.weight"] == pytest.approx(1 / 5)
        for i in range(depth):
            assert b[f"1.{i}.block.0.weight"] == pytest.approx(3 / 10)
            assert b[f"1.{i}.block.2.bias"] == pytest.approx(3 / 10)


def test_plain_residual_without_tare_shrinks_early_layers() -> None:
    # x + f(x) has sensitivity 2: the layer before k such blocks gets a budget divided by 2^k.
    def net(k: int) -> nn.Module:
        return modnorm.Sequential(L.Linear(4, 4, bias=False), *[modnorm.Parallel(L.Linear(4, 4, bias=False), nn.Identity(), combine="sum") for _ in range(k)])

    for k in (1, 2, 3):
        b = modnorm.budgets(net(k))
        assert b["0.weight"] == pytest.approx(1 / (k + 1) / 2**k)


# -- the algebra against an independent, binary reference ----------------------------------

def _ref(node) -> tuple[float, float, list[tuple[object, float]]]:
    """(mass, sensitivity, [(atom, weight)]) with ‖w‖ = max weight·‖w_atom‖, from the *binary* rules
    of the paper folded pairwise: composition M2∘M1 and tuple (M1, M2)."""
    if isinstance(node, Atom):
        return node.mass, node.sensitivity, [(node, 1.0)]
    if isinstance(node, Bond):
        return 0.0, node.sensitivity, []
    if isinstance(node, Tared):
        m, s, terms = _ref(node.child)
        return (node.total if m > 0 else 0.0), s, terms
    parts = [_ref(c) for c in node.items]
    m1, s1, t1 = parts[0]
    for m2, s2, t2 in parts[1:]:
        mu = m1 + m2
        if isinstance(node, Chain):  # (w1, w2) ↦ max(ν2·(μ/μ1)·‖w1‖, (μ/μ2)·‖w2‖)
            a, b = (s2 * mu / m1 if m1 else math.inf), (mu / m2 if m2 else math.inf)
            s = s1 * s2
        else:  # tuple: max_i (μ/μ_i)·‖w_i‖
            a, b = (mu / m1 if m1 else math.inf), (mu / m2 if m2 else math.inf)
            s = s1 + s2
        m1, s1, t1 = mu, s, [(x, w * a) for x, w in t1] + [(x, w * b) for x, w in t2]
    return m1, s1, t1


_GEO = Geometry(Frobenius(1), "none", "vector")


@st.composite
def trees(draw, depth: int = 0):
    kind = draw(st.sampled_from(["atom", "bond", "chain", "tuple", "tared", "scaled"] if depth < 3 else ["atom", "bond"]))
    if kind == "atom":
        p = nn.Parameter(torch.zeros(1))
        return Atom((("w", p, _GEO),), draw(st.floats(0.25, 4)), draw(st.floats(0.25, 3)), name="a")
    if kind == "bond":
        return Bond(draw(st.floats(0.25, 3)))
    if kind == "tared":
        return Tared(draw(trees(depth + 1)), draw(st.floats(0.5, 6)))
    if kind == "scaled":
        return scaled(draw(st.floats(0.1, 3)), draw(trees(depth + 1)))
    items = draw(st.lists(trees(depth + 1), min_size=1, max_size=3))
    return Chain(items) if kind == "chain" else Tuple(items)


@settings(max_examples=60, deadline=None)
@given(tree=trees(), data=st.data())
def test_modular_norm_follows_the_rules(tree, data) -> None:
    atoms = list(tree.atoms())
    values = {id(a): data.draw(st.floats(0, 5)) for a in atoms}
    got = tree.norm(lambda a: values[id(a)])
    mass, sens, terms = _ref(tree)
    assert tree.mass == pytest.approx(mass) and tree.sensitivity == pytest.approx(sens)
    expected = max([0.0] + [w * values[id(a)] if values[id(a)] else 0.0 for a, w in terms])
    assert got == pytest.approx(expected, rel=1e-9)
    if tree.mass > 0:
        # budgets are the dual scaling: ‖w_k‖ = b_k for every atom gives modular norm exactly 1
        b = {id(a): t for a, t in tree.budgets()}
        for a, w in terms:
            assert b[id(a)] == pytest.approx(1 / w, rel=1e-9)
        if any(t > 0 for t in b.values()):
            assert tree.norm(lambda a: b[id(a)]) == pytest.approx(1.0, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(2, 6), min_size=2, max_size=4), seed=st.integers(0, 1000))
def test_modular_norm_of_a_model_is_the_max_of_norm_over_budget(widths, seed) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [L.Linear(a, b), L.GELU()]
    model = modnorm.Sequential(*layers[:-1])
    budgets = modnorm.budgets(model)
    geos = modnorm.geometries(model)
    tensors = {n: torch.randn_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    expected = max(float(geos[n].norm.value(t)) / budgets[n] for n, t in tensors.items())
    assert modnorm.modular_norm(model, tensors) == pytest.approx(expected, rel=1e-9)
    # each layer is one atom: its norm is the max over weight and bias
    k = len(widths) - 2
    w, bias = tensors[f"{2 * k}.weight"], tensors[f"{2 * k}.bias"]
    layer_norm = max(float(geos[f"{2 * k}.weight"].norm.value(w)), float(torch.linalg.vector_norm(bias) / math.sqrt(bias.numel())))
    assert modnorm.modular_norm(model, {f"{2 * k}.weight": w, f"{2 * k}.bias": bias}, strict=False) == pytest.approx(layer_norm / budgets[f"{2 * k}.weight"])


def test_scalar_multiplication_divides_the_budget_and_multiplies_sensitivity() -> None:
    inner = modnorm.Sequential(L.Linear(3, 3, bias=False), L.ReLU())
    model = modnorm.Sequential(L.Linear(3, 3, bias=False), modnorm.Scale(0.5, inner), L.Linear(3, 3, bias=False))
    b = modnorm.budgets(model)
    # masses 1, 1, 1; the scaled middle has ν = 0.5 → first layer 1/3 / (0.5·1); middle (1/3)/0.5
    assert b["0.weight"] == pytest.approx(2 / 3)
    assert b["1.module.0.weight"] == pytest.approx(2 / 3)
    assert b["2.weight"] == pytest.approx(1 / 3)
    x = torch.randn(2, 3)
    assert torch.allclose(model[1](x), 0.5 * inner(x))


def test_parallel_splits_by_mass_and_adds_sensitivities() -> None:
    par = modnorm.Parallel(L.Linear(3, 3, bias=False), modnorm.Sequential(L.Linear(3, 3, bias=False), L.Linear(3, 3, bias=False)), combine="sum")
    model = modnorm.Sequential(L.Linear(3, 3, bias=False), par)
    b = modnorm.budgets(model)
    # par: μ = 3, ν = 1 + 1 = 2; model μ = 4 → first layer (1/4)/2, branch 1 gets (3/4)·(1/3), branch 2's layers (3/4)(2/3)/2
    assert b["0.weight"] == pytest.approx(1 / 8)
    assert b["1.branches.0.weight"] == pytest.approx(1 / 4)
    assert b["1.branches.1.0.weight"] == pytest.approx(1 / 4) and b["1.branches.1.1.weight"] == pytest.approx(1 / 4)
    x = torch.randn(2, 3)
    assert torch.allclose(par(x), par.branches[0](x) + par.branches[1](x))
    tup = modnorm.Parallel(nn.Identity(), nn.Identity())
    assert isinstance(tup(x), tuple) and len(tup(x)) == 2


def test_residual_forward_and_validation() -> None:
    block = L.Linear(3, 3)
    res = modnorm.Residual(block, 4)
    x = torch.randn(5, 3)
    assert torch.allclose(res(x), 0.75 * x + 0.25 * block(x))
    with pytest.raises(ValueError, match="L must be"):
        modnorm.Residual(block, 0.5)
    with pytest.raises(ValueError, match="mass"):
        modnorm.Sequential(block, mass=-1)


def test_shared_parameter_gets_its_smallest_budget() -> None:
    lin = L.Linear(3, 3, bias=False)
    model = modnorm.Sequential(lin, L.ReLU(), lin, L.Linear(3, 3, bias=False))
    b = modnorm.budgets(model)
    assert set(b) == {"0.weight", "3.weight"}
    assert b["0.weight"] == pytest.approx(1 / 3)  # both uses get 1/3; the chain has mass 3


def test_mass_zero_module_is_rejected_by_budgets() -> None:
    model = modnorm.Sequential(L.Linear(3, 3, mass=0.0), L.Linear(3, 3))
    with pytest.raises(ValueError, match="positive mass"):
        modnorm.budgets(model)


def test_modular_norm_input_errors() -> None:
    model = modnorm.Sequential(L.Linear(3, 3, bias=False))
    with pytest.raises(KeyError, match="not parameters"):
        modnorm.modular_norm(model, {"nope": torch.zeros(3, 3)})
    with pytest.raises(KeyError, match="strict=False"):
        modnorm.modular_norm(model, {})
    assert modnorm.modular_norm(model, {}, strict=False) == 0.0


def test_residual_norm_is_block_norm_over_L_and_scale_multiplies() -> None:
    block = L.Linear(3, 3, bias=False)
    W = {"block.weight": torch.randn(3, 3, dtype=torch.float64)}
    inner = float(_spectral_value(W["block.weight"]))
    assert modnorm.modular_norm(modnorm.Residual(block, 4), W) == pytest.approx(inner / 4)
    assert modnorm.modular_norm(modnorm.Scale(3.0, block), {"module.weight": W["block.weight"]}) == pytest.approx(3 * inner)


def _spectral_value(W: torch.Tensor) -> torch.Tensor:
    """√(d_in/d_out)·σ_max, written out."""
    return torch.linalg.svdvals(W)[0] * math.sqrt(W.shape[1] / W.shape[0])
