"""Hutchinson Hessian diagonal against exact Hessians computed here (torch.autograd.functional.hessian)."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import modnorm
from modnorm import Frobenius, Sign, Spectral
from modnorm.optim.hessian import HessianDiagonal, functional_loss, hutchinson_diagonal
from modnorm.optim.catalog import get_preconditioner
from modnorm.optim.preconditioner import StepContext

F64 = torch.float64


def tiny_mlp(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    return model, torch.randn(8, 3, dtype=F64), torch.randn(8, 2, dtype=F64)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Full Hessian of the MSE loss in the flattened parameter vector (reference)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v: torch.Tensor) -> torch.Tensor:
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return ((torch.func.functional_call(model, ps, (x,)) - y) ** 2).mean()

    return torch.autograd.functional.hessian(loss, flat)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 1000))
def test_exact_for_diagonal_quadratic(d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=g, dtype=F64) * 3
    b = torch.randn(d, generator=g, dtype=F64)
    w = {"w": torch.randn(d, generator=g, dtype=F64)}
    est = hutchinson_diagonal(lambda p: 0.5 * (a * p["w"] ** 2).sum() + (b * p["w"]).sum(), w, generator=g)
    torch.testing.assert_close(est["w"], a, rtol=1e-12, atol=1e-12)


def test_unbiased_on_mlp_within_sampling_error() -> None:
    model, x, y = tiny_mlp(0)
    params = {n: p.detach() for n, p in model.named_parameters()}
    H = exact_hessian(model, x, y)
    N = 4000
    est = hutchinson_diagonal(functional_loss(model, lambda out: ((out - y) ** 2).mean(), x), params, samples=N, generator=torch.Generator().manual_seed(1))
    flat = torch.cat([est[n].reshape(-1) for n in params])
    diag = H.diagonal()
    # Var[z_i (Hz)_i] = Σ_{j≠i} H_ij² for Rademacher z.
    std = ((H**2).sum(1) - diag**2).clamp_min(0).sqrt() / N**0.5
    assert ((flat - diag).abs() <= 5 * std + 1e-12).all()
    # …and a single sample is far from exact (the estimator is really random here).
    one = hutchinson_diagonal(functional_loss(model, lambda out: ((out - y) ** 2).mean(), x), params, generator=torch.Generator().manual_seed(2))
    assert (torch.cat([one[n].reshape(-1) for n in params]) - diag).abs().max() > 1e-3


def make_precond(every: int = 2, beta2: float = 0.9, power: float = 0.5):
    model, x, y = tiny_mlp(3)
    params = dict(model.named_parameters())
    loss = functional_loss(model, lambda out: ((out - y) ** 2).mean(), x)
    return HessianDiagonal(loss, params, beta2=beta2, every=every, power=power, eps=1e-9, seed=5), params, loss


def test_ema_refresh_schedule_and_frobenius_sharp() -> None:
    """h = bias-corrected EMA of the estimates at steps 1, 1+k, …; Frobenius sharp = G / max(|h|, ε)."""
    P, params, loss = make_precond(every=2, beta2=0.9)
    states = {n: P.init_state(p, F64) for n, p in params.items()}
    gen = torch.Generator().manual_seed(5)  # same seed as the preconditioner: same z sequence
    h = {n: torch.zeros_like(p) for n, p in params.items()}
    refreshes = 0
    for t in range(1, 6):
        for n in params:  # one bucket per parameter: the estimate is still computed once per step
            ctx = StepContext(step=t, params=[params[n]], names=[n])
            P.update_many([states[n]], [torch.zeros_like(params[n])], t, ctx)
        if (t - 1) % 2 == 0:
            est = hutchinson_diagonal(loss, params, generator=gen)
            h = {n: 0.9 * h[n] + 0.1 * est[n] for n in h}
            refreshes += 1
    assert refreshes == 3
    n = "0.weight"
    G = torch.randn(1, *params[n].shape, dtype=F64)
    want = G / (h[n] / (1 - 0.9**3)).abs().clamp_min(1e-9)
    torch.testing.assert_close(P.norm(Frobenius(), [states[n]], 5).sharp(G), want, rtol=1e-10, atol=1e-12)


def test_spectral_base_lmo_matches_formula() -> None:
    """Any base: D⁻¹ ⊙ polar(D⁻¹ ⊙ G)·s with D = |h|^{1/2}."""
    P, params, _ = make_precond(every=1)
    name = "2.weight"
    states = [P.init_state(params[name], F64)]
    for t in (1, 2):
        P.update_many(states, [torch.zeros_like(params[name])], t, StepContext(step=t, params=[params[name]], names=[name]))
    D = (states[0]["h"] / (1 - 0.9**2)).abs().clamp_min(1e-9).sqrt()
    G = torch.randn(2, 4, dtype=F64)
    U, _, Vh = torch.linalg.svd(G / D, full_matrices=False)
    want = (2 / 4) ** 0.5 * (U @ Vh) / D
    got = P.norm(Spectral(method="svd"), states, 2).lmo(G[None])[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_before_first_estimate_is_the_base_norm() -> None:
    P = HessianDiagonal()  # no loss: estimates are fed by absorb
    s = P.init_state(torch.zeros(3, 4), torch.float32)
    G = torch.randn(1, 3, 4)
    torch.testing.assert_close(P.norm(Sign(), [s], 1).lmo(G), torch.sign(G))
    P.absorb(s, torch.full((3, 4), 4.0))
    torch.testing.assert_close(P.norm(Sign(), [s], 1).lmo(G), torch.sign(G) / 2)


def test_batched_equals_one_at_a_time_and_state_loads() -> None:
    P = HessianDiagonal(beta2=0.5)
    states = [P.init_state(torch.zeros(3, 5, dtype=F64), F64) for _ in range(3)]
    for i, s in enumerate(states):
        for _ in range(i + 1):  # different refresh counts per parameter
            P.absorb(s, torch.rand(3, 5, dtype=F64) + 0.1)
    G = torch.randn(3, 3, 5, dtype=F64)
    for base in (Frobenius(), Spectral(method="svd")):
        batched = P.norm(base, states, 3).sharp(G)
        single = torch.cat([P.norm(base, [s], 3).sharp(G[i : i + 1]) for i, s in enumerate(states)])
        torch.testing.assert_close(batched, single)
    buf = io.BytesIO()
    torch.save(states, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    torch.testing.assert_close(P.norm(Frobenius(), loaded, 3).sharp(G), P.norm(Frobenius(), states, 3).sharp(G))


def test_registered_and_errors() -> None:
    assert isinstance(get_preconditioner("hessian"), HessianDiagonal)
    with pytest.raises(ValueError, match="params="):
        HessianDiagonal(lambda p: p["w"].sum())
    with pytest.raises(ValueError, match="every"):
        HessianDiagonal(every=0)
    with pytest.raises(ValueError, match="eps"):
        HessianDiagonal(eps=0.0)
    P = HessianDiagonal(lambda p: p["w"].sum(), {"w": torch.zeros(2)})
    stranger = torch.zeros(2)
    with pytest.raises(ValueError, match="not among the params"):
        P.update_many([P.init_state(stranger, torch.float32)], [stranger], 1, StepContext(step=1, params=[stranger]))
    with pytest.raises(ValueError, match="exactly one source"):
        modnorm.optimizer([torch.zeros(2, 2, requires_grad=True)], "sophia")
    with pytest.raises(ValueError, match="samples"):
        hutchinson_diagonal(lambda p: p["w"].sum(), {"w": torch.zeros(2)}, samples=0)


def quadratic_problem(seed: int):
    """L(W) = ½ Σ a ⊙ W² + ⟨b, W⟩ on a 3×4 matrix: diagonal Hessian a, minimizer −b/a."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 4, generator=g, dtype=F64) * 9 + 1
    b = torch.randn(3, 4, generator=g, dtype=F64)
    return a, b, (lambda W: 0.5 * (a * W**2).sum() + (b * W).sum())


@pytest.mark.parametrize("source", ["loss_fn", "from_graph"])
def test_sophia_preset_is_diagonal_newton_on_a_diagonal_quadratic(source: str) -> None:
    """One sophia step (β1 = 0, lr = 1) from W: W − ∇L/diag(H) = the minimizer, via both HVP sources."""
    a, b, loss = quadratic_problem(0)
    W = torch.randn(3, 4, dtype=F64, requires_grad=True)
    hp = dict(lr=1.0, momentum=0.0, every=1)
    if source == "loss_fn":
        hp.update(loss_fn=lambda p: loss(p["W"]), loss_params={"W": W})
    else:
        hp.update(from_graph=True)
    opt = modnorm.optimizer([("W", W)], "sophia", **hp)
    opt.zero_grad()
    loss(W).backward(create_graph=source == "from_graph")
    opt.step()
    torch.testing.assert_close(W.detach(), -b / a, rtol=1e-10, atol=1e-12)


def test_sophia_spectral_preset_runs_and_decreases_the_loss() -> None:
    model, x, y = tiny_mlp(4)
    params = dict(model.named_parameters())
    opt = modnorm.optimizer(model, "sophia_spectral", lr=0.02, every=2, ns_method="svd",
                            loss_fn=functional_loss(model, lambda out: ((out - y) ** 2).mean(), x), loss_params=params)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(((model(x) - y) ** 2).mean()) < first
    assert all(float(s["refreshes"]) == 10 for p, s in opt.state.items() if p.ndim == 2 and "refreshes" in s)


def test_sophia_from_graph_checkpoint_roundtrip_continues_identically() -> None:
    a, b, loss = quadratic_problem(1)

    def run(opt, W, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss(W).backward(create_graph=True)
            opt.step()

    W = torch.randn(3, 4, dtype=F64, requires_grad=True)
    opt = modnorm.optimizer([("W", W)], "sophia", lr=0.1, every=2, from_graph=True)
    run(opt, W, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    W2 = W.detach().clone().requires_grad_()
    opt2 = modnorm.optimizer([("W", W2)], "sophia", lr=0.1, every=2, from_graph=True)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    # the Rademacher generator is not part of the state: with a diagonal Hessian every z gives the same estimate
    run(opt, W, 3)
    run(opt2, W2, 3)
    torch.testing.assert_close(W2.detach(), W.detach(), rtol=0, atol=0)
