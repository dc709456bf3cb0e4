"""A preconditioned sharp formed at the commit (SOAP: U = Q_L((Q_Lᵀ M̂ Q_R) ⊘ D²)Q_Rᵀ, Shampoo:
U = P_A M̂ P_B): ``Preconditioner.sharp_growth`` bounds max |U| by a growth factor times max |M̂|,
the step proves U finite from that bound, redoes the momentum in place at the commit and forms U
there from the committed state (``PendingWrite.form``): no bucket's update is held until the
commit. Bit for bit the step that forms U when it is computed, and still all-or-nothing."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import modnorm
from modnorm.norms import Frobenius
from modnorm.optim.deferred import Deferred
from modnorm.optim.matrix_preconditioners import SOAP, Shampoo
from modnorm.optim.running_bounds import RunningBounds
from state_snapshot import snapshot, train_squares, unchanged

update_module = sys.modules["modnorm.optim.update"]


def _net(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)  # square, tall and wide hidden matrices, sizes that are not multiples of a vector
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 7),
                         nn.Linear(7, 13), nn.Linear(13, 3)).to(dtype)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each call of ``_sharp_at_commit``: whether it took the bucket (True) or declined (False)."""
    calls: list[bool] = []
    real = update_module._sharp_at_commit

    def spied(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(update_module, "_sharp_at_commit", spied)
    return calls


def _formed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Later steps form U when they compute it (the sharp's growth is not offered)."""
    for cls in (SOAP, Shampoo):
        monkeypatch.setattr(cls, "sharp_growth", lambda self, *args: None)


def _equal(opt_a, opt_b, net_a, net_b) -> bool:
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    return (all(torch.equal(p, q) for p, q in zip(pa, pb))
            and all(torch.equal(opt_a.state[p][k], opt_b.state[q][k]) for p, q in zip(pa, pb) for k in opt_a.state[p]))


CASES = [("soap", {"precondition_frequency": 2}), ("soap", {"weight_decay": 0.1, "momentum": 0.8, "beta2": 0.9, "precondition_frequency": 3}),
         ("soap", {"reference": True, "precondition_frequency": 2}), ("soap", {"eps": 1e-3, "precondition_frequency": 2}),
         ("shampoo", {}), ("shampoo", {"beta2": 0.95, "precondition_frequency": 3, "weight_decay": 0.05}),
         ("shampoo_one_sided", {"precondition_frequency": 2}), ("soap", {"maximize": True, "precondition_frequency": 2})]


@pytest.mark.parametrize("preset, hp", CASES)
def test_the_sharp_formed_at_the_commit_equals_the_sharp_formed_now_bit_for_bit(preset, hp, monkeypatch):
    calls = _spy(monkeypatch)
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, preset, lr=1e-2, **hp)
    train_squares(net_a, opt_a, 6)
    assert calls and all(calls), "the sharp formed at the commit was never (or not always) taken"
    _formed_now(monkeypatch)
    opt_b = modnorm.optimizer(net_b, preset, lr=1e-2, **hp)
    train_squares(net_b, opt_b, 6)
    assert _equal(opt_a, opt_b, net_a, net_b)


def test_float64_parameters_and_param_groups_with_their_own_lr_and_decay(monkeypatch):
    def groups(net):
        return [{"params": list(net[:5].parameters())}, {"params": list(net[5:].parameters()), "lr": 3e-3, "weight_decay": 0.2}]

    calls = _spy(monkeypatch)
    net_a, net_b = _net(torch.float64), _net(torch.float64)
    opt_a = modnorm.ModnormOptimizer(groups(net_a), "soap", lr=1e-2, precondition_frequency=2, weight_decay=0.01)
    _train64(net_a, opt_a, 4)
    assert calls and all(calls)
    _formed_now(monkeypatch)
    opt_b = modnorm.ModnormOptimizer(groups(net_b), "soap", lr=1e-2, precondition_frequency=2, weight_decay=0.01)
    _train64(net_b, opt_b, 4)
    assert _equal(opt_a, opt_b, net_a, net_b)


def _train64(net: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(32, 10, generator=g, dtype=torch.float64)).square().mean().backward()
        opt.step()


def test_a_bound_that_proves_nothing_forms_the_sharp_now(monkeypatch):
    """ε = 1e-36 lets D² be as small as 1e-36: the growth bound exceeds what float32 holds, so the step forms
    U when it computes it (and checks it), exactly as without the path; nothing is refused."""
    calls = _spy(monkeypatch)
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, "soap", lr=1e-2, eps=1e-36)
    train_squares(net_a, opt_a, 3)
    assert calls and not any(calls)
    _formed_now(monkeypatch)
    opt_b = modnorm.optimizer(net_b, "soap", lr=1e-2, eps=1e-36)
    train_squares(net_b, opt_b, 3)
    assert _equal(opt_a, opt_b, net_a, net_b)


@pytest.mark.parametrize("preset", ["soap", "shampoo"])
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_nan_gradient_changes_nothing(preset, nonfinite, monkeypatch):
    calls = _spy(monkeypatch)
    net = _net()
    opt = modnorm.optimizer(net, preset, lr=1e-2, nonfinite=nonfinite, precondition_frequency=2)
    train_squares(net, opt, 2)
    params = list(net.parameters())
    net(torch.randn(32, 10)).square().mean().backward()
    params[2].grad[1, 3] = float("nan")  # a hidden matrix: its bucket's U would be formed at the commit
    snap = snapshot(opt, params)
    calls.clear()
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match=r"2\.weight"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert unchanged(opt, params, snap)


def test_a_later_bucket_failing_after_a_bucket_formed_at_the_commit_writes_nothing(monkeypatch):
    calls = _spy(monkeypatch)
    net = _net()
    opt = modnorm.optimizer(net, "soap", lr=1e-2)
    train_squares(net, opt, 2)
    params = list(net.parameters())
    net(torch.randn(32, 10)).square().mean().backward()
    params[-1].grad[0] = float("inf")  # the head's bias: AdamW, a bucket after the hidden matrices
    snap = snapshot(opt, params)
    calls.clear()
    with pytest.raises(FloatingPointError):
        opt.step()
    assert calls and all(calls)
    assert unchanged(opt, params, snap)


def test_a_negative_second_moment_is_refused_like_the_step_formed_now(monkeypatch):
    """D ≥ ε^p needs V ≥ 0: a loaded V with a negative entry fails the bound's premise (checked with the
    step's finiteness), and the step is refused, as forming U now (a NaN from √V) refuses it."""
    for formed_now in (False, True):
        if formed_now:
            _formed_now(monkeypatch)
        net = _net()
        opt = modnorm.optimizer(net, "soap", lr=1e-2)
        train_squares(net, opt, 2)
        params = list(net.parameters())
        opt.state[params[2]]["exp_avg_sq"][0, 0] = -1.0
        net(torch.randn(32, 10)).square().mean().backward()
        snap = snapshot(opt, params)
        with pytest.raises(FloatingPointError, match=r"2\.weight"):
            opt.step()
        assert unchanged(opt, params, snap)


def test_a_resumed_run_continues_bit_for_bit(monkeypatch):
    """The running bounds of the momentum and of the bases are not saved: a loaded optimizer reads them
    once, and continues exactly as the uninterrupted run."""
    calls = _spy(monkeypatch)
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, "soap", lr=1e-2, precondition_frequency=3)
    train_squares(net_a, opt_a, 6, seed=1)
    opt_b = modnorm.optimizer(net_b, "soap", lr=1e-2, precondition_frequency=3)
    train_squares(net_b, opt_b, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"model": net_b.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    net_c = _net()
    net_c.load_state_dict(saved["model"])
    opt_c = modnorm.optimizer(net_c, "soap", lr=1e-2, precondition_frequency=3)
    opt_c.load_state_dict(saved["opt"])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):  # the same batches as steps 4-6 of the uninterrupted run
        torch.randn(32, 10, generator=g)
    for _ in range(3):
        x = torch.randn(32, 10, generator=g)
        opt_c.zero_grad()
        net_c(x).square().mean().backward()
        opt_c.step()
    assert all(calls)
    assert _equal(opt_a, opt_c, net_a, net_c)


@pytest.mark.filterwarnings("ignore:modnorm.optimizer got parameters")
def test_no_update_is_held_until_the_commit():
    """Peak memory of a Shampoo step between refreshes (torch.profiler's allocation events): formed at
    the commit, one bucket's direction and product at a time; formed when computed, every bucket's U."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from optimizer_step import peak_step_bytes

    def peak(formed_now: bool) -> int:
        torch.manual_seed(0)
        ws = [nn.Parameter(torch.randn(*shape)) for shape in [(64, 64)] * 4 + [(64, 96)] * 4 + [(96, 64)] * 4]
        opt = modnorm.optimizer([(f"h{i}", w) for i, w in enumerate(ws)], "shampoo", lr=1e-3, precondition_frequency=10)
        for w in ws:
            w.grad = torch.randn_like(w)
        for _ in range(2):
            opt.step()
        return peak_step_bytes(opt.step)

    bucket = 4 * 64 * 96 * 4  # bytes of the largest bucket's stack
    at_commit = peak(False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Shampoo, "sharp_growth", lambda self, *args: None)
        formed_now = peak(True)
    assert formed_now >= 4 * 64 * 64 * 4 + 2 * bucket  # every bucket's U held until the commit
    assert at_commit <= 2 * bucket + 4096, (formed_now, at_commit)  # one bucket's direction and product, at the commit


# ----------------------------------------------------------------------------- the bounds themselves


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), batch=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       q_scale=st.sampled_from([1e-3, 1.0, 30.0]), x_scale=st.sampled_from([1e-20, 1.0, 1e6]),
       eps=st.sampled_from([1e-8, 1e-3, 10.0]), power=st.sampled_from([0.25, 0.5, 1.0]), reference=st.booleans())
def test_soap_sharp_is_within_its_growth_bound_for_any_finite_basis(m, n, batch, seed, q_scale, x_scale, eps, power, reference):
    """Any finite Q_L, Q_R (not only orthogonal ones: loaded state), V ≥ 0 with zeros: max |U| ≤ G·max |X|."""
    g = torch.Generator().manual_seed(seed)
    pre = SOAP(eps=eps, power=power, reference=reference)
    V = torch.rand(batch, m, n, generator=g) * torch.randint(0, 2, (batch, m, n), generator=g)  # zeros: D = ε^p there
    states = [{"QL": q_scale * torch.randn(m, m, generator=g), "QR": q_scale * torch.randn(n, n, generator=g), "exp_avg_sq": V[i]}
              for i in range(batch)]
    defer = Deferred(RunningBounds())
    growth, premises = pre.sharp_growth(Frobenius(), states, (m, n), 3, defer)
    assert all(bool(torch.isfinite(p).all()) for p in premises)
    X = x_scale * torch.randn(batch, m, n, generator=g)
    U = pre.norm(Frobenius(), states, 3).sharp(X)
    assert float(U.abs().max()) <= growth * float(X.abs().max())


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), p_scale=st.sampled_from([1e-3, 1.0, 1e4]),
       sides=st.sampled_from(["both", "left", "right"]))
def test_shampoo_sharp_is_within_its_growth_bound(m, n, seed, p_scale, sides):
    g = torch.Generator().manual_seed(seed)
    pre = Shampoo(sides=sides)
    state = pre.init_state(torch.zeros(m, n), torch.float32)
    for key, k in (("A_inv_root", m), ("B_inv_root", n)):
        if key in state:
            state[key] = p_scale * torch.randn(k, k, generator=g)
    growth, premises = pre.sharp_growth(Frobenius(), [state], (m, n), 1, Deferred(RunningBounds()))
    assert premises == []
    X = torch.randn(1, m, n, generator=g)
    U = pre.norm(Frobenius(), [state], 1).sharp(X)
    assert float(U.abs().max()) <= growth * float(X.abs().max())


def test_a_non_finite_basis_offers_no_bound_and_a_negative_v_fails_the_premise():
    pre = SOAP()
    states = [{"QL": torch.eye(3), "QR": torch.eye(2), "exp_avg_sq": torch.rand(3, 2)}]
    growth, premises = pre.sharp_growth(Frobenius(), states, (3, 2), 1, Deferred(RunningBounds()))
    assert math.isfinite(growth) and all(bool(torch.isfinite(p).all()) for p in premises)
    states[0]["exp_avg_sq"][1, 1] = -1e-30
    _, premises = pre.sharp_growth(Frobenius(), states, (3, 2), 1, Deferred(RunningBounds()))
    assert not all(bool(torch.isfinite(p).all()) for p in premises)
    states[0]["QL"] = torch.full((3, 3), float("nan"))
    assert pre.sharp_growth(Frobenius(), states, (3, 2), 1, Deferred(RunningBounds())) is None
    assert SOAP().sharp_growth(modnorm.Sign(), states, (3, 2), 1, Deferred(RunningBounds())) is None  # Frobenius base only
