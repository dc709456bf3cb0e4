"""Plain torch.nn models: rules, tracing, fallback, overrides and user-registered layer types."""

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
from modnorm.geometry import Geometry
from modnorm.layers import Stacked
from modnorm.norms import RMS, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv

GELU_SLOPE = 0.5 * (1 + math.erf(1)) + math.sqrt(2) * math.exp(-1) / math.sqrt(2 * math.pi)  # GELU'(√2)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_plain_mlp_matches_modnorm_mlp() -> None:
    plain = nn.Sequential(nn.Linear(5, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))
    assert _no_warnings(modnorm.budgets, plain) == pytest.approx({"0.weight": 1 / 3, "2.weight": 1 / 3, "4.weight": 1 / 3})
    g = modnorm.geometries(plain)
    assert g["0.weight"].role == "hidden" and isinstance(g["0.weight"].norm, Spectral)
    assert g["4.weight"].role == "head" and isinstance(g["4.weight"].norm, RowNorm)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


def test_tracing_a_resnet_style_network() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        BasicBlock(8), BasicBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
    b = _no_warnings(modnorm.budgets, net)
    # hand derivation (convex residual form, L = 2 residual sums): a block is (2/3)·x + (1/3)·f(x), of mass
    # (1/3)·4 and ν (2/3)·1 + (1/3)·1 = 1. μ = 1 + 1 + 4/3 + 4/3 + 1 = 17/3: the stem, its BN and the fc get 3/17;
    # a block gets (4/3)/(17/3) = 4/17, its branch ×3 (undoing the 1/3), split over 4 layers: 3/17.
    assert b == pytest.approx({k: 3 / 17 for k in b})
    g = modnorm.geometries(net)
    assert isinstance(g["3.conv1.weight"].norm, SpectralConv) and g["3.conv1.weight"].role == "conv"
    assert g["3.bn1.weight"].role == "vector" and g["7.weight"].role == "head"


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def test_tracing_a_transformer_block() -> None:
    block = TransformerBlock(8, 2)
    b = _no_warnings(modnorm.budgets, block)
    # masses: ln1 1, attention 3 (in_proj: Q, K, V) + 1 (out_proj), ln2 1, fc1 1, fc2 1. attn(h, h, h) sees h once:
    # the attention branch has ν 1. L = 2 residual sums, each (2/3)·x + (1/3)·f(x): the attention block has mass
    # 5/3 and ν 1, the MLP block mass 3/3 and ν s = 2/3 + GELU_SLOPE/3; μ = 8/3.
    s = 2 / 3 + GELU_SLOPE / 3
    assert b["fc2.weight"] == pytest.approx(3 / 8)  # the MLP block's 3/8, ×3, split in 3
    assert b["fc1.weight"] == pytest.approx(3 / 8 / GELU_SLOPE)
    assert b["ln2.weight"] == pytest.approx(3 / 8 / GELU_SLOPE)
    t = (5 / 8) / s * 3  # the attention branch: its share, over the MLP block's ν, ×3
    assert b["attn.out_proj.weight"] == pytest.approx(t / 5)
    assert b["attn.in_proj_weight"] == pytest.approx(3 * t / 5) and b["attn.in_proj_bias"] == pytest.approx(3 * t / 5)
    assert b["ln1.weight"] == pytest.approx(t / 5)
    assert modnorm.network.structure(block).sensitivity == pytest.approx(s)
    g = modnorm.geometries(block)
    assert {g[n].role for n in g if n.endswith("weight") and "ln" not in n} == {"hidden"}  # two terminal layers: no head
    assert isinstance(g["attn.in_proj_weight"].norm, Stacked)


def test_stacked_norm_is_the_max_over_blocks() -> None:
    W = torch.randn(12, 4, dtype=torch.float64)
    norm, spec = Stacked(Spectral(method="svd"), 3), Spectral(method="svd")
    blocks = W.reshape(3, 4, 4)
    assert float(norm.value(W)) == pytest.approx(max(float(spec.value(b)) for b in blocks))
    assert float(norm.dual(W)) == pytest.approx(sum(float(spec.dual(b)) for b in blocks))
    G = torch.randn(12, 4, dtype=torch.float64)
    assert float((G * norm.lmo(G)).sum()) == pytest.approx(float(norm.dual(G)))
    with pytest.raises(ValueError, match="equal blocks"):
        norm.value(torch.randn(10, 4))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.b(self.a(x))
        return self.a(x)


def test_untraceable_module_falls_back_to_a_flat_tuple_with_a_warning() -> None:
    net = nn.Sequential(nn.Linear(4, 4, bias=False), Branchy())
    with pytest.warns(UserWarning, match=r"composition of 1 module\(s\) could not be recovered \(1 \(Branchy\).*flat tuple.*example_inputs="):
        b = modnorm.budgets(net)
    # fallback: Branchy = Tuple(a, b), μ 2, ν 2 → a and b get (2/3)·(1/2); the first layer (1/3)/2
    assert b == pytest.approx({"0.weight": 1 / 6, "1.a.weight": 1 / 3, "1.b.weight": 1 / 3})
    with pytest.warns(UserWarning):
        assert "1 (Branchy) was not traced" in modnorm.describe(net)


class Bridge(nn.Module):
    """u = A(x); w = B(x + u); v = C(u + w): a Wheatstone bridge, not series-parallel."""

    def __init__(self) -> None:
        super().__init__()
        self.A, self.B, self.C = (nn.Linear(4, 4, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.A(x)
        w = self.B(x + u)
        return self.C(u + w)


def test_non_series_parallel_dataflow_falls_back() -> None:
    with pytest.warns(UserWarning, match="not series-parallel"):
        b = modnorm.budgets(Bridge())
    assert b == pytest.approx({"A.weight": 1 / 3, "B.weight": 1 / 3, "C.weight": 1 / 3})


def test_parameter_free_custom_module_is_traced_for_its_sensitivity() -> None:
    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * 2.0

    b = _no_warnings(modnorm.budgets, nn.Sequential(nn.Linear(3, 3, bias=False), Double(), nn.Linear(3, 3, bias=False)))
    assert b == pytest.approx({"0.weight": 1 / 4, "2.weight": 1 / 2})


class Scaler(nn.Module):
    """A user layer type: y = kernel ⊙ x."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel * x


class LInf(Norm):
    """max |w_i| on vectors; dual Σ|g_i|; lmo sign(g)."""

    ndim = 1

    def value(self, W):
        return W.abs().amax(-1)

    def dual(self, G):
        return G.abs().sum(-1)

    def lmo(self, G):
        return torch.sign(G)


class Mixer(nn.Module):
    """A user layer type with a matrix: y = x K (a weight layer of unknown layout)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.eye(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.kernel


def test_unknown_parameter_raises_an_error_naming_it_and_the_fix() -> None:
    net = nn.Sequential(nn.Linear(3, 3), Mixer(3))
    with pytest.raises(modnorm.GeometryError) as err:
        modnorm.geometries(net)
    msg = str(err.value)
    assert "'1.kernel'" in msg and "Mixer" in msg and "rules.register(Mixer" in msg and "default=" in msg
    # opting into a default
    g = modnorm.geometries(net, default=Geometry(Frobenius(), "adam", "hidden"))
    assert isinstance(g["1.kernel"].norm, Frobenius)
    # or a name override
    rules = modnorm.LayerRules()
    rules.override("*.kernel", norm=Sign(), role="hidden")
    assert isinstance(modnorm.geometries(net, rules=rules)["1.kernel"].norm, Sign)
    # a leaf holding only vectors is a gain module: no error, RMS
    assert isinstance(modnorm.geometries(nn.Sequential(nn.Linear(3, 3), Scaler(3)))["1.kernel"].norm, RMS)


def test_registering_a_user_layer_type_with_a_user_norm() -> None:
    rules = modnorm.LayerRules()
    rules.register(Scaler, {"kernel": Geometry(LInf(), "none", "vector")}, mass=2.0, sensitivity=0.5)
    net = nn.Sequential(nn.Linear(3, 3, bias=False), Scaler(3), nn.Linear(3, 3, bias=False))
    b = modnorm.budgets(net, rules=rules)
    # μ = 1 + 2 + 1 = 4; first layer (1/4)/(0.5·1), scaler 2/4, last 1/4
    assert b == pytest.approx({"0.weight": 1 / 2, "1.kernel": 1 / 2, "2.weight": 1 / 4})
    w = torch.tensor([0.5, -2.0, 1.0])
    assert modnorm.modular_norm(net, {"1.kernel": w}, rules=rules, strict=False) == pytest.approx(2.0 / 0.5)
    # the global registry is untouched: Scaler stays a structural gain module (RMS)
    assert type(modnorm.geometries(net)["1.kernel"].norm) is RMS


def test_global_registration() -> None:
    with modnorm.rules.DEFAULT_RULES.scoped():
        modnorm.rules.register_rule(Scaler, lambda m: {"kernel": Geometry(LInf(), "adam", "vector")})
        modnorm.rules.register_function(torch.tanh, 0.5)
        assert isinstance(modnorm.geometries(Scaler(2))["kernel"].norm, LInf)
        assert modnorm.rules.DEFAULT_RULES.function_sensitivity(torch.tanh) == 0.5
    # the block's registrations are gone, the defaults intact
    assert type(modnorm.geometries(Scaler(2))["kernel"].norm) is RMS
    assert modnorm.rules.DEFAULT_RULES.function_sensitivity(torch.tanh) is None
    fresh = modnorm.rules.default_rules()
    assert fresh is not modnorm.rules.DEFAULT_RULES and fresh.lookup(nn.Linear(2, 3)) is not None


def test_overrides_per_type_and_per_name() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    rules = modnorm.LayerRules()
    rules.register(nn.Linear, lambda m: {"weight": Geometry(Frobenius(), "none", "hidden"), "bias": Geometry(RMS(), "none", "vector")})
    g = modnorm.geometries(net, rules=rules)
    assert isinstance(g["0.weight"].norm, Frobenius) and g["2.weight"].role == "hidden"  # no head rule now
    rules.override("2.weight", role="head", norm=Sign())
    rules.override("*.bias", preconditioner="sania")
    g = modnorm.geometries(net, rules=rules)
    assert isinstance(g["2.weight"].norm, Sign) and g["2.weight"].role == "head"
    assert g["0.bias"].preconditioner == "sania" and g["0.weight"].preconditioner == "none"
    # name overrides apply to modnorm layers too
    from modnorm import layers as L

    r2 = modnorm.LayerRules()
    r2.override("0.weight", preconditioner="none")
    assert modnorm.geometries(modnorm.Sequential(L.Linear(3, 3)), rules=r2)["0.weight"].preconditioner == "none"
    with pytest.raises(TypeError, match="unknown Geometry fields"):
        rules.override("x", colour="red")
    with pytest.raises(TypeError, match="subclass of torch.nn.Module"):
        rules.register(int, {})  # type: ignore[arg-type]


def test_set_mass_tares_a_plain_submodule() -> None:
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)))
    rules = modnorm.LayerRules()
    rules.set_mass("1", 1.0)
    assert modnorm.budgets(net, rules=rules) == pytest.approx({"0.weight": 1 / 2, "1.0.weight": 1 / 4, "1.1.weight": 1 / 4})


def test_root_parameter_read_in_forward() -> None:
    class WithPos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4, bias=False)
            self.pos = nn.Parameter(torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x + self.pos)

    rules = modnorm.LayerRules()
    rules.override("pos", Geometry(RMS(), "adam", "vector"))
    b = modnorm.budgets(WithPos(), rules=rules)
    # (x, pos) in parallel then proj: μ = 2, both 1/2
    assert b == pytest.approx({"proj.weight": 1 / 2, "pos": 1 / 2})


def test_norm_layers_and_embedding_rules() -> None:
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.RMSNorm(4), nn.Linear(4, 4))
    g = modnorm.geometries(model)
    assert g["0.weight"].role == "embedding" and g["0.weight"].norm.layout == "embedding"
    assert {g["1.weight"].role, g["1.bias"].role, g["2.weight"].role} == {"vector"}
    gn = modnorm.geometries(nn.Sequential(nn.Conv1d(2, 4, 1), nn.GroupNorm(2, 4), nn.BatchNorm1d(4)))
    assert gn["1.weight"].role == gn["2.bias"].role == "vector"
    assert gn["0.weight"].norm.kernel_dims == 1


def test_head_detection_needs_two_layers_and_can_be_switched_off() -> None:
    assert modnorm.geometries(nn.Linear(3, 3))["weight"].role == "hidden"
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    assert modnorm.geometries(net)["2.weight"].role == "head"
    assert modnorm.geometries(net, rules=modnorm.LayerRules(auto_head=False))["2.weight"].role == "hidden"


def test_tied_weights_and_unused_modules() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(7, 4)
            self.mid = nn.Linear(4, 4, bias=False)
            self.head = nn.Linear(4, 7, bias=False)
            self.head.weight = self.wte.weight
            self.unused = nn.Linear(4, 4, bias=False)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.mid(self.wte(idx))))

    model = Tied()
    with pytest.warns(UserWarning, match="not reached"):
        b = modnorm.budgets(model)
    assert set(b) == {"wte.weight", "mid.weight", "unused.weight"}
    assert b["wte.weight"] == pytest.approx(1 / 3) and b["mid.weight"] == pytest.approx(1 / 3)
    assert b["unused.weight"] == pytest.approx(1.0)  # resolved as a network of its own
    with pytest.warns(UserWarning):
        assert modnorm.geometries(model)["wte.weight"].role == "embedding"  # first use wins


def test_shape_asserts_and_position_indices_trace() -> None:
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(7, 4), nn.Embedding(8, 4)
            self.head = nn.Linear(4, 7, bias=False)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            b, t = idx.size()
            assert t <= 8, "sequence too long"
            pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
            return self.head(self.wte(idx) + self.wpe(pos))

    b = _no_warnings(modnorm.budgets, TinyLM())
    # (wte, wpe) in parallel (μ 2) then the head: 1/3 each; wpe's input is the positions, not the tokens
    assert b == pytest.approx({"wte.weight": 1 / 3, "wpe.weight": 1 / 3, "head.weight": 1 / 3})
    assert modnorm.network.structure(TinyLM()).sensitivity == pytest.approx(1.0)


def test_parameter_left_out_of_a_rule_is_reported() -> None:
    class Affine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.eye(3))
            self.shift = nn.Parameter(torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight.T + self.shift

    rules = modnorm.LayerRules()
    rules.register(Affine, {"weight": Geometry(Spectral(), "adam", "hidden")})
    with pytest.raises(modnorm.GeometryError, match=r"(?s)'1\.shift'.*rules.register\(Affine, \{'weight': .*'shift'"):
        modnorm.geometries(nn.Sequential(nn.Linear(3, 3), Affine()), rules=rules)
    rules.override("*.shift", Geometry(RMS(), "adam", "vector"))
    b = modnorm.budgets(nn.Sequential(nn.Linear(3, 3), Affine()), rules=rules)
    assert b["1.shift"] == b["1.weight"] == pytest.approx(1 / 2)


class PlainResidual(nn.Module):
    def __init__(self, block: nn.Module, L: float) -> None:
        super().__init__()
        self.block, self.L = block, L

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - 1 / self.L) * x + (1 / self.L) * self.block(x)


@settings(max_examples=20, deadline=None)
@given(
    plan=st.lists(st.tuples(st.sampled_from(["layer", "residual"]), st.sampled_from(["relu", "gelu", "tanh"])), min_size=1, max_size=4),
    L=st.integers(1, 6),
    bias=st.booleans(),
)
def test_tracing_agrees_with_the_declared_composition(plan, L, bias) -> None:
    from modnorm import layers as ML

    acts = {"relu": (nn.ReLU, ML.ReLU), "gelu": (nn.GELU, ML.GELU), "tanh": (nn.Tanh, nn.Tanh)}
    plain: list[nn.Module] = [nn.Linear(3, 4, bias=bias)]
    normed: list[nn.Module] = [ML.Linear(3, 4, bias=bias)]
    for kind, act in plan:
        tp, mp = acts[act]
        if kind == "layer":
            plain += [tp(), nn.Linear(4, 4, bias=bias)]
            normed += [mp(), ML.Linear(4, 4, bias=bias)]
        else:
            plain.append(PlainResidual(nn.Sequential(nn.Linear(4, 4, bias=bias), tp(), nn.Linear(4, 4, bias=bias)), L))
            normed.append(modnorm.Residual(modnorm.Sequential(ML.Linear(4, 4, bias=bias), mp(), ML.Linear(4, 4, bias=bias)), L))
    a, b = modnorm.budgets(nn.Sequential(*plain)), modnorm.budgets(modnorm.Sequential(*normed))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12), k
    ga, gb = modnorm.geometries(nn.Sequential(*plain)), modnorm.geometries(modnorm.Sequential(*normed))
    assert {k: (g.role, type(g.norm)) for k, g in ga.items()} == {k: (g.role, type(g.norm)) for k, g in gb.items()}


def test_traced_operation_sensitivities() -> None:
    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3, bias=False)
            self.b = nn.Linear(3, 3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).T.T / 4.0  # transposes: 1; division by 4: 1/4
            h = torch.sigmoid(h) * 0.5 + torch.zeros_like(h)  # sigmoid 1/4, ×0.5, zeros_like contributes 0
            return self.b(h)

    node = modnorm.network.structure(Ops())
    assert node.sensitivity == pytest.approx(1 / 4 * 1 / 4 * 0.5)
    b = modnorm.budgets(Ops())
    assert b["b.weight"] == pytest.approx(1 / 2) and b["a.weight"] == pytest.approx(1 / 2 / (1 / 32))
    rules = modnorm.LayerRules()
    rules.register_function(torch.sigmoid, 1.0)
    assert modnorm.network.structure(Ops(), rules=rules).sensitivity == pytest.approx(1 / 4 * 0.5)
