"""KL-Shampoo ``reference=True`` against a float64 port of the authors' published step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modnorm
from modnorm.optim.kl_shampoo import KLShampoo


def kl_shampoo_reference_port(W0, gs, lr, b1, b2, eps, init, k, wd=0.0):
    """The published KL-Shampoo step in float64, written with inverse roots s = d^{-1/2} as stored there.

    Call 0: S_a = (1-b2)/n·g gᵀ, S_b = (1-b2)/m·gᵀ g, Q = eigenvectors (descending), s = init^{-1/2};
    no update. Call t = 1, 2, …: M ← b1 M + (1-b1) g; U = Q_a[(Q_aᵀ M Q_b) ⊙ r/(1 + ε r)]Q_bᵀ with
    r = s_a s_bᵀ; S_a ← b2 S_a + (1-b2)/n·g Q_b diag(s_b²) Q_bᵀ gᵀ (S_b alike, old s); the
    eigenvalues d = s⁻² ← b2 d + (1-b2)·mean of (Q_aᵀ g Q_b ⊙ other side's s)², s clamped at
    max(10, min(dim, 4000)); after t = k, 2k, …: Q ← qr(S Q); W ← W − lr U, then W ← W − lr·wd·W.
    Also returns whether the clamp ever bound."""
    W = W0.copy()
    m, n = W.shape
    g = gs[0]
    Sa, Sb = (1 - b2) / n * g @ g.T, (1 - b2) / m * g.T @ g
    Qa, Qb = np.linalg.eigh(Sa)[1][:, ::-1], np.linalg.eigh(Sb)[1][:, ::-1]
    sa, sb = np.full(m, init**-0.5), np.full(n, init**-0.5)
    M, out, clamped = np.zeros((m, n)), [W.copy()], False
    for t, g in enumerate(gs[1:], start=1):
        M = b1 * M + (1 - b1) * g
        r = np.outer(sa, sb)
        U = Qa @ ((Qa.T @ M @ Qb) * (r / (1 + eps * r))) @ Qb.T
        Sa, Sb = (b2 * Sa + (1 - b2) / n * (g @ Qb * sb**2) @ (g @ Qb).T,
                  b2 * Sb + (1 - b2) / m * (g.T @ Qa * sa**2) @ (g.T @ Qa).T)
        P = Qa.T @ g @ Qb
        new = []
        for s, diag in ((sa, np.mean((P * sb[None, :]) ** 2, axis=1)), (sb, np.mean((P * sa[:, None]) ** 2, axis=0))):
            raw = 1.0 / np.sqrt(b2 / s**2 + (1 - b2) * diag)
            cap = max(10, min(len(s), 4000))
            clamped |= bool((raw > cap).any())
            new.append(np.minimum(raw, cap))
        sa, sb = new
        if t % k == 0:
            Qa, Qb = np.linalg.qr(Sa @ Qa)[0], np.linalg.qr(Sb @ Qb)[0]
        W = W - lr * U
        W = W - lr * wd * W
        out.append(W.copy())
    return out, clamped


@pytest.mark.parametrize("scale,b2", [(1.0, 0.95), (1e-3, 0.8)])  # 1e-3: the eigenvalue clamp binds
def test_kl_shampoo_reference_option_follows_the_published_update(scale: float, b2: float) -> None:
    m, n, T, lr, b1, eps, init, k = 6, 6, 30, 1e-2, 0.9, 1e-8, 0.1, 4
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal((m, n))
    gs = [scale * rng.standard_normal((m, n)) for _ in range(T)]
    want, clamped = kl_shampoo_reference_port(W0, gs, lr, b1, b2, eps, init, k)
    assert clamped == (scale < 1.0)
    W = torch.tensor(W0, requires_grad=True)
    opt = modnorm.optimizer([("w", W)], "kl_shampoo", lr=lr, momentum=b1, beta2=b2, eps=eps, init=init,
                            precondition_frequency=k, weight_decay=0.0, root_dtype="float64", reference=True)
    for g, expected in zip(gs, want):
        W.grad = torch.from_numpy(g)
        opt.step()
        np.testing.assert_allclose(W.detach().numpy(), expected, rtol=0, atol=1e-10)
    assert int(opt.state[W]["step"]) == T
    assert not np.allclose(want[-1], W0)  # it moved


def test_kl_shampoo_reference_weight_decay_differs_by_the_order_of_decay_and_update() -> None:
    """The framework decays before the update, W(1-ηλ) − ηU; the published code after, (W − ηU)(1-ηλ)."""
    m, T, lr, wd = 5, 4, 1e-2, 0.5
    rng = np.random.default_rng(9)
    W0 = rng.standard_normal((m, m))
    gs = [rng.standard_normal((m, m)) for _ in range(T)]
    ref, _ = kl_shampoo_reference_port(W0, gs, lr, 0.9, 0.95, 1e-8, 0.1, 10, wd=wd)
    W = torch.tensor(W0, requires_grad=True)
    opt = modnorm.optimizer([("w", W)], "kl_shampoo", lr=lr, weight_decay=wd, init=0.1, eps=1e-8,
                            precondition_frequency=10, root_dtype="float64", reference=True)
    for g in gs:
        W.grad = torch.from_numpy(g)
        opt.step()
    gap = np.abs(W.detach().numpy() - ref[-1]).max()
    assert 0 < gap < 10 * lr**2 * wd * np.abs(ref[-1] - W0).max() / lr  # O(η²λ·U) per step


def test_kl_shampoo_reference_rejects_a_non_bool() -> None:
    with pytest.raises(TypeError, match="reference"):
        KLShampoo(reference=1)  # type: ignore[arg-type]
