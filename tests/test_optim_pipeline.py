"""The pipeline's pieces: batching, user recipes, registered preconditioners (D, nested (L,R)∘D,
Hessian-vector products), modular budgets, role routing, rank inference and describe."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modnorm
from modnorm import DNorm, LRNorm
from modnorm.optim import PRECONDITIONERS, Preconditioner, Recipe, UpdateRule, register_preconditioner

pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")


def test_same_shape_matrices_are_orthogonalized_in_one_batched_call(monkeypatch):
    import modnorm.norms as norms

    batches = []
    real = norms.orthogonalize

    def spy(X, *a, **k):
        batches.append(tuple(X.shape))
        return real(X, *a, **k)

    monkeypatch.setattr(norms, "orthogonalize", spy)
    params = [torch.randn(6, 4, requires_grad=True) for _ in range(3)] + [torch.randn(4, 6, requires_grad=True)]
    opt = modnorm.optimizer(params, "muadam")
    sum((p**2).sum() for p in params).backward()
    opt.step()
    assert sorted(batches) == [(1, 4, 6), (3, 6, 4)]


def test_user_recipe_sign_lmo_in_adam_norm():
    """Recipe: Sign base × adam D × adam_ema × lmo → D⁻¹ ⊙ sign(D⁻¹ ⊙ M̂) = sign(M̂)/(√V̂+ε)^½."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    rule = UpdateRule(norm="sign", preconditioner="adam", preconditioner_options={"beta2": 0.9, "eps": 1e-3},
                momentum="adam_ema", beta=0.5, mode="lmo")
    opt = modnorm.optimizer([w], Recipe(default=rule), lr=0.1)
    M = torch.zeros_like(w)
    V = torch.zeros_like(w)
    for t in range(1, 6):
        opt.zero_grad()
        (w.sin() * torch.arange(15.0, dtype=torch.float64).view(5, 3)).sum().backward()
        G = w.grad
        M, V = 0.5 * M + 0.5 * G, 0.9 * V + 0.1 * G * G
        Mh, Vh = M / (1 - 0.5**t), V / (1 - 0.9**t)
        expected = w.detach() - 0.1 * torch.sign(Mh) / (Vh.sqrt() + 1e-3).sqrt()
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-13, atol=1e-13)


class FixedScale(Preconditioner):
    """A registered user preconditioner with a per-parameter ``update``: D = c + (number of steps)."""

    name = "fixed_scale"

    def __init__(self, c: float = 1.0) -> None:
        self.c = c

    def init_state(self, param, state_dtype):
        return {"count": torch.zeros((), dtype=state_dtype)}

    def update(self, state, grad, step):
        state["count"] += 1

    def norm(self, base, states, step):
        D = torch.stack([self.c + s["count"] for s in states]).view(-1, *([1] * base.ndim))
        return DNorm(base, D)


class Rotated(Preconditioner):
    """SOAP-shaped nesting: an orthogonal (L, R) rotation around an Adam-like DNorm."""

    name = "rotated_adam"

    def __init__(self, Q: torch.Tensor, P: torch.Tensor) -> None:
        self.Q, self.P = Q, P

    def init_state(self, param, state_dtype):
        return {"v_rot": torch.zeros_like(param, dtype=state_dtype)}

    def update(self, state, grad, step):
        state["v_rot"].mul_(0.9).addcmul_(self.Q.T @ grad @ self.P, self.Q.T @ grad @ self.P, value=0.1)

    def norm(self, base, states, step):
        D = (torch.stack([s["v_rot"] for s in states]) / (1 - 0.9**step)).sqrt().add(1e-8).sqrt()
        # ‖W‖ = ‖D ⊙ (Qᵀ W P)‖: L = Qᵀ, R = P, so L⁻¹ = Q and R⁻¹ = Pᵀ
        return LRNorm(DNorm(base, D), L_inv=self.Q, R_inv=self.P.T)


@pytest.fixture
def registered():
    with PRECONDITIONERS.scoped():
        register_preconditioner("fixed_scale", FixedScale)
        register_preconditioner("rotated_adam", Rotated)
        yield


def test_registered_preconditioners_per_param_update_and_nested_lr_d(registered):
    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    opt = modnorm.optimizer([w], Recipe(default=UpdateRule(norm="frobenius", preconditioner="fixed_scale",
                                                     preconditioner_options={"c": 2.0}, mode="sharp")), lr=0.1)
    for t in range(1, 4):
        opt.zero_grad()
        (w**3).sum().backward()
        expected = w.detach() - 0.1 * w.grad / (2.0 + t) ** 2  # Frobenius sharp in ‖D⊙·‖: G/D²
        opt.step()
        torch.testing.assert_close(w.detach(), expected, rtol=1e-14, atol=1e-14)

    Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    P = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    w2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    rule = UpdateRule(norm="frobenius", preconditioner="rotated_adam", preconditioner_options={"Q": Q, "P": P}, mode="sharp")
    opt = modnorm.optimizer([w2], Recipe(default=rule), lr=0.1)
    V = torch.zeros(4, 3, dtype=torch.float64)
    for t in range(1, 4):
        opt.zero_grad()
        (w2**3).sum().backward()
        Gr = Q.T @ w2.grad @ P
        V = 0.9 * V + 0.1 * Gr * Gr
        expected = w2.detach() - 0.1 * Q @ (Gr / ((V / (1 - 0.9**t)).sqrt() + 1e-8)) @ P.T
        opt.step()
        torch.testing.assert_close(w2.detach(), expected, rtol=1e-12, atol=1e-12)


class HessianProbe(Preconditioner):
    """Uses ctx.hvp: D² = |H·1| (exact diagonal for a separable loss)."""

    name = "hessian_probe"
    needs_hvp = True

    def init_state(self, param, state_dtype):
        return {"h": torch.zeros_like(param, dtype=state_dtype)}

    def update_many(self, states, grads, step, ctx):
        hv = ctx.hvp([torch.ones_like(g) for g in grads])
        for s, h in zip(states, hv):
            s["h"].copy_(h.abs())

    def norm(self, base, states, step):
        return DNorm(base, torch.stack([s["h"] for s in states]).sqrt())


def test_preconditioner_gets_hessian_vector_products_through_the_step():
    with PRECONDITIONERS.scoped():
        register_preconditioner("hessian_probe", HessianProbe)
        a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
        w = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
        opt = modnorm.optimizer([w], Recipe(default=UpdateRule(norm="frobenius", preconditioner="hessian_probe", mode="sharp")), lr=1.0)

        def closure():
            opt.zero_grad()
            loss = 0.5 * (a * w**2).sum() + (w**4).sum() / 12  # H = diag(a + w²)
            loss.backward(create_graph=True)
            return loss

        w0 = w.detach().clone()
        opt.step(closure)
        newton = w0 - (a * w0 + w0**3 / 3) / (a + w0**2)  # one Newton step
        torch.testing.assert_close(w.detach(), newton, rtol=1e-13, atol=1e-13)
        opt.zero_grad()
        (w**2).sum().backward()  # no graph: a clear error
        with pytest.raises(RuntimeError, match="create_graph=True"):
            opt.step()


def test_modular_budgets_scale_the_step_and_budgets_false_disables_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(), nn.Linear(5, 5, bias=False), nn.ReLU(), nn.Linear(5, 2, bias=False))
    table = modnorm.budgets(model)
    assert all(math.isclose(b, 1 / 3) for b in table.values())
    x = torch.randn(7, 3)
    moves = {}
    for flag in (True, False, None):
        m = nn.Sequential(*[nn.Linear(l.in_features, l.out_features, bias=False) if isinstance(l, nn.Linear) else l for l in model])
        m.load_state_dict(model.state_dict())
        opt = modnorm.optimizer(m, "sgd", lr=0.1, **({} if flag is None else {"budgets": flag}))
        m(x).pow(2).sum().backward()
        before = [p.detach().clone() for p in m.parameters()]
        opt.step()
        moves[flag] = [(p.detach() - b) for p, b in zip(m.parameters(), before)]
    for with_b, without, default in zip(moves[True], moves[False], moves[None]):
        torch.testing.assert_close(with_b, without / 3)
        torch.testing.assert_close(default, without, rtol=0, atol=0)  # the default is one lr for all layers
    assert modnorm.optim.OptimizerConfig(preset="sgd").budgets is False


def test_muon_routes_embedding_head_and_vectors_to_adamw():
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 11))
    opt = modnorm.optimizer(model, "muon", budgets=False)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert rows["0.weight"]["role"] == "embedding" and rows["3.weight"]["role"] == "head"
    assert rows["1.weight"]["role"] == "hidden" and rows["1.weight"]["mode"] == "lmo"
    for name, p in model.named_parameters():
        keys = set(opt.state[p])
        assert keys == ({"step", "momentum_buffer"} if name == "1.weight" else {"step", "exp_avg", "exp_avg_sq"}), name


def test_rank_inference_and_construction_errors():
    params = [("conv", torch.randn(4, 3, 3, 3, requires_grad=True)), ("w", torch.randn(4, 3, requires_grad=True)),
              ("b", torch.randn(4, requires_grad=True)), ("s", torch.randn((), requires_grad=True))]
    rows = {r["name"]: r for r in modnorm.optimizer(params, "scion").describe_rows()}
    assert rows["conv"]["norm"].startswith("SpectralConv") and rows["conv"]["role"] == "conv"
    assert rows["w"]["norm"].startswith("Spectral(") and rows["w"]["role"] == "hidden"
    assert rows["b"]["norm"] == "RMS()" and rows["s"]["norm"] == "RMS()"  # a 0-D parameter is a 1-vector
    with pytest.raises(ValueError, match="'b'.*spectral"):
        modnorm.optimizer(params, Recipe(default=UpdateRule(norm="spectral")))
    # polar options given to scion replace a declared spectral norm's method, keeping its declared scale
    geo = {"w": modnorm.Geometry(modnorm.Spectral(scale="original"))}
    opt = modnorm.ModnormOptimizer(params, "scion", geometries=geo, ns_method="svd")
    rows = {r["name"]: r for r in opt.describe_rows()}
    assert rows["w"]["norm"] == "Spectral(scale='original', method='svd', steps=None)"
    assert "method='svd'" in rows["conv"]["norm"] and rows["b"]["norm"] == "RMS()"


def test_describe_integrates_with_model_describe():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = modnorm.optimizer(model, "muadam")
    text = modnorm.describe(model, overrides=opt.describe_overrides())
    assert "lr_scale" in text and "inner=1.0, outer=0.25" in text
    assert "muadam" in opt.describe() and "0.weight" in opt.describe()


@settings(max_examples=30, deadline=None)
@given(
    norm=st.sampled_from(["frobenius", "sign", "spectral", "declared", "colnorm", "rownorm"]),
    precond=st.sampled_from(["none", "adam", "sania", "adagrad"]),
    mode=st.sampled_from(["lmo", "sharp"]),
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_every_composition_descends_and_lmo_ignores_gradient_scale(norm, precond, mode, shape, scale, seed):
    """For any base norm × preconditioner × mode: ⟨G, ΔW⟩ < 0 (a descent step), finite, and in lmo
    mode without a preconditioner, the step does not depend on the gradient's scale."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(shape, generator=g, dtype=torch.float64)
    rule = UpdateRule(norm=norm, preconditioner=precond, mode=mode, ns_method="svd")
    steps = []
    for c in (1.0, scale):
        w = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        w.grad = c * G
        modnorm.optimizer([w], Recipe(default=rule), lr=0.1).step()
        steps.append(w.detach().clone())
    for step, c in zip(steps, (1.0, scale)):
        assert torch.isfinite(step).all()
        assert (c * G * step).sum() < 0
    if mode == "lmo" and precond == "none":
        torch.testing.assert_close(steps[0], steps[1], rtol=1e-9, atol=1e-12)
