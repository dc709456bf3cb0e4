"""Matrix preconditioners against float64 NumPy references written here (eigh per formula)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import modnorm
from modnorm import Frobenius, Sign, Spectral
from modnorm.optim.kl_shampoo import KLShampoo
from modnorm.optim.catalog import get_preconditioner
from modnorm.optim.matrix_preconditioners import SOAP, Shampoo, SPlus

F64 = torch.float64


# ----------------------------------------------------------------------------- references


def mat_pow(S: np.ndarray, p: float, eps: float) -> np.ndarray:
    """(S + εI)^p for symmetric PSD S; for ε = 0 and p < 0 the pseudo-inverse power."""
    lam, Q = np.linalg.eigh((S + S.T) / 2)
    lam = np.clip(lam, 0.0, None) + eps
    if eps == 0.0 and p < 0:
        keep = lam > lam.max() * len(lam) * np.finfo(float).eps
        d = np.where(keep, np.where(keep, lam, 1.0) ** p, 0.0)
    else:
        d = lam**p
    return (Q * d) @ Q.T


def eigvecs_desc(S: np.ndarray) -> np.ndarray:
    return np.linalg.eigh((S + S.T) / 2)[1][:, ::-1]


def grads(T: int, m: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((m, n)) * rng.uniform(0.1, 3.0) for _ in range(T)]


def run(precond, gs: list[np.ndarray], copies: int = 1) -> list[dict]:
    states = [precond.init_state(torch.zeros(gs[0].shape, dtype=F64), F64) for _ in range(copies)]
    for t, g in enumerate(gs, start=1):
        for s in states:
            precond.update(s, torch.from_numpy(g), t)
    return states


def due(t: int, k: int) -> bool:
    return (t - 1) % k == 0


# ----------------------------------------------------------------------------- Shampoo


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 6),
    n=st.integers(1, 6),
    T=st.integers(1, 6),
    beta2=st.sampled_from([None, 0.0, 0.9]),
    k=st.sampled_from([1, 2, 3]),
    sides=st.sampled_from(["both", "left", "right"]),
    eps=st.sampled_from([0.0, 1e-3]),
    seed=st.integers(0, 10_000),
)
def test_shampoo_sharp_matches_formula(m, n, T, beta2, k, sides, eps, seed) -> None:
    power = 0.25 if sides == "both" else 0.5
    P = Shampoo(beta2=beta2, eps=eps, power=power, sides=sides, precondition_frequency=k, root_dtype=F64)
    gs = grads(T, m, n, seed)
    A, B = np.zeros((m, m)), np.zeros((n, n))
    PA, PB = np.eye(m), np.eye(n)
    for t, g in enumerate(gs, start=1):
        if beta2 is None:
            A, B = A + g @ g.T, B + g.T @ g
        else:
            A, B = beta2 * A + (1 - beta2) * g @ g.T, beta2 * B + (1 - beta2) * g.T @ g
        if due(t, k):
            c = 1.0 if beta2 in (None, 0.0) else 1.0 / (1 - beta2**t)
            PA, PB = mat_pow(c * A, -power, eps), mat_pow(c * B, -power, eps)
    if sides == "left":
        PB = np.eye(n)
    if sides == "right":
        PA = np.eye(m)
    M = np.random.default_rng(seed + 1).standard_normal((m, n))
    want = PA @ M @ PB
    got = P.norm(Frobenius(), run(P, gs), T).sharp(torch.from_numpy(M)[None])[0]
    scale = np.abs(want).max() + 1e-300
    np.testing.assert_allclose(got.numpy() / scale, want / scale, atol=1e-8)


def shampoo_one_sided(**options):
    """One-sided Shampoo (what the shampoo_one_sided preset configures): R = I, the step A^{-1/2} G."""
    return Shampoo(sides="left", power=0.5, **options)


def test_one_sided_factory_defaults() -> None:
    P = get_preconditioner("shampoo", sides="left", power=0.5)
    assert P.sides == "left" and P.power == 0.5
    gs = grads(4, 5, 3, 0)
    A = sum(g @ g.T for g in gs)
    M = np.random.default_rng(1).standard_normal((5, 3))
    P = shampoo_one_sided(eps=1e-4, root_dtype=F64)
    got = P.norm(Frobenius(), run(P, gs), 4).sharp(torch.from_numpy(M)[None])[0].numpy()
    np.testing.assert_allclose(got, mat_pow(A, -0.5, 1e-4) @ M, rtol=1e-9, atol=1e-12)


def test_shampoo_spectral_base_matches_formula() -> None:
    """Theorem 1 with the spectral base: L⁻¹ polar(L⁻ᵀ M R⁻ᵀ) R⁻¹, L = A^{1/8}."""
    gs = grads(5, 6, 4, 3)
    A, B = sum(g @ g.T for g in gs), sum(g.T @ g for g in gs)
    P = Shampoo(eps=1e-3, root_dtype=F64)
    Li, Ri = mat_pow(A, -1 / 8, 1e-3), mat_pow(B, -1 / 8, 1e-3)
    M = np.random.default_rng(2).standard_normal((6, 4))
    U, _, Vt = np.linalg.svd(Li @ M @ Ri, full_matrices=False)
    want = Li @ (np.sqrt(6 / 4) * U @ Vt) @ Ri
    got = P.norm(Spectral(method="svd"), run(P, gs), 5).lmo(torch.from_numpy(M)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------- KL-Shampoo


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("power", [0.5, 1.0])
def test_kl_shampoo_matches_formula(k: int, power: float) -> None:
    m, n, T, b2, eps, init = 5, 3, 6, 0.8, 1e-6, 0.5
    gs = grads(T, m, n, 7)
    Sa, Sb = init * np.eye(m), init * np.eye(n)
    Sa_c, Sb_c = Sa.copy(), Sb.copy()  # the factors as of the last refresh
    for t, g in enumerate(gs, start=1):
        Sa, Sb = (
            b2 * Sa + (1 - b2) / n * g @ np.linalg.inv(Sb_c + eps * np.eye(n)) @ g.T,
            b2 * Sb + (1 - b2) / m * g.T @ np.linalg.inv(Sa_c + eps * np.eye(m)) @ g,
        )
        if due(t, k):
            Sa_c, Sb_c = Sa.copy(), Sb.copy()
    M = np.random.default_rng(8).standard_normal((m, n))
    want = mat_pow(Sa_c, -power, eps) @ M @ mat_pow(Sb_c, -power, eps)
    P = KLShampoo(beta2=b2, eps=eps, power=power, init=init, precondition_frequency=k, root_dtype=F64)
    got = P.norm(Frobenius(), run(P, gs), T).sharp(torch.from_numpy(M)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- SOAP and SPlus


@pytest.mark.parametrize("k", [1, 3])
def test_soap_matches_formula(k: int) -> None:
    # Square: every refresh sees full-rank statistics, so the eigenbasis is unique up to signs.
    m, n, T, b2, sb2, eps = 5, 5, 7, 0.95, 0.9, 1e-8
    gs = grads(T, m, n, 11)
    A, B, V = np.zeros((m, m)), np.zeros((n, n)), np.zeros((m, n))
    for t, g in enumerate(gs, start=1):
        A, B = sb2 * A + (1 - sb2) * g @ g.T, sb2 * B + (1 - sb2) * g.T @ g
        if due(t, k):
            QL, QR = eigvecs_desc(A), eigvecs_desc(B)
        V = b2 * V + (1 - b2) * (QL.T @ g @ QR) ** 2
    M = np.random.default_rng(12).standard_normal((m, n))
    want = QL @ ((QL.T @ M @ QR) / (np.sqrt(V / (1 - b2**T)) + eps)) @ QR.T
    P = SOAP(beta2=b2, eps=eps, shampoo_beta2=sb2, precondition_frequency=k, root_dtype=F64)
    got = P.norm(Frobenius(), run(P, gs), T).sharp(torch.from_numpy(M)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("shape_scale", [True, False])
def test_splus_matches_formula(shape_scale: bool) -> None:
    m, n, T, sb2, k = 5, 7, 5, 0.9, 2
    gs = grads(T, m, n, 21)
    A, B = np.zeros((m, m)), np.zeros((n, n))
    QL, QR = np.eye(m), np.eye(n)
    for t, g in enumerate(gs, start=1):
        if t > 1 and due(t - 1, k):  # refreshed after step t-1: the current gradient is not in the basis
            QL, QR = eigvecs_desc(A), eigvecs_desc(B)
        A, B = sb2 * A + (1 - sb2) * g @ g.T, sb2 * B + (1 - sb2) * g.T @ g
    M = np.random.default_rng(22).standard_normal((m, n))
    c = 2 / (m + n) if shape_scale else 1.0
    want = c * QL @ np.sign(QL.T @ M @ QR) @ QR.T
    P = SPlus(shampoo_beta2=sb2, precondition_frequency=k, shape_scale=shape_scale, root_dtype=F64)
    got = P.norm(Sign(), run(P, gs), T).lmo(torch.from_numpy(M)[None])[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- batching, state, errors

ALL = {
    "shampoo": lambda: Shampoo(eps=1e-6, root_dtype=F64, precondition_frequency=2),
    "shampoo:one_sided": lambda: shampoo_one_sided(eps=1e-6, root_dtype=F64),
    "kl_shampoo": lambda: KLShampoo(root_dtype=F64),
    "soap": lambda: SOAP(root_dtype=F64, precondition_frequency=2),
    "splus": lambda: SPlus(root_dtype=F64, precondition_frequency=2),
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("base", [Frobenius(), Sign(), Spectral(method="svd")], ids=repr)
def test_batched_equals_one_at_a_time(name: str, base) -> None:
    P = ALL[name]()
    rng = np.random.default_rng(5)
    states = [P.init_state(torch.zeros(4, 6, dtype=F64), F64) for _ in range(3)]
    for t in range(1, 5):
        for s in states:
            P.update(s, torch.from_numpy(rng.standard_normal((4, 6))), t)
    M = torch.from_numpy(rng.standard_normal((3, 4, 6)))
    batched = P.norm(base, states, 4).lmo(M)
    single = torch.cat([P.norm(base, [s], 4).lmo(M[i : i + 1]) for i, s in enumerate(states)])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)
    assert not torch.equal(batched[0], batched[1])


@pytest.mark.parametrize("name", sorted(ALL))
def test_bucket_update_equals_one_at_a_time(name: str) -> None:
    """update_many over a stack (one bmm / eigh per bucket) = update per parameter.

    Square shapes: the statistics are full rank, so eigenbases are unique up to signs."""
    P = ALL[name]()
    rng = np.random.default_rng(6)
    bucket = [P.init_state(torch.zeros(4, 4, dtype=F64), F64) for _ in range(3)]
    single = [P.init_state(torch.zeros(4, 4, dtype=F64), F64) for _ in range(3)]
    for t in range(1, 5):
        gs = [torch.from_numpy(rng.standard_normal((4, 4))) for _ in range(3)]
        P.update_many(bucket, gs, t, None)
        for s, g in zip(single, gs):
            P.update(s, g, t)
    M = torch.from_numpy(rng.standard_normal((3, 4, 4)))
    for a, b in zip(bucket, single):
        for key in ("A", "B", "Sa", "Sb", "exp_avg_sq", "A_inv_root", "B_inv_root"):
            if key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P.norm(Frobenius(), bucket, 4).sharp(M), P.norm(Frobenius(), single, 4).sharp(M), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ALL))
def test_registered_and_state_loads_weights_only(name: str) -> None:
    assert type(get_preconditioner(name.split(":")[0])) is type(ALL[name]())  # "name:variant": a configuration of name
    P = ALL[name]()
    state = run(P, grads(3, 4, 5, 9))[0]
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert set(loaded) == set(state)
    M = torch.randn(1, 4, 5, dtype=F64)
    torch.testing.assert_close(P.norm(Frobenius(), [loaded], 3).sharp(M), P.norm(Frobenius(), [state], 3).sharp(M))


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_gradient_gives_zero_direction(name: str) -> None:
    P = ALL[name]()
    states = run(P, [np.zeros((3, 4))] * 2)
    out = P.norm(Frobenius(), states, 2).sharp(torch.zeros(1, 3, 4, dtype=F64))
    assert torch.isfinite(out).all() and (out == 0).all()


def test_bad_input_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="matrix parameter"):
        Shampoo().init_state(torch.zeros(5), torch.float32)
    with pytest.raises(ValueError, match="beta2"):
        Shampoo(beta2=1.0)
    with pytest.raises(ValueError, match="eps"):
        SOAP(eps=-1.0)
    with pytest.raises(ValueError, match="precondition_frequency"):
        SPlus(precondition_frequency=0)
    with pytest.raises(ValueError, match="sides"):
        Shampoo(sides="top")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root_dtype"):
        KLShampoo(root_dtype=torch.float16)
    with pytest.raises(ValueError, match="init"):
        KLShampoo(init=0.0)


# ----------------------------------------------------------------------------- presets through modnorm.optimizer


def test_shampoo_preset_steps_follow_the_formula() -> None:
    """Two steps of the shampoo preset (momentum 0): W ← W − lr·A_t^{-1/4} G_t B_t^{-1/4}."""
    import modnorm

    rng = np.random.default_rng(30)
    X, Y = rng.standard_normal((16, 5)), rng.standard_normal((16, 4))
    W0 = rng.standard_normal((4, 5))
    W = torch.tensor(W0, requires_grad=True)
    opt = modnorm.optimizer([("W", W)], "shampoo", lr=0.1, momentum=0.0, eps=1e-6, root_dtype="float64")
    Wr, A, B = W0.copy(), np.zeros((4, 4)), np.zeros((5, 5))
    for _ in range(2):
        opt.zero_grad()
        (0.5 * ((torch.from_numpy(X) @ W.mT - torch.from_numpy(Y)) ** 2).sum()).backward()
        opt.step()
        G = (X @ Wr.T - Y).T @ X
        A, B = A + G @ G.T, B + G.T @ G
        Wr = Wr - 0.1 * mat_pow(A, -0.25, 1e-6) @ G @ mat_pow(B, -0.25, 1e-6)
    np.testing.assert_allclose(W.detach().numpy(), Wr, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("preset", ["shampoo", "shampoo_one_sided", "kl_shampoo", "soap", "splus"])
def test_presets_train_a_small_mlp_and_checkpoint(preset: str) -> None:
    import modnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    lr = {"splus": 0.05, "soap": 3e-3}.get(preset, 1e-2)
    opt = modnorm.optimizer(model, preset, lr=lr, precondition_frequency=2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    hidden = [s for p, s in opt.state.items() if p.ndim == 2 and ("QL" in s or "A_inv_root" in s or "B_inv_root" in s or "Qa" in s)]
    assert hidden, "no parameter got the matrix preconditioner"
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt.load_state_dict(torch.load(buf, weights_only=True))


def test_splus_preset_follows_the_reference_update() -> None:
    """A float64 port of SPlus's step: M ← lerp(M, G, 1-β1); for the hidden matrix
    W ← W − lr·c·(Q_L sign(Q_Lᵀ M Q_R) Q_Rᵀ + λW), c = 2/(m+n), with Q = I at step 1 and the
    basis refreshed from A, B after the update (every k steps); other parameters
    W ← W − lr·0.001·(sign(M) + λW). The first step is exactly c·sign(G) (no round-off noise)."""
    m, n, T, b1, sb2, k, lr, wd = 5, 5, 6, 0.9, 0.99, 2, 0.1, 0.05  # square: full-rank statistics, a unique basis
    rng = np.random.default_rng(31)
    W0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    gs = [(rng.standard_normal((m, n)), rng.standard_normal(m)) for _ in range(T)]
    W, b = W0.copy(), b0.copy()
    M, Mb, A, B, QL, QR = np.zeros((m, n)), np.zeros(m), np.zeros((m, m)), np.zeros((n, n)), np.eye(m), np.eye(n)
    c = 2 / (m + n)
    Wt = torch.tensor(W0, requires_grad=True)
    bt = torch.tensor(b0, requires_grad=True)
    opt = modnorm.optimizer([("w", Wt), ("b", bt)], "splus", lr=lr, momentum=b1, shampoo_beta2=sb2,
                            precondition_frequency=k, weight_decay=wd, root_dtype="float64")
    for t, (g, gb) in enumerate(gs, start=1):
        M, Mb = M + (1 - b1) * (g - M), Mb + (1 - b1) * (gb - Mb)
        W = W - lr * c * (QL @ np.sign(QL.T @ M @ QR) @ QR.T + wd * W)
        b = b - lr * 1e-3 * (np.sign(Mb) + wd * b)
        A, B = sb2 * A + (1 - sb2) * g @ g.T, sb2 * B + (1 - sb2) * g.T @ g
        if due(t, k):
            QL, QR = eigvecs_desc(A), eigvecs_desc(B)
        Wt.grad, bt.grad = torch.from_numpy(g), torch.from_numpy(gb)
        opt.step()
        if t == 1:
            np.testing.assert_array_equal(np.sign(W0 - Wt.detach().numpy() - lr * c * wd * W0), np.sign(g))
        np.testing.assert_allclose(Wt.detach().numpy(), W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bt.detach().numpy(), b, rtol=0, atol=1e-14)


def soap_reference_port(W0, gs, lr, b1, b2, sb2, eps, k):
    """SOAP's published step in float64: the first call only sets GG and Q = eigh(GG); then
    t = 1, 2, …: rotate, V and M EMAs, W ← W − lr·√(1-b2^t)/(1-b1^t)·Q_L[(Q_Lᵀ M Q_R)/(√V + ε)]Q_Rᵀ,
    GG update, and after steps k, 2k, … a sorted power-iteration + QR refresh (V permuted)."""
    W = W0.copy()
    m, n = W.shape
    L, R, M, V = np.zeros((m, m)), np.zeros((n, n)), np.zeros((m, n)), np.zeros((m, n))
    L, R = (1 - sb2) * gs[0] @ gs[0].T, (1 - sb2) * gs[0].T @ gs[0]
    QL, QR = eigvecs_desc(L), eigvecs_desc(R)
    out, moments = [W.copy()], [M.copy()]
    for t, g in enumerate(gs[1:], start=1):
        V = b2 * V + (1 - b2) * (QL.T @ g @ QR) ** 2
        M = b1 * M + (1 - b1) * g
        step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        W = W - step * QL @ ((QL.T @ M @ QR) / (np.sqrt(V) + eps)) @ QR.T
        L, R = sb2 * L + (1 - sb2) * g @ g.T, sb2 * R + (1 - sb2) * g.T @ g
        if t % k == 0:
            for side in ("L", "R"):
                S, Q = (L, QL) if side == "L" else (R, QR)
                order = np.argsort(-np.diag(Q.T @ S @ Q), kind="stable")
                V = V[order, :] if side == "L" else V[:, order]
                Q = np.linalg.qr(S @ Q[:, order])[0]
                QL, QR = (Q, QR) if side == "L" else (QL, Q)
        out.append(W.copy())
        moments.append(M.copy())
    return out, moments


def test_soap_reference_option_follows_the_published_update() -> None:
    m, n, T, lr, b1, b2, sb2, eps, k = 5, 5, 9, 3e-3, 0.95, 0.95, 0.95, 1e-8, 3
    rng = np.random.default_rng(41)
    W0 = rng.standard_normal((m, n))
    gs = [rng.standard_normal((m, n)) for _ in range(T)]
    want, moments = soap_reference_port(W0, gs, lr, b1, b2, sb2, eps, k)
    W = torch.tensor(W0, requires_grad=True)
    opt = modnorm.optimizer([("w", W)], "soap", lr=lr, momentum=b1, beta2=b2, shampoo_beta2=sb2, eps=eps,
                            precondition_frequency=k, weight_decay=0.0, root_dtype="float64", reference=True)
    for t, (g, expected, M) in enumerate(zip(gs, want, moments)):
        W.grad = torch.from_numpy(g)
        opt.step()
        np.testing.assert_allclose(W.detach().numpy(), expected, rtol=0, atol=1e-12)
        if t:  # the published code keeps the momentum in the parameter's basis (rotated each step), as modnorm does
            np.testing.assert_allclose(opt.state[W]["exp_avg"].numpy(), M, rtol=1e-12, atol=1e-15)
    assert int(opt.state[W]["step"]) == T
