"""Layer coverage without registration: block-structured norms, grouped/transposed convs,
recurrent gates, gain modules, raw parameters, tied tables, heads, declared norms in presets.

References are independent: float64 SVDs of the blocks written out here, brute-force
power iteration of the convolution, permutations written by hand.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modnorm
from modnorm import layers as L
from modnorm.blocks import Stacked, Transposed, block_shape, inner, rewrap
from modnorm.norms import RMS, ColNorm, RowNorm, Spectral, SpectralConv

SVD = dict(ns_method="svd")


def _rms_gain(M: torch.Tensor) -> torch.Tensor:
    """RMS→RMS operator norm of a (d_out, d_in) matrix: √(d_in/d_out)·σ_max, from an SVD."""
    return torch.linalg.svdvals(M).amax(-1) * math.sqrt(M.shape[-1] / M.shape[-2])


def _scion_update(model: nn.Module, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """−(ΔW)/(lr·budget) of one scion step with exact polar factors and lr 1: the declared LMO."""
    opt = modnorm.optimizer(model, "scion", lr=1.0, momentum=0.0, **SVD)
    budgets = {r["name"]: r["budget"] for r in opt.describe_rows()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    return {n: (before[n] - p.detach()) / budgets[n] for n, p in model.named_parameters()}


# ---------------------------------------------------------------- block norms


@settings(max_examples=25, deadline=None)
@given(blocks=st.integers(1, 4), rows=st.integers(1, 4), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_block_norm_laws_against_blockwise_svd(blocks: int, rows: int, cols: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(blocks * rows, cols, dtype=torch.float64, generator=g)
    svd = Spectral(method="svd")
    norm = Stacked(Transposed(svd), blocks)  # blocks of rows, each a (cols, rows) map stored transposed
    parts = [G[b * rows:(b + 1) * rows].T for b in range(blocks)]
    s = [math.sqrt(p.shape[0] / p.shape[1]) for p in parts]
    assert float(norm.value(G)) == pytest.approx(max(float(torch.linalg.svdvals(p)[0]) / si for p, si in zip(parts, s)))
    assert float(norm.dual(G)) == pytest.approx(sum(float(torch.linalg.svdvals(p).sum()) * si for p, si in zip(parts, s)))
    U = norm.lmo(G)
    assert float((G * U).sum()) == pytest.approx(float(norm.dual(G)))  # ⟨G, lmo(G)⟩ = dual(G)
    assert float(norm.value(U)) == pytest.approx(1.0)
    assert torch.allclose(norm.sharp(G), norm.dual(G) * U)


def test_block_norms_pass_the_norm_laws() -> None:
    modnorm.check_norm(Stacked(Transposed(Spectral(method="svd")), 3), [(6, 4), (2, 9, 5)], max_examples=10)
    modnorm.check_norm(Stacked(SpectralConv(2, method="svd"), 2), [(4, 3, 2, 2)], max_examples=10)
    modnorm.check_norm(RMS(ndim=3), [(4, 1, 1), (2, 3, 1, 5)], max_examples=10)


def test_block_helpers() -> None:
    n = Stacked(Transposed(SpectralConv(2)), 4)
    assert block_shape(n, (8, 6, 3, 3)) == (6, 2, 3, 3)
    assert isinstance(inner(n), SpectralConv)
    r = rewrap(n, SpectralConv(2, scale="none"))
    assert isinstance(r, Stacked) and r.blocks == 4 and inner(r).spectral.scale == "none"
    with pytest.raises(ValueError, match="equal blocks"):
        Stacked(Spectral(), 3).value(torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2 dims"):
        Transposed(RMS())


# ---------------------------------------------------------------- grouped and transposed convolutions


def _per_group_positions(W: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in/g, *k) → (g, K, out/g, in/g): the map of every group at every kernel position."""
    out, ing = W.shape[:2]
    return W.reshape(groups, out // groups, ing, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("c_in,c_out,groups", [(16, 16, 16), (8, 12, 4), (6, 6, 1)])
def test_grouped_conv_update_obeys_the_per_group_norm(c_in: int, c_out: int, groups: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False).double()
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(c_out, 2, 1, bias=False).double())
    G = torch.randn_like(conv.weight)
    U = _scion_update(net, {"0.weight": G, "2.weight": torch.randn_like(net[2].weight)})["0.weight"]
    K = 9
    Ub, Gb = _per_group_positions(U, groups), _per_group_positions(G, groups)
    gains = _rms_gain(Ub)
    # every group at every position has RMS→RMS norm exactly 1/K (full rank): the declared unit ball's boundary
    assert torch.allclose(gains, torch.full_like(gains, 1 / K), rtol=1e-10)
    # ⟨G, U⟩ is the dual norm: Σ over groups and positions of (s/K)·‖G_jp‖_nuclear, s = √(d_out/d_in) per group
    s = math.sqrt((c_out // groups) / (c_in // groups))
    assert float((G * U).sum()) == pytest.approx(float(torch.linalg.svdvals(Gb).sum()) * s / K, rel=1e-10)


def _conv_gain(weight: torch.Tensor, groups: int, size: int = 8, iters: int = 60) -> float:
    """RMS→RMS operator norm of x ↦ conv2d(x, weight, padding=1, groups) by power iteration on AᵀA."""
    c_in = weight.shape[1] * groups
    x = torch.randn(1, c_in, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(iters):
        x = x.requires_grad_(True)
        y = F.conv2d(x, weight, padding=1, groups=groups)
        (g,) = torch.autograd.grad(0.5 * (y * y).sum(), x)  # AᵀA x
        x = (g / g.norm()).detach()
    y = F.conv2d(x, weight, padding=1, groups=groups)
    return float(y.norm() / x.norm()) * math.sqrt(c_in / weight.shape[0])


def test_depthwise_conv_update_has_rms_gain_at_most_one() -> None:
    """A gradient concentrated on one channel: the dense per-position treatment (one (C, 1)
    matrix per position) gives gain ≈ √C = 4 at 16 channels; per group it is ≤ 1."""
    torch.manual_seed(1)
    C = 16
    net = nn.Sequential(nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), nn.ReLU(), nn.Conv2d(C, 2, 1, bias=False)).double()
    grads = {n: 0.01 * torch.randn_like(p) for n, p in net.named_parameters()}
    grads["0.weight"][0] += 1.0
    U = _scion_update(net, grads)["0.weight"]
    assert _conv_gain(U, groups=C) <= 1.0 + 1e-6
    dense = SpectralConv(2, method="svd").lmo(grads["0.weight"])  # the old geometry: one (C, 1) matrix per position
    assert _conv_gain(dense, groups=C) > 3.5
    assert "Stacked(SpectralConv" in repr(modnorm.geometries(net)["0.weight"].norm)


@pytest.mark.parametrize("preset", ["muon", "muadam", "scion"])
def test_matrix_presets_keep_the_declared_groups(preset: str) -> None:
    net = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    rows = {r["name"]: r for r in modnorm.optimizer(net, preset).describe_rows()}
    assert rows["0.weight"]["norm"].startswith("Stacked(") and "blocks=8" in rows["0.weight"]["norm"]


def test_conv_transpose_update_is_the_permuted_conv_update() -> None:
    """ConvTranspose2d(in, out, groups) stores (in, out/g, k, k); its per-group maps are the
    transposes. The Conv2d holding W'[j·o_g + o, i] = W[j·i_g + i, o] gets the same update, permuted."""
    torch.manual_seed(2)
    c_in, c_out, g = 8, 12, 2
    i_g, o_g = c_in // g, c_out // g
    tconv = nn.ConvTranspose2d(c_in, c_out, 3, groups=g, bias=False).double()
    conv = nn.Conv2d(c_in, c_out, 3, groups=g, bias=False).double()  # weight (c_out, i_g, 3, 3)

    def permute(W: torch.Tensor) -> torch.Tensor:  # (c_in, o_g, k, k) → (c_out, i_g, k, k)
        return W.reshape(g, i_g, o_g, 3, 3).transpose(1, 2).reshape(c_out, i_g, 3, 3).contiguous()

    G = torch.randn_like(tconv.weight)
    tail = lambda: nn.Conv2d(c_out, 2, 1, bias=False).double()  # noqa: E731
    t_net, c_net = nn.Sequential(tconv, nn.ReLU(), tail()), nn.Sequential(conv, nn.ReLU(), tail())
    head_g = torch.randn_like(t_net[2].weight)
    Ut = _scion_update(t_net, {"0.weight": G, "2.weight": head_g})["0.weight"]
    Uc = _scion_update(c_net, {"0.weight": permute(G), "2.weight": head_g})["0.weight"]
    assert torch.allclose(permute(Ut), Uc, rtol=1e-12, atol=1e-14)
    assert repr(modnorm.geometries(t_net)["0.weight"].norm).startswith("Stacked(Transposed(SpectralConv")


# ---------------------------------------------------------------- recurrent layers and attention


@pytest.mark.parametrize("kind,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_weights_are_gate_blocks(kind: str, gates: int) -> None:
    torch.manual_seed(3)
    rnn = getattr(nn, kind)(5, 6, num_layers=2).double()
    grads = {n: torch.randn_like(p) for n, p in rnn.named_parameters()}
    U = _scion_update(rnn, grads)
    geos = modnorm.geometries(rnn)
    for name in ("weight_ih_l0", "weight_hh_l1"):
        blocks = U[name].reshape(gates, 6, -1)
        assert torch.allclose(_rms_gain(blocks), torch.ones(gates, dtype=torch.float64), rtol=1e-10), name
        assert geos[name].role == "hidden"
    assert geos["bias_ih_l0"].role == "vector"
    assert modnorm.network.structure(rnn).mass == 2.0


def test_multihead_attention_blocks_and_muon_shape_factor() -> None:
    """in_proj (3E, E) is three E×E maps: muon's shape factor √max(1, d_out/d_in) is per block (1), not √3."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
    mha = nn.MultiheadAttention(8, 2)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.attn = net, mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.net(x)
            return self.attn(h, h, h)[0]

    rows = {r["name"]: r for r in modnorm.optimizer(M(), "muon").describe_rows()}
    r = rows["attn.in_proj_weight"]
    assert r["norm"].startswith("Stacked(") and r["lr_scale"] == pytest.approx(r["budget"])


# ---------------------------------------------------------------- structural detection and raw parameters


class HFStyleConv1D(nn.Module):
    """transformers' Conv1D layout: weight (nx, nf), y = x W + b."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class ScaleNorm(nn.Module):
    """A normalization layer of an unknown library: a gain only."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()


class SSMBlock(nn.Module):
    """A state-space-like block with raw parameters: A_log (d, n), D (d), a layer scale (d, 1, 1)."""

    def __init__(self, d: int = 6, n: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.A_log = nn.Parameter(torch.randn(d, n))
        self.D = nn.Parameter(torch.ones(d))
        self.gamma = nn.Parameter(torch.full((d, 1, 1), 1e-6))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x) * self.A_log.exp().sum(-1) + self.D * x + self.cls[0, 0]
        return h * self.gamma.flatten()


@pytest.mark.filterwarnings("ignore:modnorm. the composition")
def test_structural_layers_and_raw_parameters_need_no_registration() -> None:
    net = nn.Sequential(HFStyleConv1D(8, 4), ScaleNorm(8), SSMBlock(8), nn.Linear(8, 3))
    g = modnorm.geometries(net)
    assert repr(g["0.weight"].norm).startswith("Transposed(Spectral(") and g["0.weight"].role == "hidden"
    assert g["1.g"].role == "vector" and type(g["1.g"].norm) is RMS
    assert g["2.A_log"].role == "embedding" and isinstance(g["2.A_log"].norm, ColNorm)
    assert g["2.D"].role == g["2.gamma"].role == g["2.cls"].role == "vector"
    assert g["2.gamma"].norm.ndim == 3 and g["2.cls"].norm.ndim == 3  # one vector over all dims
    # the RMS over all dims of a (d, 1, 1) gain: ‖γ‖₂/√d, LMO √d·γ/‖γ‖₂
    gamma = torch.randn(8, 1, 1, dtype=torch.float64)
    assert float(g["2.gamma"].norm.value(gamma)) == pytest.approx(float(gamma.norm() / math.sqrt(8)))
    opt = modnorm.optimizer(net, "muon")  # tables go to the AdamW route, never orthogonalized
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert rows["2.A_log"]["norm"].startswith("Frobenius")


def test_conv1d_like_update_is_the_transposed_linear_update() -> None:
    torch.manual_seed(4)
    c = HFStyleConv1D(6, 4).double()
    lin = nn.Linear(4, 6).double()
    with torch.no_grad():
        lin.weight.copy_(c.weight.T)
        lin.bias.copy_(c.bias)
    G = torch.randn(4, 6, dtype=torch.float64)
    gb = torch.randn(6, dtype=torch.float64)
    for preset in ("muon", "muadam", "scion", "adamw"):
        a, b = HFStyleConv1D(6, 4).double(), nn.Linear(4, 6).double()
        with torch.no_grad():
            a.weight.copy_(c.weight), a.bias.copy_(c.bias), b.weight.copy_(lin.weight), b.bias.copy_(lin.bias)
        oa, ob = modnorm.optimizer(a, preset), modnorm.optimizer(b, preset)
        for _ in range(3):
            a.weight.grad, a.bias.grad = G.clone(), gb.clone()
            b.weight.grad, b.bias.grad = G.T.contiguous(), gb.clone()
            oa.step(), ob.step()
        assert torch.equal(a.weight.detach().T, b.weight.detach()), preset
        assert torch.equal(a.bias.detach(), b.bias.detach()), preset


class RawLinearMaps(nn.Module):
    """Raw matrices used as linear maps in a traceable forward: x @ A (A stored (in, out)),
    F.linear(h, B), h @ C.T (both (out, in)), and a table P added to the activations."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.A = nn.Parameter(torch.randn(6, 5))
        self.B = nn.Parameter(torch.randn(3, 5))
        self.C = nn.Parameter(torch.randn(3, 3))
        self.P = nn.Parameter(torch.randn(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.inp(x) @ self.A, self.B) @ self.C.T + self.P


def test_raw_matrices_used_as_linear_maps_are_hidden_in_their_layout() -> None:
    net = RawLinearMaps().double()
    g = modnorm.geometries(net)
    assert isinstance(g["A"].norm, Transposed) and g["A"].role == "hidden"
    assert type(g["B"].norm) is Spectral and type(g["C"].norm) is Spectral
    assert g["P"].role == "embedding"  # added, not multiplied: a table
    U = _scion_update(net, {n: torch.randn_like(p) for n, p in net.named_parameters()})
    # x @ A maps 6 → 5: the (5, 6) map Aᵀ has every singular value √(5/6) in the unit-RMS→RMS LMO
    assert torch.allclose(torch.linalg.svdvals(U["A"].T), torch.full((5,), math.sqrt(5 / 6), dtype=torch.float64))
    assert torch.allclose(_rms_gain(U["B"]), torch.tensor(1.0, dtype=torch.float64))


def test_unknown_leaf_weight_still_needs_a_declaration() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    with pytest.raises(modnorm.GeometryError, match="'1.w'"):
        modnorm.geometries(nn.Sequential(nn.Linear(3, 3), Odd()))
    assert modnorm.geometries(nn.Sequential(nn.EmbeddingBag(5, 3), nn.Linear(3, 3)))["0.weight"].role == "embedding"


# ---------------------------------------------------------------- tied tables and heads


class TiedLM(nn.Module):
    """The head is reached first in the composition order of its children, then the table."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 7, bias=False)
        self.mid = nn.Linear(4, 4)
        self.wte = nn.Embedding(7, 4)
        self.head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.sum() < 0:  # value-dependent control flow: no trace, children composed in order
            return idx
        return self.head(torch.relu(self.mid(self.wte(idx))))


def test_tied_table_is_an_embedding_whatever_the_order() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = modnorm.geometries(TiedLM())
        rows = {r["name"]: r for r in modnorm.optimizer(TiedLM(), "muon").describe_rows()}
    assert g["head.weight"].role == "embedding" and g["head.weight"].norm.layout == "embedding"
    assert rows["head.weight"]["norm"].startswith("Frobenius")  # AdamW route, not orthogonalized


def test_head_found_by_name_when_the_composition_shows_none() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(3, 4)
            self.classifier = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.classifier(torch.relu(self.body(x)))
            return self.classifier(self.body(x))

    with pytest.warns(UserWarning, match="could not be recovered"):
        g = modnorm.geometries(Net())
    assert g["classifier.weight"].role == "head" and isinstance(g["classifier.weight"].norm, RowNorm)
    assert g["body.weight"].role == "hidden"


def test_get_output_embeddings_names_the_head() -> None:
    class Net(nn.Sequential):
        def get_output_embeddings(self) -> nn.Module:
            return self[0]

    net = Net(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4))  # the declared head wins over position
    g = modnorm.geometries(net)
    assert g["0.weight"].role == "head" and g["2.weight"].role == "hidden"


# ---------------------------------------------------------------- declared norms in presets


def test_declared_norms_are_honoured_or_the_override_is_stated() -> None:
    def net() -> nn.Module:
        return modnorm.Sequential(L.Linear(3, 4, norm=ColNorm()), L.ReLU(), L.Linear(4, 2))

    for preset in ("muon", "muadam", "scion"):  # matrix presets use the declared ColNorm
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rows = {r["name"]: r for r in modnorm.optimizer(net(), preset).describe_rows()}
        assert rows["0.weight"]["norm"].startswith("ColNorm") and rows["0.weight"]["declared"] == "", preset
    with pytest.warns(UserWarning, match=r"'adamw' replaces the norm declared for 1 parameter.*0\.weight: declared ColNorm"):
        opt = modnorm.optimizer(net(), "adamw")
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert rows["0.weight"]["declared"].startswith("ColNorm") and rows["2.weight"]["declared"] == ""
    assert "declared" in opt.describe().splitlines()[1]
    model_table = modnorm.describe(net(), overrides=opt.describe_overrides())
    assert "declared" in model_table.splitlines()[0] and "ColNorm(layout='linear')" in model_table
    with warnings.catch_warnings():  # default declarations: no warning for any preset
        warnings.simplefilter("error")
        modnorm.optimizer(modnorm.Sequential(L.Linear(3, 4), L.ReLU(), L.Linear(4, 2)), "adamw")


def test_modnorm_conv_declares_groups() -> None:
    g = modnorm.geometries(modnorm.Sequential(L.Conv2d(4, 4, 3, groups=2), L.ReLU(), L.Conv2d(4, 2, 1)))
    assert isinstance(g["0.weight"].norm, Stacked) and g["0.weight"].norm.blocks == 2
    L.Conv2d(4, 4, 3, groups=4, init="normed")  # the normed init acts per group
