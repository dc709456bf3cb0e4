"""Statistics redone in place at the commit (``modnorm.optim.deferred``): invisible in the results
(bit for bit the compute-aside step), in place in the state, and still all-or-nothing."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim import PRECONDITIONERS, Preconditioner, Recipe, UpdateRule, register_preconditioner
from modnorm.optim.deferred import accumulation_bound
from state_snapshot import snapshot, train_squares, unchanged

optimizer_module = sys.modules["modnorm.optim.optimizer"]

CASES = [
    ("muon", {}),
    ("muon", {"ns_dtype": "bfloat16"}),  # the direction stacked in bf16 directly (Norm.step_input), row by row
    ("muon", {"ns_dtype": "bfloat16", "nesterov": False}),  # d is the new buffer: kept aside, then cast
    ("muon", {"ns_dtype": "bfloat16", "momentum": 0.0}),  # d = g, cast row by row
    ("muadam", {}),
    ("muadam", {"ns_dtype": "bfloat16"}),  # D⁻¹ ⊙ polar(·) held in parts, D formed a matrix at a time (``update._in_parts``)
    ("muadam_sania", {"ns_dtype": "bfloat16", "weight_decay": 0.1}),
    ("soap", {"precondition_frequency": 3}),
    ("shampoo", {"precondition_frequency": 2}),
    ("shampoo", {"beta2": None, "precondition_frequency": 1}),
    ("splus", {"precondition_frequency": 2}),
    ("scion", {}),
    ("lion", {}),
    ("rmsprop", {}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


def _aside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every later step computes its whole state aside (no deferred updates)."""
    monkeypatch.setattr(optimizer_module, "Deferred", lambda bounds: None)


def _state_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer, pa: list, pb: list) -> bool:
    return all(
        torch.equal(a.state[p][k], b.state[q][k]) if isinstance(a.state[p][k], torch.Tensor) else a.state[p][k] == b.state[q][k]
        for p, q in zip(pa, pb) for k in a.state[p]
    )


@pytest.mark.parametrize("preset, hp", CASES)
def test_redone_statistics_equal_the_step_computed_aside_bit_for_bit(preset, hp, monkeypatch):
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, preset, lr=1e-2, **hp)
    train_squares(net_a, opt_a, 6)
    _aside(monkeypatch)
    opt_b = modnorm.optimizer(net_b, preset, lr=1e-2, **hp)
    train_squares(net_b, opt_b, 6)
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))
    assert _state_equal(opt_a, opt_b, pa, pb)


@pytest.mark.parametrize("preset, keys", [("muon", ["momentum_buffer"]), ("muadam", ["exp_avg", "exp_avg_sq"]),
                                          ("shampoo", ["exp_avg", "A", "B"]), ("soap", ["exp_avg", "A", "B"])])
def test_the_statistics_are_written_in_place(preset, keys):
    """No new tensors for these keys after the first step: the step holds no second copy of them."""
    net = _net()
    opt = modnorm.optimizer(net, preset, lr=1e-2, precondition_frequency=3) if preset in ("shampoo", "soap") else modnorm.optimizer(net, preset, lr=1e-2)
    train_squares(net, opt, 1)
    hidden = net[2].weight
    before = {k: opt.state[hidden][k] for k in keys}
    values = {k: t.clone() for k, t in before.items()}
    train_squares(net, opt, 3, seed=2)  # crosses a refresh (steps 1 and 4) for shampoo and soap
    for k in keys:
        assert opt.state[hidden][k] is before[k], k
        assert not torch.equal(opt.state[hidden][k], values[k]), k


def test_a_resumed_state_continues_bitwise():
    """A loaded state holds separate tensors (not views of one stack): its first step computes A, B
    aside (as one new stack), later ones in place; the run continues as the uninterrupted one."""
    net_a, net_b = _net(), _net()
    opt_a = modnorm.optimizer(net_a, "shampoo", lr=1e-2, precondition_frequency=2)
    train_squares(net_a, opt_a, 3)
    buf = io.BytesIO()
    torch.save({"model": net_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    net_b.load_state_dict(saved["model"])
    opt_b = modnorm.optimizer(net_b, "shampoo", lr=1e-2, precondition_frequency=2)
    opt_b.load_state_dict(saved["opt"])
    train_squares(net_a, opt_a, 3, seed=5)
    train_squares(net_b, opt_b, 3, seed=5)
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(pa, pb)) and _state_equal(opt_a, opt_b, pa, pb)


def test_the_running_bound_of_the_factors_stays_above_them():
    """Shampoo with sums (β2 = None): A and B grow every step; the recorded bounds stay upper bounds."""
    net = _net()
    opt = modnorm.optimizer(net, "shampoo", lr=1e-3, beta2=None, precondition_frequency=100)
    train_squares(net, opt, 8)
    checked = 0
    for st in opt.state.values():
        for key in ("A", "B"):
            if key in st:
                bound = opt._bounds.known(st[key])
                assert bound is not None and float(st[key].abs().max()) <= bound
                checked += 1
    assert checked > 0


def test_accumulation_bound_refuses_what_may_overflow():
    big = torch.finfo(torch.float32).max
    assert accumulation_bound(1.0, 0.9, 0.1, 2.0, 10, torch.float32) == pytest.approx(0.9 + 0.2, rel=1e-5)
    assert accumulation_bound(big / 8, 1.0, 1.0, big / 8, 10, torch.float32) is None
    assert accumulation_bound(0.0, 1.0, 1.0, math.inf, 10, torch.float32) is None
    assert accumulation_bound(0.0, 1.0, 1.0, math.nan, 10, torch.float32) is None
    assert accumulation_bound(0.0, 0.95, 0.05, big / 2, 10, torch.float32) is None  # α·X fits, X does not


@pytest.mark.parametrize("preset", ["shampoo", "soap", "splus"])
def test_a_gradient_too_large_for_the_proof_takes_the_checked_path(preset):
    """|G| = 1e21: G Gᵀ overflows float32, the proof fails, and the step computed aside is refused
    with nothing changed (A, B included)."""
    net = _net()
    opt = modnorm.optimizer(net, preset, lr=1e-2)
    train_squares(net, opt, 2)
    params = list(net.parameters())
    net(torch.randn(8, 10)).square().mean().backward()
    net[2].weight.grad.fill_(1e21)
    snap = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step()
    assert unchanged(opt, params, snap)


@pytest.mark.parametrize("preset", ["soap", "shampoo"])
def test_a_product_that_overflows_before_its_scaling_is_not_proved_finite(preset):
    """|G| = 2e19, a 4 × 4 matrix: α·G Gᵀ ≤ 0.05·4·4e38 < max/4, but G Gᵀ itself (formed before α scales it)
    overflows float32. The step must not be proved finite: it is computed aside and refused."""
    torch.manual_seed(0)
    w, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    hp = {"beta2": 0.95} if preset == "shampoo" else {}
    opt = modnorm.optimizer([("w", w), ("b", b)], preset, lr=0.1, precondition_frequency=10, **hp)
    w.grad, b.grad = torch.ones(4, 4), torch.ones(4)
    opt.step()  # the next step is not a refresh: A and B would be redone at the commit
    w.grad, b.grad = torch.full((4, 4), 2e19), torch.ones(4)
    snap = snapshot(opt, [w, b])
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step()
    assert unchanged(opt, [w, b], snap)


def test_a_step_the_proof_cannot_cover_is_computed_aside_and_committed():
    """SPlus (β2 = 0.999), |G| = 1e20: the bound 0.001·24·1e40 exceeds max/4, but the new A = 0.999 A +
    0.001 G Gᵀ ≈ 2.4e38 is finite: the step computed aside commits it (a new tensor, not in place)."""
    net = _net()
    opt = modnorm.optimizer(net, "splus", lr=1e-2)
    train_squares(net, opt, 2)
    w = net[2].weight
    old = opt.state[w]["A"]
    net(torch.randn(8, 10)).square().mean().backward()
    w.grad.fill_(1e20)
    opt.step()
    A = opt.state[w]["A"]
    assert A is not old and bool(A.isfinite().all()) and float(A.max()) > 1e38
    want = 0.999 * old.double() + 0.001 * (w.grad.double() @ w.grad.double().T)
    torch.testing.assert_close(A.double(), want, rtol=1e-5, atol=0.0)


class _Fails(Preconditioner):
    name = "fails_deferred_test"

    def update_many(self, states, grads, step, ctx):
        if step > 1:
            raise RuntimeError("fails on the second step")

    def norm(self, base, states, step):
        return base


@pytest.mark.parametrize("hidden", ["muon", "muadam", "shampoo"])
def test_a_failure_after_deferred_buckets_writes_none_of_their_redos(hidden):
    """The matrices' buckets registered their in-place updates; a later bucket raises: nothing is written."""
    rules = {"muon": UpdateRule(norm="spectral", momentum="ema_nesterov", beta=0.95, mode="lmo"),
             "muadam": UpdateRule(norm="spectral", preconditioner="adam", momentum="adam_ema", beta=0.9, mode="lmo"),
             "shampoo": UpdateRule(norm="frobenius", preconditioner="shampoo", momentum="adam_ema", beta=0.9, mode="sharp")}
    with PRECONDITIONERS.scoped():
        register_preconditioner("fails_deferred_test", _Fails)
        torch.manual_seed(0)
        a, b = torch.randn(6, 4, requires_grad=True), torch.randn(5, requires_grad=True)
        recipe = Recipe(default=rules[hidden], roles={"vector": UpdateRule(norm="frobenius", preconditioner="fails_deferred_test", mode="sharp")})
        opt = modnorm.optimizer([("a", a), ("b", b)], recipe, lr=0.1)
        (a.square().sum() + b.sum()).backward()
        opt.step()
        a.grad, b.grad = torch.randn(6, 4), torch.randn(5)
        snap = snapshot(opt, [a, b])
        with pytest.raises(RuntimeError, match="second step"):
            opt.step()
        assert unchanged(opt, [a, b], snap)


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])  # a float32 stack of temporaries; bf16 rows, probed one by one
def test_a_non_finite_temporary_is_named_and_nothing_is_written(ns_dtype):
    """A momentum buffer that overflows (|B| near the largest float): its temporary fails the probe."""
    net = _net()
    opt = modnorm.optimizer(net, "muon", lr=1e-2, ns_dtype=ns_dtype)
    train_squares(net, opt, 1)
    params = list(net.parameters())
    w = net[2].weight
    opt.state[w]["momentum_buffer"].fill_(3e38)
    net(torch.randn(8, 10)).square().mean().backward()
    w.grad.fill_(-3e38)  # B + (1-β)(g - B): g - B overflows
    snap = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="nothing was updated") as refused:
        opt.step()
    assert "momentum_buffer" in str(refused.value)
    assert unchanged(opt, params, snap)


def test_probes_read_later_name_what_was_not_finite():
    """Accelerator probes are 0-d tensors read once by ``all_finite`` (here CPU tensors stand in for them)."""
    from modnorm.optim.deferred import Deferred
    from modnorm.optim.running_bounds import RunningBounds

    d = Deferred(RunningBounds())
    d._pending += [("a (state 'exp_avg')", torch.tensor(1.0)), ("b (state 'exp_avg_sq')", torch.tensor(math.inf)),
                   ("c (state 'momentum_buffer')", torch.tensor(math.nan))]
    assert not d.all_finite()
    assert d.failed == ["b (state 'exp_avg_sq')", "c (state 'momentum_buffer')"] and not d._pending
    assert Deferred(RunningBounds()).all_finite()


def test_the_bf16_direction_stack_is_used_and_holds_no_float32_copy(monkeypatch):
    """With a bf16 Newton–Schulz, muon's stacked direction is formed in bf16: no float32 batch is made."""
    batches: list[tuple[str, torch.dtype, tuple[int, ...]]] = []

    def spy(name):
        real = getattr(torch, name)

        def wrapped(*args, **kwargs):
            t = real(*args, **kwargs)
            if t.ndim == 3:
                batches.append((name, t.dtype, tuple(t.shape)))
            return t
        return wrapped

    net = _net()
    opt = modnorm.optimizer(net, "muon", lr=1e-2, ns_dtype="bfloat16")
    train_squares(net, opt, 1)
    for name in ("empty", "stack"):
        monkeypatch.setattr(torch, name, spy(name))
    train_squares(net, opt, 1)
    monkeypatch.undo()
    assert ("empty", torch.bfloat16, (2, 24, 24)) in batches
    assert not [b for b in batches if b[1] == torch.float32], batches


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x))).relu()
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("preset, hp", [("muon", {}), ("muon", {"ns_dtype": "bfloat16"}), ("muadam", {}), ("soap", {"precondition_frequency": 2})])
@pytest.mark.parametrize("kind", ["conv", "bf16 parameters"])
def test_scratch_stack_equals_the_step_computed_aside_on_convs_and_bf16_parameters(preset, hp, kind, monkeypatch):
    """Conv kernels (no narrowed stack) and bf16 parameters with float32 state (a bf16 stack
    from float32 rows): the deferred, scratch-buffer step is bit for bit the step computed aside."""
    def run(aside: bool) -> list[torch.Tensor]:
        if aside:
            _aside(monkeypatch)
        net = _ConvNet() if kind == "conv" else _net().to(torch.bfloat16)
        opt = modnorm.optimizer(net, preset, lr=1e-2, **hp)
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            x = torch.randn(4, 3, 6, 6, generator=g) if kind == "conv" else torch.randn(16, 10, generator=g).to(torch.bfloat16)
            opt.zero_grad()
            net(x).float().square().mean().backward()
            opt.step()
        monkeypatch.undo()
        return [p.detach().clone() for p in net.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True)))


def test_bf16_finiteness_probe_sums_in_bf16():
    """The probe of a bf16 tensor flags NaN/inf and sums without a float32 copy (torch.profiler's
    allocations stay below the tensor's own size); a sum that overflows is settled by the
    transaction's exact check."""
    from torch.profiler import ProfilerActivity, profile

    from modnorm.optim.deferred import finiteness_probes

    t = torch.randn(512, 512).bfloat16()
    assert math.isfinite(float(finiteness_probes([t])[0]))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        finiteness_probes([t])
    assert max(e.cpu_memory_usage for e in prof.key_averages()) < t.numel() * t.element_size()
    for bad in (float("nan"), float("inf")):
        u = t.clone()
        u[3, 4] = bad
        assert not math.isfinite(float(finiteness_probes([u])[0]))
    huge = torch.full((64, 64), 1e37).bfloat16()  # finite values whose sum overflows
    assert not math.isfinite(float(finiteness_probes([huge])[0])) and bool(huge.isfinite().all())


@pytest.mark.parametrize("momentum, beta", [("nesterov", 0.9), ("ema_nesterov", 0.95), ("none", 0.0), ("heavy_ball", 0.9), ("adam_ema", 0.9)])
def test_every_momentum_kind_into_a_bf16_stack_equals_the_step_computed_aside(momentum, beta, monkeypatch):
    """A spectral LMO in bf16 with each momentum kind: rows formed one at a time (Nesterov kinds:
    no new buffers held) or cast from the kept-aside buffers, bit for bit the step computed aside."""
    rule = UpdateRule(norm="spectral", momentum=momentum, beta=beta, mode="lmo", ns_dtype="bfloat16", scale="none")
    recipe = Recipe(default=rule, roles={"vector": UpdateRule(norm="frobenius", mode="sharp")})

    def run(aside: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if aside:
            _aside(monkeypatch)
        net = _net()
        opt = modnorm.optimizer(net, recipe, lr=1e-2)
        train_squares(net, opt, 4)
        monkeypatch.undo()
        params = list(net.parameters())
        return [p.detach().clone() for p in params], [v.clone() for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor)]

    (pa, sa), (pb, sb) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb)) and all(torch.equal(a, b) for a, b in zip(sa, sb))


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
def test_finite_temporaries_whose_probe_sum_overflows_are_settled_exactly(ns_dtype):
    """Momentum entries of 1e37 (finite) sum past the float32 range: the exact recheck lets the step commit."""
    net = _net()
    opt = modnorm.optimizer(net, "muon", lr=1e-2, ns_dtype=ns_dtype)
    train_squares(net, opt, 1)
    w = net[2].weight
    opt.state[w]["momentum_buffer"].fill_(1e37)
    net(torch.randn(8, 10)).square().mean().backward()
    w.grad.fill_(1e37)
    opt.step()
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.full_like(w, 1e37)) and bool(w.isfinite().all())
