"""16-bit optimizer state (``state_dtype="bfloat16"``): stochastic rounding, float32 steps, resume, refusals.

References: the two neighbours of a value on the bfloat16/float16 grid computed from its
binary exponent in float64; AdamW and heavy-ball momentum written in float64."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import modnorm
from modnorm.optim import PRESETS
from modnorm.optim import fused as fused_module
from modnorm.optim.config import ConfigError
from modnorm.optim.low_precision import stochastic_round
from state_snapshot import snapshot, tiny_mlp, unchanged

MANTISSA = {torch.bfloat16: 7, torch.float16: 10}
MIN_EXPONENT = {torch.bfloat16: -126, torch.float16: -14}  # of the smallest normal number
EXACT = {"QL", "QR", "A_inv_root", "B_inv_root", "kfac_QA", "kfac_QS", "kfac_lamA", "kfac_lamS", "Qa", "Qb", "la", "lb", "z", "prodigy_x0"}


def neighbours(x: float, dtype: torch.dtype) -> tuple[float, float]:
    """The grid points of ``dtype`` just below and above x (float64 arithmetic)."""
    exponent = max(math.floor(math.log2(abs(x))), MIN_EXPONENT[dtype])
    ulp = 2.0 ** (exponent - MANTISSA[dtype])
    lo = math.floor(x / ulp) * ulp
    return lo, lo + ulp


CASES = [
    (torch.float32, torch.bfloat16, 1.0 + 0.3 * 2**-7),
    (torch.float32, torch.bfloat16, -3.7e-3),
    (torch.float32, torch.bfloat16, 2.5e-39),  # subnormal in both
    (torch.float64, torch.bfloat16, 0.123456789),
    (torch.float32, torch.float16, 0.1),
    (torch.float32, torch.float16, -1234.567),
    (torch.float32, torch.float16, 3.0e-6),  # subnormal in float16
]


@pytest.mark.parametrize("source,target,x", CASES)
def test_stochastic_rounding_is_unbiased_and_gives_only_the_two_neighbours(source, target, x):
    x = float(torch.tensor(x, dtype=source))  # the value as the source dtype holds it
    lo, hi = neighbours(x, target)
    assert lo < x < hi
    n = 200_000
    out = stochastic_round(torch.full((n,), x, dtype=source), target, torch.Generator().manual_seed(0)).double()
    assert out.dtype == torch.float64 and set(out.unique().tolist()) == {lo, hi}
    p = (x - lo) / (hi - lo)
    # the count of `hi` is Binomial(n, p): its mean within 5 standard deviations
    bound = 5 * (hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(float(out.mean()) - x) <= bound


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_keeps_grid_values_and_non_finite_values(target):
    grid = torch.tensor([0.0, -0.0, 1.0, -2.5, 0.125, 3.0], dtype=target).float()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        assert torch.equal(stochastic_round(grid, target, g).float(), grid)
    special = torch.tensor([math.inf, -math.inf, math.nan])
    out = stochastic_round(special, target, g).float()
    assert out[0] == math.inf and out[1] == -math.inf and out[2].isnan()


def test_float16_overflow_rounds_to_inf_and_the_step_is_refused():
    """The check reads the rounded (stored) state: V = (1-β2) g² = 1e5 is finite in float32, not in float16."""
    w = torch.ones(3, requires_grad=True)
    opt = modnorm.optimizer([w], "adamw", state_dtype="float16", eps=1e-4, lr=0.1)
    w.grad = torch.full((3,), 1e4)
    with pytest.raises(FloatingPointError, match="exp_avg_sq.*nothing was updated"):
        opt.step()
    assert w.eq(1.0).all() and len(opt.state) == 0


def _adamw_reference(w, g, m, v, t, lr=0.1, betas=(0.9, 0.99), eps=1e-8, wd=0.01):
    """One AdamW step in float64: (new w, new m, new v)."""
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    step = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return w * (1 - lr * wd) - lr * step, m, v


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The bfloat16 spacing at |x| (float64), plus float32 rounding of the step's own arithmetic."""
    e = torch.floor(torch.log2(x.abs().clamp_min(2.0**-126)))
    return torch.exp2(e - 7) + 1e-6 * x.abs()


def test_adamw_steps_match_a_float64_reference_within_the_bfloat16_bound(monkeypatch):
    """Step 1 (fresh state) is the float32-state step of the same (transactional) path — float32
    state would otherwise take torch's fused kernel, which rounds differently; the stored m, v are
    within one bfloat16 spacing of the exact ones; step 2 computes in float32 from the stored m, v."""
    monkeypatch.setattr(fused_module, "fused_kind", lambda *a, **k: None)
    torch.manual_seed(0)
    w = torch.randn(5, 7, requires_grad=True)
    ref32 = w.detach().clone().requires_grad_()
    opt = modnorm.optimizer([w], "adamw", state_dtype="bfloat16", lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    opt32 = modnorm.optimizer([ref32], "adamw", lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    W = w.detach().double()
    grads = [torch.randn(5, 7), torch.randn(5, 7)]
    w.grad, ref32.grad = grads[0].clone(), grads[0].clone()
    opt.step()
    opt32.step()
    assert w.dtype == torch.float32 and torch.equal(w, ref32)  # step 1: the same float32 arithmetic
    W1, M, V = _adamw_reference(W, grads[0].double(), 0.0, 0.0, 1)
    torch.testing.assert_close(w.detach().double(), W1, rtol=1e-6, atol=1e-6)
    s = opt.state[w]
    for key, exact in (("exp_avg", M), ("exp_avg_sq", V)):
        assert s[key].dtype == torch.bfloat16
        assert ((s[key].double() - exact).abs() <= _ulp(exact)).all(), key
    before, m1, v1 = w.detach().double(), s["exp_avg"].double(), s["exp_avg_sq"].double()
    w.grad = grads[1].clone()
    opt.step()
    W2, M2, V2 = _adamw_reference(before, grads[1].double(), m1, v1, 2)
    torch.testing.assert_close(w.detach().double(), W2, rtol=1e-6, atol=1e-6)
    for key, exact in (("exp_avg", M2), ("exp_avg_sq", V2)):
        assert ((opt.state[w][key].double() - exact).abs() <= _ulp(exact)).all(), key


def test_muon_momentum_buffer_is_within_one_bfloat16_spacing_of_the_float64_buffer():
    torch.manual_seed(0)
    w = torch.randn(6, 4, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    opt = modnorm.optimizer([("w", w)], "muon", state_dtype="bfloat16", lr=0.02)
    opt32 = modnorm.optimizer([("w", ref)], "muon", lr=0.02)
    beta = opt.param_groups[0]["momentum"]
    B = torch.zeros(6, 4, dtype=torch.float64)
    for t in range(3):
        g = torch.randn(6, 4)
        stored = opt.state[w]["momentum_buffer"].double() if t else B
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt32.step()
        B = beta * stored + (1 - beta) * g.double()  # torch.optim.Muon's lerp, from the stored buffer
        assert ((opt.state[w]["momentum_buffer"].double() - B).abs() <= _ulp(B)).all()
        if t == 0:
            assert torch.equal(w, ref)  # the first step is the float32-state step


def _state_bytes(opt):
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim)


@pytest.mark.parametrize("preset", ["adamw", "muon", "adagrad", "lion"])
def test_bfloat16_state_takes_half_the_memory(preset):
    sizes = {}
    for dtype in (None, "bfloat16"):
        model, loss = tiny_mlp()
        opt = modnorm.optimizer(model, preset, state_dtype=dtype)
        loss().backward()
        opt.step()
        sizes[dtype] = _state_bytes(opt)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(v.element_size() == (2 if dtype else 4) for s in opt.state.values() for v in s.values() if v.ndim)
    assert sizes["bfloat16"] * 2 == sizes[None] > 0


SMOKE = sorted(p for p in PRESETS if not p.startswith("sophia"))


@pytest.mark.parametrize("preset", SMOKE)
def test_every_preset_steps_with_bfloat16_state(preset):
    """Moments and statistics are stored in bfloat16, decompositions and parameter copies in float32
    (``low_precision``'s policy); the loss goes down as with float32 state."""
    losses = {}
    for dtype in (None, "bfloat16"):
        model, loss = tiny_mlp()
        opt = modnorm.optimizer(model, preset, state_dtype=dtype)
        for _ in range(4):
            opt.zero_grad()
            value = loss()
            value.backward()
            opt.step(loss=value.detach())
        losses[dtype] = float(loss().detach())
        if dtype is not None:  # a preconditioner's exact keys name its state (regression: a renamed key went bf16)
            for gi, group in enumerate(opt.param_groups):
                for p, plan in zip(group["params"], opt._plans(gi, group)):
                    exact = plan.precond.exact_state
                    assert not exact or exact & set(opt.state[p]), (type(plan.precond).__name__, set(opt.state[p]))
        for s in opt.state.values():
            for k, v in s.items():
                if isinstance(v, torch.Tensor) and v.ndim:
                    assert v.dtype == (torch.float32 if dtype is None or k in EXACT else torch.bfloat16), (k, v.dtype)
                    assert v.isfinite().all()
    assert losses["bfloat16"] == pytest.approx(losses[None], rel=0.05, abs=1e-3)


def test_sophia_steps_with_bfloat16_state():
    model, loss = tiny_mlp()
    opt = modnorm.optimizer(model, "sophia", state_dtype="bfloat16", loss_fn=lambda params: loss(), loss_params=dict(model.named_parameters()))
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert {opt.state[model[0].weight][k].dtype for k in ("h", "exp_avg")} == {torch.bfloat16}


def _run(preset, steps, start=0, state=None, seed=0):
    """Steps ``start`` … ``start+steps-1`` of a run (step k scales the loss by 1 + 0.3k); ``state``: resume from it.
    Returns the model, the optimizer and the loss closure."""
    model, loss = tiny_mlp()
    opt = modnorm.optimizer(model, preset, state_dtype="bfloat16", rounding_seed=seed)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
    for k in range(start, start + steps):
        opt.zero_grad()
        (loss() * (1 + 0.3 * k)).backward()
        opt.step()
    return model, opt, loss


@pytest.mark.parametrize("preset", ["adamw", "muon", "soap", "adamw_schedulefree"])
def test_resumed_run_is_bitwise_the_uninterrupted_one(preset):
    """The rounding seed travels in state_dict: a resumed optimizer built with another seed
    rounds like the uninterrupted run, and no step draws from the global RNG."""
    full_model, full, _ = _run(preset, 6)
    model, opt, _ = _run(preset, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["optim"]["modnorm_state_storage"] == {"dtype": "bfloat16", "rounding": "stochastic", "seed": 0}
    rng = torch.get_rng_state()
    resumed_model, resumed, _ = _run(preset, 3, start=3, state=saved, seed=123)
    assert torch.equal(torch.get_rng_state(), rng)  # tiny_mlp seeds it; nothing after that draws from it
    assert resumed.rounding_seed == 0
    for p, q in zip(resumed_model.parameters(), full_model.parameters()):
        assert torch.equal(p, q)
        assert resumed.state[p].keys() == full.state[q].keys()
        for k, v in full.state[q].items():
            assert resumed.state[p][k].dtype == v.dtype and torch.equal(resumed.state[p][k], v), k
    _, other, _ = _run(preset, 6, seed=1)  # another seed rounds otherwise
    assert any(not torch.equal(other.state[p][k], full.state[q][k])
               for p, q in zip(other.state, full.state) for k in full.state[q] if full.state[q][k].dtype == torch.bfloat16)


def test_checkpoint_directory_resume_is_bitwise(tmp_path):
    from modnorm import load_checkpoint, save_checkpoint

    full_model, _, _ = _run("adamw", 4)
    model, opt, _ = _run("adamw", 2, seed=0)
    save_checkpoint(tmp_path, model, opt)
    fresh_model, fresh, loss = _run("adamw", 0, seed=77)
    load_checkpoint(tmp_path, fresh_model, fresh)
    assert fresh.rounding_seed == 0 and fresh.state[fresh_model[0].weight]["exp_avg"].dtype == torch.bfloat16
    for k in range(2, 4):
        fresh.zero_grad()
        (loss() * (1 + 0.3 * k)).backward()
        fresh.step()
    assert all(torch.equal(p, q) for p, q in zip(fresh_model.parameters(), full_model.parameters()))


def test_a_refused_step_changes_nothing_and_draws_no_randomness():
    model, loss = tiny_mlp()
    opt = modnorm.optimizer(model, "adamw", state_dtype="bfloat16", rounding_seed=3)
    twin_model, twin_loss = tiny_mlp()
    twin = modnorm.optimizer(twin_model, "adamw", state_dtype="bfloat16", rounding_seed=3)
    params = list(model.parameters())
    for o, f in ((opt, loss), (twin, twin_loss)):
        f().backward()
        o.step()
        o.zero_grad()
    loss().backward()
    params[0].grad[0, 0] = math.inf
    snap = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step()
    assert unchanged(opt, params, snap)
    assert all(v.dtype == torch.bfloat16 for s in opt.state.values() for k, v in s.items() if k != "step")
    opt.zero_grad()
    for o, f in ((opt, loss), (twin, twin_loss)):  # the next step rounds as if the refused one never happened
        f().backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twin_model.parameters()))
    assert all(torch.equal(opt.state[p]["exp_avg"], twin.state[q]["exp_avg"]) for p, q in zip(params, twin_model.parameters()))


def test_stochastic_rounding_keeps_an_ema_on_track_where_nearest_stalls():
    """V of a constant gradient approaches g² (1 - β2^t); rounded to nearest in bfloat16, an
    increment (1-β2)(g² - V) below half a spacing (2⁻⁹ V) is lost, so V stalls near 0.8 g²."""
    results = {}
    for rounding in ("stochastic", "nearest"):
        w = torch.zeros(400, requires_grad=True)
        opt = modnorm.optimizer([w], "adamw", state_dtype="bfloat16", state_rounding=rounding, lr=0.0, betas=(0.9, 0.99), rounding_seed=0)
        for _ in range(500):
            w.grad = torch.ones(400)
            opt.step()
        results[rounding] = float(opt.state[w]["exp_avg_sq"].double().mean())
    exact = 1 - 0.99**500
    assert abs(results["stochastic"] - exact) < 0.01
    assert results["nearest"] < 0.9


@pytest.mark.parametrize("bad", ["int8", "bf16", torch.int8, torch.complex64, 16])
def test_state_dtype_that_is_not_a_float_dtype_is_refused(bad):
    with pytest.raises(ConfigError, match=r"state_dtype must be None or a floating dtype.*bfloat16"):
        modnorm.optimizer([torch.zeros(3, requires_grad=True)], "adamw", state_dtype=bad)


def test_state_dtype_as_torch_dtype_is_accepted():
    w = torch.zeros(3, requires_grad=True)
    assert modnorm.optimizer([w], "adamw", state_dtype=torch.bfloat16).state_dtype == "bfloat16"


@pytest.mark.parametrize("kwargs,match", [
    ({"state_rounding": "up"}, "state_rounding must be one of"),
    ({"rounding_seed": -1}, "rounding_seed must be None or an int"),
    ({"rounding_seed": 1.5}, "rounding_seed must be None or an int"),
])
def test_bad_rounding_options_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        modnorm.optimizer([torch.zeros(3, requires_grad=True)], "adamw", state_dtype="bfloat16", **kwargs)


def test_float16_state_with_an_eps_it_cannot_hold_is_refused_naming_the_parameter_and_the_fix():
    model, loss = tiny_mlp()
    with pytest.raises(ConfigError, match=r"parameter '0.weight'.*eps=1e-08 is too small for the dtype torch.float16.*eps ≥ 6.1e-05"):
        modnorm.optimizer(model, "soap", state_dtype="float16")
    loss().backward()  # nothing was built, nothing was touched
    assert all(p.grad is not None for p in model.parameters())


def test_dtensor_parameters_with_16_bit_state_are_refused(tmp_path):
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group yet")
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        w = nn.Parameter(distribute_tensor(torch.randn(4, 3), init_device_mesh("cpu", (1,)), [Shard(0)]))
        with pytest.raises(ConfigError, match=r"parameter 'w' is a DTensor.*use state_dtype=None"):
            modnorm.optimizer([("w", w)], "adamw", state_dtype="bfloat16")
        modnorm.optimizer([("w", w)], "adamw")  # fp32 state: fine
    finally:
        dist.destroy_process_group()


def test_bfloat16_parameters_with_bfloat16_state_compute_in_float32():
    """A 16-bit state_dtype is a storage format for 16-bit parameters too: the first step (fresh
    state) equals the float32-state step, and the state is stored in bfloat16."""
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.bfloat16, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    opt = modnorm.optimizer([w], "adamw", state_dtype="bfloat16", lr=0.1)
    opt32 = modnorm.optimizer([ref], "adamw", lr=0.1)  # bf16 parameters: float32 state by default
    w.grad = torch.randn(5, 4, dtype=torch.bfloat16)
    ref.grad = w.grad.clone()
    opt.step()
    opt32.step()
    assert torch.equal(w, ref) and opt.state[w]["exp_avg"].dtype == torch.bfloat16 and opt32.state[ref]["exp_avg"].dtype == torch.float32


def test_default_seed_is_the_same_in_every_process():
    """Replicas seeded differently (torch.manual_seed(seed + rank)) round alike: the default seed is 0."""
    states = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        w = torch.ones(50, requires_grad=True)
        opt = modnorm.optimizer([w], "adamw", state_dtype="bfloat16")
        w.grad = torch.full((50,), 0.1234567)
        opt.step()
        states.append(opt.state[w]["exp_avg_sq"])
        assert opt.rounding_seed == 0
    assert torch.equal(*states) and len(states[0].unique()) == 2  # both neighbours occur, at the same entries


def test_meta_parameters_step_with_bfloat16_state():
    """Shapes only: no generator on the meta device (regression: creating one raised)."""
    w = torch.empty(4, 3, device="meta", requires_grad=True)
    opt = modnorm.optimizer([w], "adamw", state_dtype="bfloat16")
    w.grad = torch.empty(4, 3, device="meta")
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.bfloat16 and opt.state[w]["exp_avg"].is_meta
