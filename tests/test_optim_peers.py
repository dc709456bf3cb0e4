"""Presets reproduce their peers: torch.optim's SGD/AdamW/Adagrad/Muon, and float64 references
of Adam-SANIA, signSGD, PolarGrad, MuAdam and MuAdam-SANIA written here from the equations."""

from __future__ import annotations

import math

import pytest
import torch

import modnorm

SHAPES = [(6, 4), (6, 4), (4, 6), (5,), ()]


def make_params(dtype=torch.float64, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(s), generator=g, dtype=dtype) for s in shapes]


def loss_fn(params, targets):
    # a non-quadratic loss so that every step sees a new gradient direction
    return sum(((p - t) ** 2).sum() + 0.1 * ((p - t) ** 4).sum() + 0.3 * p.sum() for p, t in zip(params, targets))


def run(opt_factory, init, steps=30, seed=1, negate=False):
    """``steps`` steps on loss_fn (on −loss_fn with ``negate``, for maximize=True)."""
    params = [p.clone().requires_grad_() for p in init]
    targets = make_params(init[0].dtype, [tuple(p.shape) for p in init], seed=seed)
    opt = opt_factory(params)
    for _ in range(steps):
        opt.zero_grad()
        ((-1 if negate else 1) * loss_fn(params, targets)).backward()
        opt.step()
    return [p.detach() for p in params]


def assert_close(a, b, tol):
    for x, y in zip(a, b):
        assert (x - y).abs().max().item() < tol, (x - y).abs().max().item()


# ------------------------------------------------------------------ torch.optim peers, float64


@pytest.mark.parametrize("hp", [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1, "maximize": True},
])
def test_sgd_equals_torch(hp):
    init = make_params()
    neg = hp.get("maximize", False)
    ref = run(lambda ps: torch.optim.SGD(ps, lr=0.01, **hp), init, negate=neg)
    got = run(lambda ps: modnorm.optimizer(ps, "sgd", lr=0.01, budgets=False, **hp), init, negate=neg)
    assert_close(got, ref, 1e-10)
    moved = run(lambda ps: torch.optim.SGD(ps, lr=0.0), init)
    assert max((a - b).abs().max().item() for a, b in zip(ref, moved)) > 1e-3  # the comparison is not vacuous


@pytest.mark.parametrize("hp", [
    {},
    {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    {"weight_decay": 0.0, "maximize": True},
])
def test_adamw_equals_torch(hp):
    init = make_params()
    neg = hp.get("maximize", False)
    ref = run(lambda ps: torch.optim.AdamW(ps, lr=0.01, **hp), init, negate=neg)
    got = run(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.01, budgets=False, **hp), init, negate=neg)
    assert_close(got, ref, 1e-10)


def test_adamw_param_groups_equal_torch():
    init = make_params()

    def groups(ps):
        return [{"params": ps[:2], "lr": 0.02, "betas": (0.5, 0.9)}, {"params": ps[2:], "weight_decay": 0.3}]

    ref = run(lambda ps: torch.optim.AdamW(groups(ps), lr=0.01), init)
    got = run(lambda ps: modnorm.optimizer(groups(ps), "adamw", lr=0.01, budgets=False), init)
    assert_close(got, ref, 1e-10)


@pytest.mark.parametrize("hp", [{}, {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1}])
def test_adagrad_equals_torch(hp):
    init = make_params()
    ref = run(lambda ps: torch.optim.Adagrad(ps, lr=0.05, **hp), init)
    got = run(lambda ps: modnorm.optimizer(ps, "adagrad", lr=0.05, budgets=False, **hp), init)
    assert_close(got, ref, 1e-10)


@pytest.mark.parametrize("hp", [
    {},
    {"nesterov": False, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
    {"momentum": 0.9, "ns_steps": 3, "ns_coefficients": (2.0, -1.5, 0.5), "eps": 1e-5},
])
def test_muon_tracks_torch_exactly(hp):
    # torch.optim.Muon: 2-D only, NS in bf16 even on CPU. Same dtype, same op order → identical.
    # (modnorm's default ns_dtype="auto" picks bf16 only where it is fast: configure it like torch.)
    shapes = [(8, 16), (16, 8), (8, 16), (12, 12)]
    init = make_params(torch.float32, shapes)
    ref = run(lambda ps: torch.optim.Muon(ps, lr=0.02, **hp), init)
    got = run(lambda ps: modnorm.optimizer(ps, "muon", lr=0.02, budgets=False, ns_dtype="bfloat16", **hp), init)
    assert_close(got, ref, 1e-30)


# ------------------------------------------------------------------ float64 references


def polar_svd(X):
    """U Vᵀ over the nonzero singular values (at ε = 0 SANIA's first step is sign(G), often rank-deficient;
    the Newton–Schulz limit, and modnorm's exact method, send null directions to zero)."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = (S > 1e-10 * S.max()).to(X.dtype)
    return (U * keep) @ Vh


def reference_adam_like(init, steps, lr, b1, b2, eps, wd, direction):
    """W ← W − lr (direction(M̂, V̂) + wd W), M, V Adam's EMAs with bias correction (DESIGN §4)."""
    params = [p.clone().requires_grad_() for p in init]
    targets = make_params(init[0].dtype, [tuple(p.shape) for p in init], seed=1)
    M = [torch.zeros_like(p) for p in params]
    V = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        for p in params:
            p.grad = None
        loss_fn(params, targets).backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                G = p.grad
                M[i] = b1 * M[i] + (1 - b1) * G
                V[i] = b2 * V[i] + (1 - b2) * G * G
                Mh, Vh = M[i] / (1 - b1**t), V[i] / (1 - b2**t)
                p -= lr * (direction(Mh, Vh, eps, p.ndim) + wd * p)
    return [p.detach() for p in params]


def adam_dir(Mh, Vh, eps, nd):
    return Mh / (Vh.sqrt() + eps)


def muadam_dir(p, scale="rms", normalize=False):
    def direction(Mh, Vh, eps, nd):
        if nd != 2:
            return adam_dir(Mh, Vh, eps, nd)
        D = (Vh + eps) ** p
        if normalize:  # D / RMS(D): the step's size no longer depends on the gradient's scale
            D = D / (D**2).mean().sqrt()
        ratio = Mh.shape[0] / Mh.shape[1]
        s = math.sqrt(ratio) if scale == "rms" else math.sqrt(max(1.0, ratio))  # RMS→RMS or torch Muon's "original"
        return s * polar_svd(Mh / D) / D

    return direction


@pytest.mark.parametrize("preset,p", [("muadam", 0.25), ("muadam_sania", 0.5)])
@pytest.mark.parametrize("eps,seed", [(1e-8, 2), (0.0, 0)])
def test_muadam_matches_float64_reference(preset, p, eps, seed):
    # SANIA's first step is M̂/√(V̂+ε) ≈ sign(G). With seed 0 one sign(G) is rank-deficient: at ε = 0 that
    # exercises the null directions exactly; at ε = 1e-8 it would make the polar factor ill-conditioned
    # (a singular value ~1e-8), so that case uses seed 2, where every sign(G) is well-conditioned.
    init = make_params(seed=seed)
    lr, wd = 0.01, 0.05
    ref = reference_adam_like(init, 30, lr, 0.9, 0.99, eps, wd, muadam_dir(p))
    # 1-D and 0-D parameters go to the AdamW rule (eps 1e-8 there in the reference too)
    ref_vec = reference_adam_like(init, 30, lr, 0.9, 0.99, 1e-8, wd, muadam_dir(p))
    got = run(lambda ps: modnorm.optimizer(ps, preset, lr=lr, betas=(0.9, 0.99), eps=eps, weight_decay=wd, ns_method="svd",
                                           adamw_betas=(0.9, 0.99), adamw_eps=1e-8, adamw_weight_decay=wd, budgets=False), init)
    assert_close(got[:3], ref[:3], 1e-9)
    assert_close(got[3:], ref_vec[3:], 1e-9)
    other = reference_adam_like(init, 30, lr, 0.9, 0.99, eps, wd, muadam_dir(0.75 - p))  # the other exponent differs
    assert max((a - b).abs().max().item() for a, b in zip(got[:3], other[:3])) > 1e-6


def test_muadam_scale_option_matches_float64_reference():
    init = make_params(shapes=[(8, 16), (16, 8), (6, 6)])
    ref = reference_adam_like(init, 10, 0.01, 0.9, 0.99, 1e-8, 0.0, muadam_dir(0.25, "original"))
    got = run(lambda ps: modnorm.optimizer(ps, "muadam", lr=0.01, betas=(0.9, 0.99), scale="original", ns_method="svd", budgets=False), init, steps=10)
    assert_close(got, ref, 1e-9)
    rms = reference_adam_like(init, 10, 0.01, 0.9, 0.99, 1e-8, 0.0, muadam_dir(0.25, "rms"))
    assert (got[0] - rms[0]).abs().max() > 1e-4  # the (8, 16) matrix: scale 1 vs √½


@pytest.mark.parametrize("preset,p", [("muadam", 0.25), ("muadam_sania", 0.5)])
def test_muadam_normalize_matches_float64_reference(preset, p):
    init = make_params(seed=2)
    ref = reference_adam_like(init, 20, 0.01, 0.9, 0.99, 1e-8, 0.0, muadam_dir(p, normalize=True))
    got = run(lambda ps: modnorm.optimizer(ps, preset, lr=0.01, betas=(0.9, 0.99), adamw_betas=(0.9, 0.99), normalize=True,
                                           ns_method="svd", budgets=False), init, steps=20)
    assert_close(got, ref, 1e-9)
    plain = reference_adam_like(init, 20, 0.01, 0.9, 0.99, 1e-8, 0.0, muadam_dir(p))
    assert max((a - b).abs().max().item() for a, b in zip(got[:3], plain[:3])) > 1e-4


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_muadam_normalize_step_does_not_depend_on_the_gradient_scale(c):
    # one step from a fresh state with ε = 0: gradient c·G gives the same step as G (degree 0), where
    # the plain MuAdam step D⁻¹ polar(D⁻¹ M) with D = V^¼ scales as c^-½
    G = make_params(shapes=[(6, 4)], seed=3)[0]
    steps = {}
    for normalize in (True, False):
        for scale in (1.0, c):
            w = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True)
            w.grad = scale * G
            modnorm.optimizer([w], "muadam", lr=0.1, eps=0.0, normalize=normalize, ns_method="svd", budgets=False).step()
            steps[normalize, scale] = w.detach().clone()
    assert_close([steps[True, c]], [steps[True, 1.0]], 1e-12)
    assert_close([steps[False, c]], [steps[False, 1.0] / math.sqrt(c)], 1e-12)


def test_muon_rms_lr_adjustment_is_the_rms_to_rms_scale():
    # One step from zero momentum: the update is lr·s·polar(G); "rms" gives s = √(d_out/d_in), "original" √max(1, ·).
    shapes = [(8, 16), (16, 8)]
    init = make_params(torch.float64, shapes)
    steps = {}
    for fn in ("rms", "original"):
        params = [p.clone().requires_grad_() for p in init]
        loss_fn(params, make_params(torch.float64, shapes, seed=1)).backward()
        modnorm.optimizer(params, "muon", lr=0.1, adjust_lr_fn=fn, weight_decay=0.0, ns_dtype="float64", budgets=False).step()
        steps[fn] = [(p - q).detach() for p, q in zip(params, init)]
    assert_close([steps["rms"][0]], [steps["original"][0] * math.sqrt(0.5)], 1e-12)
    assert_close([steps["rms"][1]], [steps["original"][1]], 1e-12)


def test_adam_sania_matches_float64_reference():
    init = make_params()
    ref = reference_adam_like(init, 30, 0.01, 0.9, 0.999, 1e-8, 0.01, lambda Mh, Vh, eps, nd: Mh / (Vh + eps))
    got = run(lambda ps: modnorm.optimizer(ps, "adam_sania", lr=0.01, weight_decay=0.01, budgets=False), init)
    assert_close(got, ref, 1e-9)


def test_signsgd_and_polargrad_match_formulas():
    init = make_params(shapes=[(6, 4), (3, 5)])
    targets = make_params(shapes=[(6, 4), (3, 5)], seed=1)
    for preset, direction in (
        ("signsgd", lambda G: torch.sign(G)),
        ("polargrad", lambda G: torch.linalg.matrix_norm(G, ord="nuc") * polar_svd(G)),
    ):
        params = [p.clone().requires_grad_() for p in init]
        opt = modnorm.optimizer(params, preset, lr=0.01, momentum=0.0, budgets=False,
                                **({"ns_method": "svd"} if preset == "polargrad" else {}))
        for _ in range(5):
            opt.zero_grad()
            loss_fn(params, targets).backward()
            expected = [(p - 0.01 * direction(p.grad)).detach() for p in params]
            opt.step()
            assert_close([p.detach() for p in params], expected, 1e-12)
