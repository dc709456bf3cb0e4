"""modnorm.layers: drop-in torch.nn subclasses with declared geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm import layers as L
from modnorm.geometry import Geometry
from modnorm.norms import RMS, ColNorm, Norm, RowNorm, Spectral, SpectralConv

PAIRS = [
    (lambda: nn.Linear(6, 4), lambda: L.Linear(6, 4)),
    (lambda: nn.Linear(6, 4, bias=False), lambda: L.Linear(6, 4, bias=False)),
    (lambda: nn.Conv2d(3, 5, 3, padding=1), lambda: L.Conv2d(3, 5, 3, padding=1)),
    (lambda: nn.Conv1d(3, 5, 3), lambda: L.Conv1d(3, 5, 3)),
    (lambda: nn.Embedding(10, 4, padding_idx=0), lambda: L.Embedding(10, 4, padding_idx=0)),
    (lambda: nn.LayerNorm(6), lambda: L.LayerNorm(6)),
    (lambda: nn.LayerNorm(6, bias=False), lambda: L.LayerNorm(6, bias=False)),
    (lambda: nn.RMSNorm(6), lambda: L.RMSNorm(6)),
]


def _input(m: nn.Module) -> torch.Tensor:
    if isinstance(m, nn.Embedding):
        return torch.randint(0, 10, (2, 5))
    if isinstance(m, nn.Conv2d):
        return torch.randn(2, 3, 7, 7)
    if isinstance(m, nn.Conv1d):
        return torch.randn(2, 3, 9)
    return torch.randn(2, 6)


@pytest.mark.parametrize("make_torch, make_modnorm", PAIRS)
def test_state_dicts_load_both_ways_and_forward_matches(make_torch, make_modnorm) -> None:
    torch.manual_seed(0)
    plain, normed = make_torch(), make_modnorm()
    assert isinstance(normed, type(plain))
    assert list(plain.state_dict()) == list(normed.state_dict())
    normed.load_state_dict(plain.state_dict())
    x = _input(plain)
    assert torch.equal(plain(x), normed(x))
    other = make_torch()
    other.load_state_dict(make_modnorm().state_dict())


def test_declared_geometries() -> None:
    g = modnorm.geometries(modnorm.Sequential(L.Linear(4, 8), L.ReLU(), L.Linear(8, 8, head=False)))
    assert isinstance(g["0.weight"].norm, Spectral) and g["0.weight"].role == "hidden"
    assert isinstance(g["0.bias"].norm, RMS) and g["0.bias"].role == "vector"
    assert all(x.preconditioner == "adam" for x in g.values())
    assert g["2.weight"].role == "hidden"  # head=False wins over position
    g = modnorm.geometries(modnorm.Sequential(L.Embedding(10, 4), L.LayerNorm(4), L.Conv1d(10, 3, 1), L.RMSNorm(5)))
    assert isinstance(g["0.weight"].norm, ColNorm) and g["0.weight"].norm.layout == "embedding" and g["0.weight"].role == "embedding"
    assert {g["1.weight"].role, g["1.bias"].role, g["3.weight"].role} == {"vector"}
    assert isinstance(g["2.weight"].norm, SpectralConv) and g["2.weight"].norm.kernel_dims == 1 and g["2.weight"].role == "conv"
    g = modnorm.geometries(L.Conv2d(3, 4, 3))
    assert g["weight"].norm.kernel_dims == 2


def test_head_is_the_only_terminal_linear_unless_declared() -> None:
    g = modnorm.geometries(modnorm.Sequential(L.Linear(4, 8), L.ReLU(), L.Linear(8, 3)))
    assert g["0.weight"].role == "hidden"
    assert g["2.weight"].role == "head" and isinstance(g["2.weight"].norm, RowNorm)
    assert g["2.bias"].role == "vector"
    # two terminal linears (a sum of branches): neither is the head
    par = modnorm.Parallel(L.Linear(4, 3), L.Linear(4, 3), combine="sum")
    assert {x.role for x in modnorm.geometries(par).values()} == {"hidden", "vector"}
    assert modnorm.geometries(L.Linear(4, 3, head=True))["weight"].role == "head"


def test_user_norm_subclass_in_a_layer() -> None:
    class MaxRowL1(Norm):
        """‖W‖ = max_i Σ_j |W_ij| (ℓ∞→ℓ∞); lmo picks, per row... here: sign of the largest-dual row only."""

        ndim = 2

        def value(self, W):
            return W.abs().sum(-1).amax(-1)

        def dual(self, G):
            return G.abs().amax(-1).sum(-1)

        def lmo(self, G):
            idx = G.abs().argmax(-1, keepdim=True)
            return torch.zeros_like(G).scatter(-1, idx, torch.sign(G.gather(-1, idx)))

    norm = MaxRowL1()
    layer = L.Linear(5, 3, norm=norm, preconditioner="none")
    model = modnorm.Sequential(layer, L.ReLU(), L.Linear(3, 2))
    g = modnorm.geometries(model)
    assert g["0.weight"].norm is norm and g["0.weight"].preconditioner == "none" and g["0.weight"].role == "hidden"
    W = torch.randn(3, 5, dtype=torch.float64)
    b = modnorm.budgets(model)
    expected = float(W.abs().sum(-1).max()) / b["0.weight"]
    assert modnorm.modular_norm(model, {"0.weight": W}, strict=False) == pytest.approx(expected)
    # normed init puts the weight on the unit sphere of the user's norm
    layer2 = L.Linear(5, 3, norm=norm, init="normed")
    assert float(norm.value(layer2.weight.detach())) == pytest.approx(1.0)


def test_normed_init_puts_weights_on_their_unit_sphere() -> None:
    torch.manual_seed(1)
    lin = L.Linear(8, 12, init="normed")
    s = torch.linalg.svdvals(lin.weight.detach().double())
    assert torch.allclose(s, torch.full_like(s, math.sqrt(12 / 8)), atol=1e-5)  # all σ = √(d_out/d_in)
    assert bool((lin.bias.abs() <= 1 / math.sqrt(8)).all()) and bool(lin.bias.abs().sum() > 0)  # bias keeps torch's init
    emb = L.Embedding(20, 6, padding_idx=3, init="normed")
    rms = emb.weight.detach().pow(2).mean(-1).sqrt()
    assert torch.allclose(rms[torch.arange(20) != 3], torch.ones(19), atol=1e-5) and rms[3] == 0
    conv = L.Conv2d(4, 6, 3, init="normed")
    assert float(SpectralConv(2, method="svd").value(conv.weight.detach().double())) == pytest.approx(1.0, abs=1e-5)
    for p in range(9):  # every kernel position has singular values √(6/4)/9
        s = torch.linalg.svdvals(conv.weight.detach().double().flatten(2)[..., p])
        assert torch.allclose(s, torch.full_like(s, math.sqrt(6 / 4) / 9), atol=1e-6)
    ln = L.LayerNorm(5, init="normed")
    assert torch.equal(ln.weight, torch.ones(5))  # gains keep their unit init


def test_bonds_declare_sensitivity_and_keep_torch_forward() -> None:
    x = torch.linspace(-4, 4, 101)
    assert torch.equal(L.GELU()(x), F.gelu(x))
    # GELU's declared sensitivity is its maximum slope: compare with a finite-difference estimate
    xs = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    slope = (F.gelu(xs[1:]) - F.gelu(xs[:-1])) / (xs[1:] - xs[:-1])
    assert L.GELU().sensitivity == pytest.approx(float(slope.max()), rel=1e-6)
    assert torch.allclose(L.GELU(normalize=True)(x) * L.GELU().sensitivity, F.gelu(x))
    assert L.GELU(normalize=True).sensitivity == 1.0
    silu_slope = (F.silu(xs[1:]) - F.silu(xs[:-1])) / (xs[1:] - xs[:-1])
    assert L.SiLU().sensitivity == pytest.approx(float(silu_slope.max()), rel=1e-6)
    node = modnorm.network.structure(modnorm.Sequential(L.Linear(2, 2), L.GELU(), L.ReLU()))
    assert node.sensitivity == pytest.approx(L.GELU().sensitivity)


def test_norm_layer_without_affine_is_a_bond() -> None:
    model = modnorm.Sequential(L.Linear(4, 4, bias=False), L.RMSNorm(4, elementwise_affine=False), L.Linear(4, 4, bias=False))
    assert modnorm.network.structure(model).mass == 2
    assert modnorm.budgets(model) == pytest.approx({"0.weight": 0.5, "2.weight": 0.5})


def test_attention_declares_modulas_composition() -> None:
    torch.manual_seed(0)
    attn = L.CausalSelfAttention(16, 4)
    b = modnorm.budgets(attn)
    assert b == pytest.approx({"q.weight": 3 / 4, "k.weight": 3 / 4, "v.weight": 3 / 4, "o.weight": 1 / 4})
    assert modnorm.network.structure(attn).sensitivity == pytest.approx(1.0)
    # forward: causal — the output at position t does not depend on inputs after t
    x = torch.randn(2, 6, 16)
    y = attn(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)
    assert torch.allclose(attn(x2)[:, :4], y[:, :4], atol=1e-6)
    # rotary is orthogonal: it preserves norms
    q = torch.randn(1, 2, 5, 8)
    assert torch.allclose(L.rotary(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_bad_layer_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="mass"):
        L.Linear(3, 3, mass=-1)
    with pytest.raises(ValueError, match="sensitivity"):
        L.Linear(3, 3, sensitivity=float("nan"))
    with pytest.raises(TypeError, match="norm must be a modnorm.Norm"):
        L.Linear(3, 3, norm="spectral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init must be one of"):
        L.Embedding(3, 3, init="xavier")
    with pytest.raises(ValueError, match="head must be"):
        L.Linear(3, 3, head="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        L.CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match="factor"):
        L.Scale(0)
    with pytest.raises(TypeError, match="Geometry"):
        from modnorm.composition import Atom

        Atom((("w", torch.zeros(1), "spectral"),))  # type: ignore[arg-type]


def test_preconditioner_option_reaches_every_parameter() -> None:
    g = modnorm.geometries(L.LayerNorm(4, preconditioner="sania"))
    assert {x.preconditioner for x in g.values()} == {"sania"}
    assert isinstance(g["weight"], Geometry)


def test_example_gpts_are_the_same_network() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import gpt_modnorm
    import gpt_torch

    for gain in (False, True):
        torch.manual_seed(0)
        a = gpt_modnorm.GPT(gpt_modnorm.GPTConfig(vocab_size=11, n_layer=2, n_embd=16, n_head=2, norm_gain=gain))
        b = gpt_torch.GPT(gpt_torch.GPTConfig(vocab_size=11, n_layer=2, n_embd=16, n_head=2, norm_gain=gain))
        assert list(a.state_dict()) == list(b.state_dict())
        b.load_state_dict(a.state_dict())
        idx = torch.randint(0, 11, (3, 9))
        logits = a(idx)
        assert logits.shape == (3, 9, 11)
        assert torch.allclose(logits, b(idx), atol=1e-6)
        assert modnorm.budgets(a) == pytest.approx(modnorm.budgets(b, rules=gpt_torch.modnorm_rules(b.cfg)), rel=1e-12)


@pytest.mark.parametrize(
    "plain, normed",
    [(nn.Linear, L.Linear), (nn.Conv1d, L.Conv1d), (nn.Conv2d, L.Conv2d), (nn.Embedding, L.Embedding),
     (nn.LayerNorm, L.LayerNorm), (nn.RMSNorm, L.RMSNorm), (nn.GELU, L.GELU), (nn.SiLU, L.SiLU)],
)
def test_constructor_signatures_extend_torchs(plain, normed) -> None:
    import inspect

    theirs = list(inspect.signature(plain.__init__).parameters.values())
    ours = list(inspect.signature(normed.__init__).parameters.values())
    assert [(p.name, p.default) for p in theirs] == [(p.name, p.default) for p in ours[: len(theirs)]]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):])


def test_layers_deepcopy_and_pickle() -> None:
    import copy
    import io

    model = modnorm.Sequential(L.Linear(3, 4, norm=Spectral(method="svd")), L.GELU(normalize=True), L.Linear(4, 2))
    twin = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(2, 3)
    assert torch.equal(twin(x), model(x)) and torch.equal(loaded(x), model(x))
    assert modnorm.budgets(loaded) == modnorm.budgets(model)
    assert loaded[0].norm_override.method == "svd"
