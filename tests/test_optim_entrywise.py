"""The entrywise shortcut (Frobenius base, sharp mode: U = d / D² on per-parameter lists)
equals the stacked Theorem-1 path (stack → DNorm(Frobenius, D).sharp → unbind), which a
preconditioner without ``entrywise_divisor`` takes: same-shape parameters with different
budgets, decoupled and coupled weight decay, Adam / SANIA / Adagrad statistics; and both
equal torch.optim's Adam, AdamW and Adagrad run per parameter with lr × budget."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import modnorm
from modnorm.optim import PRECONDITIONERS, Recipe, UpdateRule, register_preconditioner
from modnorm.optim.diagonal import SecondMoment


class _Stacked(SecondMoment):
    """SecondMoment without the shortcut: the optimizer must use ``norm`` (DNorm)."""

    def entrywise_divisor(self, states, step):  # type: ignore[override]
        return None


FORMS = {
    "adam": {"inner": 0.5, "outer": 0.5},
    "sania": {"inner": 1.0, "outer": 0.5},
    "adagrad": {"accumulate": "sum", "initial_accumulator_value": 0.1},
}


@pytest.fixture(autouse=True)
def _registered():
    with PRECONDITIONERS.scoped():
        register_preconditioner("stacked_second_moment", lambda **kw: _Stacked(**kw))
        register_preconditioner("entrywise_second_moment", lambda **kw: SecondMoment(**kw))
        yield


def _rule(precond: str, form: str, wd_mode: str) -> UpdateRule:
    momentum = "none" if form == "adagrad" else "adam_ema"
    return UpdateRule(norm="frobenius", preconditioner=precond, preconditioner_options={"eps": 1e-6, **FORMS[form]},
                momentum=momentum, beta=0.9, mode="sharp", weight_decay=0.1, weight_decay_mode=wd_mode)


BUDGETS: dict[str, Any] = {"a": 0.5, "b": 2.0, "c": 0.0, "v": 1.0}  # differing budgets inside one bucket


def _problem() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (5, 3), "b": (5, 3), "c": (5, 3), "v": (4,)}
    params = {n: torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for n, s in shapes.items()}
    targets = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    return params, targets


def _train(params: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], opts: list[torch.optim.Optimizer], steps: int) -> list[torch.Tensor]:
    for _ in range(steps):
        for opt in opts:
            opt.zero_grad()
        sum(((p - targets[n]) ** 2).sum() + 0.2 * ((p - targets[n]) ** 4).sum() for n, p in params.items()).backward()
        for opt in opts:
            opt.step()
    return [p.detach() for p in params.values()]


def _run(precond: str, form: str, wd_mode: str, steps: int = 12) -> list[torch.Tensor]:
    params, targets = _problem()
    opt = modnorm.ModnormOptimizer(list(params.items()), Recipe(default=_rule(precond, form, wd_mode)), budgets=BUDGETS, lr=0.05)
    return _train(params, targets, [opt], steps)


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("wd_mode", ["decoupled", "coupled"])
def test_entrywise_shortcut_equals_stacked_dnorm(form: str, wd_mode: str) -> None:
    fast = _run("entrywise_second_moment", form, wd_mode)
    slow = _run("stacked_second_moment", form, wd_mode)
    start = _run("entrywise_second_moment", form, wd_mode, steps=0)
    assert max(float((a - b).abs().max()) for a, b in zip(fast, start)) > 1e-2
    for a, b in zip(fast, slow):
        assert float((a - b).abs().max()) < 1e-12


@pytest.mark.parametrize("form, wd_mode", [("adam", "decoupled"), ("adam", "coupled"), ("adagrad", "coupled")])
def test_both_paths_equal_torch_optim(form: str, wd_mode: str) -> None:
    """The independent reference: torch.optim's Adam/AdamW/Adagrad per parameter with lr × budget."""
    params, targets = _problem()
    peers = {
        ("adam", "decoupled"): lambda p, lr: torch.optim.AdamW([p], lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1),
        ("adam", "coupled"): lambda p, lr: torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1),
        ("adagrad", "coupled"): lambda p, lr: torch.optim.Adagrad([p], lr=lr, initial_accumulator_value=0.1, eps=1e-6, weight_decay=0.1),
    }
    ref = _train(params, targets, [peers[form, wd_mode](p, 0.05 * BUDGETS[n]) for n, p in params.items()], 12)
    for precond in ("entrywise_second_moment", "stacked_second_moment"):
        for a, b in zip(_run(precond, form, wd_mode), ref):
            assert float((a - b).abs().max()) < 1e-12, precond


def test_dnorm_positive_skips_only_the_zero_handling() -> None:
    g = torch.Generator().manual_seed(3)
    G = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    D = torch.rand(2, 5, 4, generator=g, dtype=torch.float64) + 0.1
    for base in (modnorm.Spectral(method="svd"), modnorm.Frobenius()):
        general, positive = modnorm.DNorm(base, D), modnorm.DNorm(base, D, positive=True)
        for op in ("lmo", "sharp", "dual"):
            assert torch.allclose(getattr(general, op)(G), getattr(positive, op)(G), rtol=0, atol=1e-14), op
    # with a zero entry the general form gives 0 there; the promise D > 0 would be broken
    D0 = D.clone()
    D0[0, 0, 0] = 0.0
    assert modnorm.DNorm(modnorm.Frobenius(), D0).sharp(G)[0, 0, 0] == 0
    assert not torch.isfinite(modnorm.DNorm(modnorm.Frobenius(), D0, positive=True).sharp(G)[0, 0, 0])


@pytest.mark.parametrize("inner, outer, bias_correction", [(0.5, 0.5, True), (1.0, 0.25, True), (0.25, 0.5, False), (1.0, 1.0, True)])
def test_second_moment_diagonal_is_formed_in_its_stack(inner, outer, bias_correction):
    """``SecondMoment.diagonal`` (D formed in the rows of one stack) gives the bits of stacking the
    per-parameter D's, and the float64 formula ((V/bc)^inner + ε)^outer written here."""
    g = torch.Generator().manual_seed(5)
    pre = SecondMoment(beta2=0.99, eps=1e-8, inner=inner, outer=outer, bias_correction=bias_correction)
    states = [{pre.key: torch.rand(6, 4, generator=g) * 1e-3} for _ in range(3)]
    before = [s[pre.key].clone() for s in states]
    D = pre.diagonal(states, step=7)
    assert torch.equal(D, torch.stack(pre._powers(states, 7, outer)))
    assert all(torch.equal(s[pre.key], b) for s, b in zip(states, before))  # V untouched
    bc = 1.0 - 0.99**7 if bias_correction else 1.0
    V = torch.stack(before).double()
    want = ((V / bc) ** inner + 1e-8) ** outer
    assert torch.allclose(D.double(), want, rtol=1e-5, atol=0)
