"""A D-preconditioned LMO held in parts until the commit (MuAdam: U = D⁻¹ ⊙ polar(D⁻¹ ⊙ M̂)):
``Preconditioner.diagonal_rows`` divides the stacked direction by D one matrix at a time,
``Norm.lmo_parts`` keeps only the bf16 polar factor, and the commit forms D again from the
committed statistics (``PendingWrite.rows``). Bit for bit the stacked ``DNorm`` step, still
all-or-nothing, and never a stacked D."""

from __future__ import annotations

import copy
import io
import math
import sys

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim.diagonal import SecondMoment, adam
from modnorm.optim.moment_variants import AMSGrad, RMSprop
from modnorm.optim.preconditioner import StepContext
from modnorm.optim.transaction import PendingWrite, StepTransaction
from state_snapshot import snapshot, train_squares, unchanged

update_module = sys.modules["modnorm.optim.update"]


def _net() -> nn.Module:
    torch.manual_seed(0)  # odd and rectangular shapes: s = √(d_out/d_in) ≠ 1, rows of sizes that are not multiples of a vector
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 7),
                         nn.Linear(7, 13), nn.Linear(13, 3))


def _count_parts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = update_module._in_parts

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(update_module, "_in_parts", counted)
    return calls


def _stacked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Later steps take the stacked ``DNorm`` path."""
    monkeypatch.setattr(SecondMoment, "diagonal_rows", lambda self, *args: None)


def _state_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer, pa: list, pb: list) -> bool:
    return all(torch.equal(a.state[p][k], b.state[q][k]) for p, q in zip(pa, pb) for k in a.state[p])


CASES = [("muadam", {}), ("muadam", {"weight_decay": 0.1, "betas": (0.8, 0.99)}), ("muadam", {"scale": "original"}),
         ("muadam_sania", {"weight_decay": 0.05}), ("muadam", {"eps": 1e-3})]


@pytest.mark.parametrize("preset, hp", CASES)
def test_the_step_in_parts_equals_the_stacked_dnorm_step_bit_for_bit(preset, hp, monkeypatch):
    calls = _count_parts(monkeypatch)
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, preset, lr=1e-2, ns_dtype="bfloat16", **hp)
    train_squares(net_a, opt_a, 5)
    assert calls, "the held-in-parts step was never taken"
    _stacked(monkeypatch)
    calls.clear()
    opt_b = modnorm.optimizer(net_b, preset, lr=1e-2, ns_dtype="bfloat16", **hp)
    train_squares(net_b, opt_b, 5)
    assert not calls
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))
    assert _state_equal(opt_a, opt_b, pa, pb)


def test_param_groups_with_their_own_lr_and_decay_equal_the_stacked_step(monkeypatch):
    def groups(net):
        return [{"params": list(net[:5].parameters())}, {"params": list(net[5:].parameters()), "lr": 3e-3, "weight_decay": 0.2}]

    calls = _count_parts(monkeypatch)
    net_a, net_b = _net(), _net()
    opt_a = modnorm.ModnormOptimizer(groups(net_a), "muadam", lr=1e-2, ns_dtype="bfloat16", weight_decay=0.01)
    train_squares(net_a, opt_a, 4)
    assert calls
    _stacked(monkeypatch)
    opt_b = modnorm.ModnormOptimizer(groups(net_b), "muadam", lr=1e-2, ns_dtype="bfloat16", weight_decay=0.01)
    train_squares(net_b, opt_b, 4)
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters()))


def test_no_stacked_diagonal_is_formed(monkeypatch):
    """The step divides by D one matrix at a time: ``SecondMoment.diagonal`` (the stacked D) is never called."""
    def refuse(self, states, step):
        raise AssertionError("a stacked D was formed")

    monkeypatch.setattr(SecondMoment, "diagonal", refuse)
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    opt = modnorm.optimizer(net, "muadam", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net, opt, 3)
    assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), before))


def test_the_commit_reads_the_committed_second_moment_one_parameter_at_a_time():
    """``diagonal_rows`` hands over this step's D_i (from a one-matrix temporary), and its function forms
    the same D_i from the state once the redo has run; V itself is untouched until the commit."""
    from modnorm.optim.deferred import Deferred
    from modnorm.optim.running_bounds import RunningBounds

    torch.manual_seed(0)
    pre = adam(inner=1.0, outer=0.25)
    states = [{"exp_avg_sq": torch.rand(5, 3)}, {"exp_avg_sq": torch.rand(5, 3)}]
    grads = [torch.randn(5, 3), torch.randn(5, 3)]
    old = [s["exp_avg_sq"].clone() for s in states]
    seen: dict[int, torch.Tensor] = {}
    defer = Deferred(RunningBounds())
    rows = pre.diagonal_rows(states, grads, 3, StepContext(step=3, defer=defer), lambda i, D: seen.__setitem__(i, D.clone()))
    assert rows is not None and sorted(seen) == [0, 1]
    assert all(torch.equal(s["exp_avg_sq"], v) for s, v in zip(states, old))  # not yet written
    defer.end_bucket("x")
    assert defer.all_finite()
    defer.commit()
    divide, lower = rows
    bc = 1.0 - 0.999**3
    for i, (v, g) in enumerate(zip(old, grads)):
        V = (0.999 * v.double() + 0.001 * g.double() ** 2)
        assert torch.allclose(states[i]["exp_avg_sq"].double(), V, rtol=1e-6)
        want = (V / bc + 1e-8) ** 0.25  # float64 formula
        assert torch.allclose(seen[i].double(), want, rtol=1e-6)
        assert torch.equal(divide(i), seen[i])
        assert lower <= float(seen[i].min())


@pytest.mark.parametrize("pre", [AMSGrad(), RMSprop(), RMSprop(centered=True), adam(normalize=True), adam(eps=0.0)],
                         ids=["amsgrad", "rmsprop", "rmsprop centred", "normalize", "eps 0"])
def test_statistics_it_cannot_form_a_row_at_a_time_are_not_offered(pre):
    from modnorm.optim.deferred import Deferred
    from modnorm.optim.running_bounds import RunningBounds

    states = [pre.init_state(torch.zeros(4, 3), torch.float32)]
    before = {k: v.clone() for k, v in states[0].items()}
    ctx = StepContext(step=1, defer=Deferred(RunningBounds()))
    assert pre.diagonal_rows(states, [torch.randn(4, 3)], 1, ctx, lambda i, D: None) is None
    assert all(torch.equal(states[0][k], v) for k, v in before.items())


def test_without_a_deferred_redo_the_rows_are_not_offered():
    states = [{"exp_avg_sq": torch.zeros(4, 3)}]
    assert adam().diagonal_rows(states, [torch.randn(4, 3)], 1, StepContext(step=1), lambda i, D: None) is None
    assert torch.equal(states[0]["exp_avg_sq"], torch.zeros(4, 3))


def test_a_non_finite_gradient_is_refused_and_skipped_with_nothing_changed(monkeypatch):
    calls = _count_parts(monkeypatch)
    net = _net()
    opt = modnorm.optimizer(net, "muadam", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net, opt, 2)
    params = list(net.parameters())
    net(torch.randn(4, 10)).square().mean().backward()
    net[2].weight.grad[1, 3] = math.nan
    snap = snapshot(opt, params)
    calls.clear()
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step()
    assert calls and unchanged(opt, params, snap)
    skip = modnorm.optimizer(net, "muadam", lr=1e-2, ns_dtype="bfloat16", nonfinite="skip")
    skip.load_state_dict(opt.state_dict())
    snap = snapshot(skip, params)
    skip.step()
    assert skip.skipped_steps == 1 and unchanged(skip, params, snap)


def test_a_second_moment_that_overflows_is_named_and_nothing_is_written():
    net = _net()
    opt = modnorm.optimizer(net, "muadam", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net, opt, 1)
    params = list(net.parameters())
    net(torch.randn(4, 10)).square().mean().backward()
    net[2].weight.grad.fill_(1e30)  # g² overflows float32
    snap = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="exp_avg_sq"):
        opt.step()
    assert unchanged(opt, params, snap)


def test_a_bounded_check_refuses_what_exceeds_its_bound_and_names_it():
    txn = StepTransaction()
    w = torch.zeros(3)
    txn.add_write(PendingWrite([w], [torch.tensor([1.0, -2.0, 0.5])], -1.0), [torch.tensor([1.0, -2.0, 0.5])], ["a"], bound=2.0)
    assert txn.all_finite()
    txn.add_write(PendingWrite([w], [torch.zeros(3)], -1.0), [torch.tensor([0.0, 3.0, 0.0], dtype=torch.bfloat16)], ["b"], bound=2.0)
    assert not txn.all_finite() and txn.bad_values() == ["b (update)"]
    nan = StepTransaction()
    nan.add_write(PendingWrite([w], [torch.zeros(3)], -1.0), [torch.tensor([0.0, math.nan, 0.0])], ["c"], bound=1e30)
    assert not nan.all_finite() and nan.bad_values() == ["c (update)"]


def test_the_write_in_parts_applies_decay_then_the_rebuilt_update():
    """W ← W·decay + α·(O upcast · s) ⊘ D_i, per parameter (a float64 formula of the same numbers)."""
    torch.manual_seed(0)
    W = [torch.randn(4, 3), torch.randn(4, 3)]
    O = torch.randn(2, 4, 3).to(torch.bfloat16)
    D = [torch.rand(4, 3) + 0.5, torch.rand(4, 3) + 0.5]
    want = [w.double() * 0.9 - 0.1 * (o.double() * 2.0) / d.double() for w, o, d in zip(W, O, D)]
    PendingWrite(W, O.unbind(0), -0.1, decay=0.9, scale=2.0, rows=lambda i: D[i].clone()).apply()
    assert all(torch.allclose(w.double(), x, rtol=1e-6, atol=1e-7) for w, x in zip(W, want))


def test_a_resumed_state_continues_bit_for_bit():
    net_a = _net()
    opt_a = modnorm.optimizer(net_a, "muadam", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net_a, opt_a, 3)
    net_b = copy.deepcopy(net_a)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    opt_b = modnorm.optimizer(net_b, "muadam", lr=1e-2, ns_dtype="bfloat16")
    opt_b.load_state_dict(torch.load(buf))
    train_squares(net_a, opt_a, 3, seed=2)
    train_squares(net_b, opt_b, 3, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters()))


def test_bound_flags_are_read_with_the_finiteness_probes():
    from modnorm.optim.deferred import bound_flag, finite_now

    big = torch.full((4,), 3e38)  # finite values whose probe sum overflows: settled exactly
    assert finite_now([big, big], [bound_flag(torch.tensor([1.0, -2.0]), 2.0)])
    assert not finite_now([big], [bound_flag(torch.tensor([1.0, -2.5]), 2.0)])
    assert not finite_now([], [bound_flag(torch.tensor([0.0, math.nan]), 2.0)])
    assert not finite_now([torch.tensor([math.inf])], [bound_flag(torch.zeros(2), 1.0)])
    assert float(bound_flag(torch.tensor([-2.0], dtype=torch.bfloat16), 2.0)) == 0.0


def test_a_failure_in_a_later_bucket_writes_nothing(monkeypatch):
    """An earlier bucket's parts and its V redo wait for the commit: a later bucket raising leaves everything as it was."""
    from modnorm.norms import Spectral

    net = _net()
    opt = modnorm.optimizer(net, "muadam", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net, opt, 2)
    params = list(net.parameters())
    net(torch.randn(4, 10)).square().mean().backward()
    snap = snapshot(opt, params)
    real, calls = Spectral.lmo_parts, []

    def fails_second(self, G):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(self, G)

    monkeypatch.setattr(Spectral, "lmo_parts", fails_second)
    with pytest.raises(RuntimeError, match="simulated"):
        opt.step()
    assert len(calls) == 2 and unchanged(opt, params, snap)
