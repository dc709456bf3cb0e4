"""What a matrix-preconditioner step computes and copies, counted with a dispatch mode (not
timed), and that its bucket-stacked state (``stacked_state``) resumes bitwise."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import modnorm
from modnorm.optim.stacked_state import assign, stacked

F64 = torch.float64
PRODUCTS = {"bmm", "baddbmm", "baddbmm_", "mm", "addmm", "addmm_", "matmul"}
STACKS = {"stack", "cat"}


class _Ops(TorchDispatchMode):
    """Counts the aten operators run inside the mode, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.count: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn: Callable[[], object]) -> Counter[str]:
    with _Ops() as mode:
        fn()
    return mode.count


def _bucket(preset: str, **hp: object) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """Three same-shape hidden matrices (one bucket) with fixed gradients."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(6, 4, generator=g, dtype=F64).requires_grad_() for _ in range(3)]
    for w in ws:
        w.grad = torch.randn(6, 4, generator=g, dtype=F64)
    opt = modnorm.optimizer([(f"h{i}", w) for i, w in enumerate(ws)], preset, lr=1e-2, root_dtype="float64", **hp)
    return opt, ws


@pytest.mark.parametrize(
    "preset, hp, products",
    [
        ("soap", {"precondition_frequency": 10}, 8),  # A, B; Q_Lᵀ G Q_R for V; Q_Lᵀ M Q_R; back: 2 each
        ("shampoo", {"precondition_frequency": 10}, 4),  # A, B; A^{-p} M B^{-p}
        ("shampoo_one_sided", {"precondition_frequency": 10}, 2),  # A; A^{-1/2} M
    ],
)
def test_a_step_between_refreshes_takes_its_products_and_copies_no_state(preset: str, hp: dict, products: int) -> None:
    """Between refreshes: the products the formula needs for the bucket, the two stacks of the
    step (gradients, direction) and nothing else; the bases / inverse roots are the same tensors."""
    opt, ws = _bucket(preset, **hp)
    opt.step()
    fixed = [k for k in ("QL", "QR", "A_inv_root", "B_inv_root") if k in opt.state[ws[0]]]
    before = [{k: opt.state[w][k] for k in fixed} for w in ws]
    count = _ops(opt.step)
    assert sum(count[k] for k in PRODUCTS) == products, count
    # gradients (for the step, and again at the commit, where A and B are updated in place), the direction (formed at
    # the commit), max |g| (read once for the bounds), the finiteness probes
    assert sum(count[k] for k in STACKS) <= 5, count
    assert fixed and all(opt.state[w][k] is t for w, b in zip(ws, before) for k, t in b.items())
    assert "linalg_eigh" not in count and "_linalg_eigh" not in count


def test_shampoo_keeps_the_inverse_roots_a_step_uses() -> None:
    """The state holds (A + εI)^{-p} (formed once per refresh), so the step is P_A M P_B."""
    opt, ws = _bucket("shampoo", eps=1e-6, momentum=0.0)
    opt.step()
    G = ws[0].grad
    for key, S in (("A_inv_root", G @ G.mT), ("B_inv_root", G.mT @ G)):
        lam, Q = torch.linalg.eigh(S)
        want = (Q * (lam.clamp_min(0) + 1e-6).pow(-0.25)) @ Q.mT
        torch.testing.assert_close(opt.state[ws[0]][key], want, rtol=1e-7, atol=1e-9)  # rank-deficient A: λ ≈ 0 + round-off


@pytest.mark.parametrize("preset", ["soap", "shampoo", "kl_shampoo", "splus"])
def test_state_resumes_bitwise_whether_loaded_as_views_or_copies(preset: str) -> None:
    """A state dict saved mid-run (per parameter; the bucket's stacks stored once) resumes the
    run bitwise, and so does a state whose tensors were copied one by one (the stacking path)."""
    opt, ws = _bucket(preset, precondition_frequency=3)
    for _ in range(4):
        opt.step()
    sd = opt.state_dict()
    assert all(v.shape[0] in (4, 6) for s in sd["state"].values() for k, v in s.items() if k in ("A", "QL", "exp_avg"))
    buf = io.BytesIO()
    torch.save(sd, buf)
    runs = []
    for copies in (False, True):
        twin, tws = _bucket(preset, precondition_frequency=3)
        with torch.no_grad():
            for w, t in zip(ws, tws):
                t.copy_(w)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
        if copies:
            loaded["state"] = {i: {k: v.clone() for k, v in s.items()} for i, s in loaded["state"].items()}
        twin.load_state_dict(loaded)
        runs.append((twin, tws))
    for _ in range(5):
        for o in [opt] + [r[0] for r in runs]:
            o.step()
    for _, tws in runs:
        for w, t in zip(ws, tws):
            assert torch.equal(w, t)


def test_stacked_views_and_copies() -> None:
    states = [{"x": torch.zeros(2, 3)} for _ in range(3)]
    X = torch.arange(18.0).reshape(3, 2, 3)
    assign(states, "x", X)
    S = stacked([s["x"] for s in states])
    assert torch.equal(S, X) and S.data_ptr() == X.data_ptr()  # the same memory: no copy
    assert stacked([states[1]["x"], states[0]["x"], states[2]["x"]]).data_ptr() != X.data_ptr()  # out of order: a copy
    assert torch.equal(stacked([states[1]["x"], states[0]["x"]]), X[[1, 0]])
    assign(states, "x", X.mT.mT.to(F64))  # dtype of the old value (float32) and contiguous
    assert states[0]["x"].dtype == torch.float32 and states[0]["x"].is_contiguous()
