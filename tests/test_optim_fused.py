"""The fused in-place steps (``modnorm.optim.fused``): bit for bit torch.optim's ``fused=True``
Adam/AdamW/Adagrad/SGD, and all-or-nothing like the transactional path they replace — a step
whose precondition fails takes that path and refuses/skips exactly as it does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import importlib

import pytest
import torch

import modnorm
from kernel_calls import count_calls
from state_snapshot import snapshot, unchanged

fused_module = importlib.import_module("modnorm.optim.fused")
SHAPES = [(6, 4), (6, 4), (4, 6), (5,), ()]
KERNELS = ("_fused_adamw_", "_fused_adam_", "_fused_adagrad_", "_fused_sgd_")


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the fused kernels' calls (so that a comparison cannot pass without them)."""
    return count_calls(monkeypatch, KERNELS)


@pytest.fixture
def transactional(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to send every bucket down the transactional path (the reference)."""
    return lambda: monkeypatch.setattr(fused_module, "fused_kind", lambda *a, **k: None)


def params_of(dtype: torch.dtype, shapes: list = SHAPES, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def train(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], dtype: torch.dtype = torch.float32, steps: int = 8,
          scale: float = 1.0) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    """``steps`` steps on random gradients (the same sequence for every optimizer)."""
    ps = params_of(dtype)
    opt = make(ps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype) * scale
        opt.step()
    return ps, opt


def bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ equivalence with torch.optim(fused=True)

CASES = [
    ("adamw", {}, lambda ps, **hp: torch.optim.AdamW(ps, fused=True, **hp)),
    ("adamw", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "maximize": True},
     lambda ps, **hp: torch.optim.AdamW(ps, fused=True, **hp)),
    ("adamw", {"amsgrad": True, "weight_decay": 0.0}, lambda ps, **hp: torch.optim.AdamW(ps, fused=True, **hp)),
    ("sgd", {"momentum": 0.9}, lambda ps, **hp: torch.optim.SGD(ps, fused=True, **hp)),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}, lambda ps, **hp: torch.optim.SGD(ps, fused=True, **hp)),
    ("sgd", {"momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1, "maximize": True},
     lambda ps, **hp: torch.optim.SGD(ps, fused=True, **hp)),
    ("sgd", {}, lambda ps, **hp: torch.optim.SGD(ps, fused=True, **hp)),
    ("adagrad", {}, lambda ps, **hp: torch.optim.Adagrad(ps, fused=True, **hp)),
    ("adagrad", {"lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.1, "maximize": True},
     lambda ps, **hp: torch.optim.Adagrad(ps, fused=True, **hp)),
]
KERNEL_OF = {"adamw": "_fused_adamw_", "sgd": "_fused_sgd_", "adagrad": "_fused_adagrad_"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("preset, hp, peer", CASES)
def test_bitwise_equal_to_torch_fused(preset, hp, peer, dtype, kernel_calls):
    lr = 0.05
    ref, _ = train(lambda ps: peer(ps, lr=lr, **hp), dtype)
    assert kernel_calls[KERNEL_OF[preset]] > 0
    kernel_calls[KERNEL_OF[preset]] = 0
    got, opt = train(lambda ps: modnorm.optimizer(ps, preset, lr=lr, **hp), dtype)
    assert kernel_calls[KERNEL_OF[preset]] == 8 * 4, "the fused path was not taken (8 steps, 4 shapes)"
    assert bitwise(got, ref)
    start = params_of(dtype)
    assert not bitwise(got, start)


def test_adam_with_coupled_decay_is_torch_fused_adam(kernel_calls):
    recipe = modnorm.optim.Recipe(default=modnorm.optim.UpdateRule(
        norm="frobenius", preconditioner="adam", preconditioner_options={"beta2": 0.99, "eps": 1e-7}, momentum="adam_ema",
        beta=0.8, mode="sharp", weight_decay=0.1, weight_decay_mode="coupled"))
    got, _ = train(lambda ps: modnorm.optimizer(ps, recipe, lr=0.02))
    assert kernel_calls["_fused_adam_"] == 8 * 4
    ref, _ = train(lambda ps: torch.optim.Adam(ps, lr=0.02, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1, fused=True))
    assert bitwise(got, ref)


def test_param_groups_and_tensor_lr_equal_torch_fused(kernel_calls):
    def groups(ps: list[torch.Tensor], lr: Any) -> list[dict[str, Any]]:
        return [{"params": ps[:2], "lr": lr, "betas": (0.5, 0.9)}, {"params": ps[2:], "weight_decay": 0.3, "lr": 0.01}]

    ref, _ = train(lambda ps: torch.optim.AdamW(groups(ps, 0.02), fused=True))
    got, _ = train(lambda ps: modnorm.optimizer(groups(ps, torch.tensor(0.02, dtype=torch.float64)), "adamw"))
    assert kernel_calls["_fused_adamw_"] > 0 and bitwise(got, ref)


def test_budgets_scale_lr_and_decoupled_decay_like_torch_per_parameter(kernel_calls):
    """Budgets b (powers of two: exact) in one bucket: each parameter steps as torch's AdamW with lr·b."""
    budgets = {"a": 0.5, "b": 2.0}
    pa, pb = params_of(torch.float32, [(5, 3), (5, 3)])
    opt = modnorm.ModnormOptimizer([("a", pa), ("b", pb)], "adamw", budgets=budgets, lr=0.01, weight_decay=0.1)
    qa, qb = (p.detach().clone().requires_grad_() for p in (pa, pb))
    peers = [torch.optim.AdamW([q], lr=0.01 * budgets[n], weight_decay=0.1, fused=True) for n, q in (("a", qa), ("b", qb))]
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        for p, q in ((pa, qa), (pb, qb)):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        calls = kernel_calls["_fused_adamw_"]
        opt.step()
        assert kernel_calls["_fused_adamw_"] == calls + 2  # one call per budget
        for peer in peers:
            peer.step()
    assert torch.equal(pa, qa) and torch.equal(pb, qb)


def test_state_dict_resume_is_bitwise(kernel_calls):
    for preset, hp in (("adamw", {"amsgrad": True}), ("sgd", {"momentum": 0.9}), ("adagrad", {})):
        straight, _ = train(lambda ps: modnorm.optimizer(ps, preset, lr=0.01, **hp), steps=6)
        first, opt = train(lambda ps: modnorm.optimizer(ps, preset, lr=0.01, **hp), steps=3)
        saved = opt.state_dict()
        ps = [p.detach().clone().requires_grad_() for p in first]
        resumed = modnorm.optimizer(ps, preset, lr=0.01, **hp)
        resumed.load_state_dict(saved)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):  # the gradients of steps 1-3, discarded: steps 4-6 follow
            [torch.randn(p.shape, generator=g) for p in ps]
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g)
            resumed.step()
        assert bitwise(ps, straight), preset


def test_bf16_parameters_keep_the_transactional_path_with_fp32_state(kernel_calls):
    ps, opt = train(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.01), dtype=torch.bfloat16, steps=3)
    assert sum(kernel_calls.values()) == 0
    assert all(opt.state[p]["exp_avg_sq"].dtype == torch.float32 for p in ps)
    assert not bitwise(ps, params_of(torch.bfloat16))


def test_muon_routes_embeddings_and_vectors_through_the_fused_adamw(kernel_calls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 10))
    opt = modnorm.optimizer(model, "muon", lr=0.02)
    x = torch.randint(0, 10, (6,))
    model(x).pow(2).mean().backward()
    opt.step()
    assert kernel_calls["_fused_adamw_"] > 0


# ------------------------------------------------------------------ all-or-nothing


@pytest.mark.parametrize("preset", ["adamw", "sgd", "adagrad"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_bad_gradient_changes_nothing(preset, bad, nonfinite, kernel_calls):
    ps, opt = train(lambda ps: modnorm.optimizer(list(zip("abcde", ps)), preset, lr=0.01, momentum=0.9, nonfinite=nonfinite)
                    if preset == "sgd" else modnorm.optimizer(list(zip("abcde", ps)), preset, lr=0.01, nonfinite=nonfinite), steps=2)
    for p in ps:
        p.grad = torch.randn(p.shape)
    ps[2].grad[1, 1] = bad
    snap = snapshot(opt, ps)
    if preset == "sgd" and bad == 1e30:  # no squares in SGD's state: a finite step, taken
        opt.step()
        assert all(bool(t.isfinite().all()) for p in ps for t in [p, *opt.state[p].values()])
        return
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError, match="nothing was updated") as e:
            opt.step()
        assert "'c'" in str(e.value) or '"c (' in str(e.value)  # names the parameter
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert unchanged(opt, ps, snap)


def test_a_gradient_whose_square_overflows_float32_takes_the_transactional_path(kernel_calls, transactional):
    """|g| = 2e19: g² overflows float32, (1−β2)·g·g does not. The precondition (|g| ≤ √M/4) fails,
    so the step is the transactional path's: taken, bit for bit as there, with finite state."""
    ps, opt = train(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.01), steps=2)
    saved, start = opt.state_dict(), [p.detach().clone() for p in ps]

    def step_from_saved() -> list[torch.Tensor]:
        qs = [p.clone().requires_grad_() for p in start]
        o = modnorm.optimizer(qs, "adamw", lr=0.01)
        o.load_state_dict(saved)
        for q in qs:
            q.grad = torch.full(q.shape, 2e19)
        calls = kernel_calls["_fused_adamw_"]
        o.step()
        assert kernel_calls["_fused_adamw_"] == calls
        out = [t for q in qs for t in [q.detach(), *o.state[q].values()]]
        assert all(bool(t.isfinite().all()) for t in out)
        return out

    fused = step_from_saved()
    transactional()
    reference = step_from_saved()
    assert bitwise(fused, reference) and not bitwise(fused[:1], start[:1])


@pytest.mark.parametrize("preset, hp", [("adamw", {}), ("adamw", {"amsgrad": True}), ("sgd", {"momentum": 0.9}),
                                        ("sgd", {"momentum": 0.9, "weight_decay": 1e-3}), ("adagrad", {"weight_decay": 0.1})])
def test_decisions_match_the_transactional_path_across_gradient_scales(preset, hp, transactional):
    """Gradients from 1e-30 to 1e38: each step commits or is refused as on the transactional path
    (a gradient past the precondition's bound takes that path), and the committed values agree."""
    exponents = [0, 18, 18.7, 19, 30, 0, 37, 38, 38, -30, 0]

    def run() -> tuple[list[str], list[torch.Tensor]]:
        ps = params_of(torch.float32)
        opt = modnorm.optimizer(ps, preset, lr=0.01, **hp)
        g = torch.Generator().manual_seed(3)
        outcome = []
        for e in exponents:
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g) * 10.0**e
            snap = snapshot(opt, ps)
            try:
                opt.step()
                outcome.append("ok")
                assert all(bool(t.isfinite().all()) for p in ps for t in opt.state[p].values())
            except FloatingPointError:
                outcome.append("refused")
                assert unchanged(opt, ps, snap)
        return outcome, [p.detach().clone() for p in ps]

    fused, fused_params = run()
    transactional()
    reference, reference_params = run()
    assert fused == reference and "refused" in fused and "ok" in fused
    for a, b in zip(fused_params, reference_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the fused kernels' rounding differs from foreach's


def test_a_state_tensor_assigned_anew_is_read_again(kernel_calls):
    """SGD's running bound on the buffer belongs to the buffer object: a new one is measured."""
    ps, opt = train(lambda ps: modnorm.optimizer(ps, "sgd", lr=0.01, momentum=0.9), steps=2)
    opt.state[ps[0]]["momentum_buffer"] = torch.full_like(ps[0], 3.3e38)
    for p in ps:
        p.grad = torch.full_like(p, 5e37)  # within the gradient bound M/4; 0.9 · 3.3e38 + 5e37 overflows
    snap = snapshot(opt, ps)
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        opt.step()
    assert unchanged(opt, ps, snap)


def test_a_failure_elsewhere_leaves_the_fused_buckets_untouched(kernel_calls):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    opt = modnorm.optimizer(model, "muon", lr=0.02)
    params = list(model.parameters())
    x = torch.randint(0, 10, (6,))
    model(x).pow(2).mean().backward()
    opt.step()
    model(x).pow(2).mean().backward()
    model[1].weight.grad[0, 0] = float("nan")  # a hidden matrix: the Newton–Schulz bucket
    snap = snapshot(opt, params)
    calls = kernel_calls["_fused_adamw_"]
    with pytest.raises(FloatingPointError, match=r"1\.weight"):
        opt.step()
    assert unchanged(opt, params, snap) and kernel_calls["_fused_adamw_"] == calls
