"""Newton–Schulz product forms (batched vs 2-D loop), their measured choice, and SpectralConv's flattened layout."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn

import modnorm
import modnorm.polar_products as pp
from modnorm import layers
from modnorm.norms import SpectralConv, spectral_scale
from modnorm.polar import orthogonalize
from state_snapshot import snapshot, unchanged


def _svd_polar(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    return U @ Vh


def _conditioned(batch: int, m: int, n: int, kappa: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Matrices U diag(σ) Vᵀ with σ log-spaced in [1/κ, 1]."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(batch, m, min(m, n), generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(batch, n, min(m, n), generator=g, dtype=torch.float64))[0]
    s = torch.logspace(0, -math.log10(kappa), min(m, n), dtype=torch.float64)
    return (U * s) @ V.mT


@pytest.fixture
def loop_fast(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU probe measured the 2-D loop `speedup` times faster than the batched call."""
    calls: list[tuple] = []

    def set_speedup(speedup: float) -> list[tuple]:
        def fake(threads: int, dtype: torch.dtype, count: int, n: int, m: int) -> float:
            calls.append((dtype, count, n, m))
            return speedup

        monkeypatch.setattr(pp, "_cpu_speedup", fake)
        return calls

    return set_speedup


# float64: both forms are the same polynomial to rounding; float32 / bf16: within the dtype's floor.
@pytest.mark.parametrize("dtype, vs_svd, vs_batched", [(torch.float64, 1e-12, 1e-13), (torch.float32, 2e-5, 1e-5),
                                                        (torch.bfloat16, 6e-2, 6e-2)])
@pytest.mark.parametrize("shape", [(5, 48, 32), (3, 32, 80), (1, 40, 40)])
def test_loop_equals_batched_and_svd(dtype: torch.dtype, vs_svd: float, vs_batched: float, shape: tuple[int, ...]) -> None:
    X = _conditioned(*shape).to(torch.float64 if dtype == torch.float64 else torch.float32)
    ref = _svd_polar(X)
    batched = orthogonalize(X, dtype=dtype)
    loop = orthogonalize(X, dtype=dtype, products="loop")
    assert loop.shape == X.shape and loop.dtype == X.dtype
    assert (loop.double() - batched.double()).abs().max() <= vs_batched
    for O in (loop, batched):
        assert (O.double() - ref).abs().max() <= vs_svd


def test_loop_keeps_zero_and_nonfinite_matrices_apart() -> None:
    X = torch.randn(3, 8, 6)
    X[0] = 0.0
    X[2, 1, 1] = float("nan")
    O = orthogonalize(X, products="loop")
    assert torch.equal(O[0], torch.zeros(8, 6))
    assert torch.allclose(O[1], orthogonalize(X[1:2])[0], atol=1e-6)
    assert not O[2].isfinite().all()


@pytest.mark.parametrize("dtype, big", [(torch.float16, 1e3), (torch.bfloat16, 1e30), (torch.float32, 1e30)])
def test_same_dtype_inputs_with_a_large_norm(dtype: torch.dtype, big: float) -> None:
    """A low-precision input whose Frobenius norm exceeds its dtype's range (or float32's squares) is normalized
    without overflow; float32 inputs cast to bf16 take the unscaled fast path only with a safe norm."""
    X = _conditioned(2, 64, 48)
    ref = _svd_polar(X)
    for scale, source, compute in ((big, dtype, dtype), (1e-30, torch.float32, torch.bfloat16), (1e25, torch.float32, torch.bfloat16)):
        O = orthogonalize((X * scale).to(source), dtype=compute)
        assert O.isfinite().all() and (O.double() - ref).abs().max() < 0.1, (scale, source, compute)


def test_auto_probes_once_per_shape_and_records(loop_fast) -> None:
    calls = loop_fast(2.0)
    table = pp.ProductChoices()
    X = torch.randn(4, 24, 16)
    O = orthogonalize(X, dtype=torch.float32, products=table)
    assert table.choices == {"cpu:float32:4x16x24": "loop"}  # short side first, the compute dtype
    assert torch.allclose(O, orthogonalize(X, products="loop"), atol=1e-6)
    orthogonalize(X, dtype=torch.float32, products=table)
    assert calls == [(torch.float32, 4, 16, 24)]
    loop_fast(1.05)  # faster, but below MIN_SPEEDUP
    assert pp.auto_products("cpu", torch.float32, 4, 16, 24) == "batched"
    assert pp.auto_products("meta", torch.float32, 4, 16, 24) == "batched"  # only CPUs are probed


def test_recorded_choice_is_used_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe(*args: object) -> float:
        raise AssertionError("probed although the choice was recorded")

    monkeypatch.setattr(pp, "_cpu_speedup", no_probe)
    table = pp.ProductChoices({"cpu:float32:2x8x12": "loop"})
    orthogonalize(torch.randn(2, 12, 8), products=table)


def test_no_probe_among_several_processes(loop_fast, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks would time differently, and their LMOs must agree: batched unless a choice was saved."""
    calls = loop_fast(2.0)
    monkeypatch.setattr(pp, "_distributed", lambda: True)
    table = pp.ProductChoices({"cpu:float32:2x8x12": "loop"})
    orthogonalize(torch.randn(3, 12, 8), products=table)
    orthogonalize(torch.randn(2, 12, 8), products=table)
    assert calls == [] and table.choices == {"cpu:float32:2x8x12": "loop", "cpu:float32:3x8x12": "batched"}


def test_real_probe_measures_and_caches() -> None:
    pp._cpu_speedup.cache_clear()
    r = pp.loop_speedup("cpu", torch.float32, 3, 16, 16)
    assert r > 0 and pp.loop_speedup("cpu", torch.float32, 3, 16, 16) == r
    with pytest.raises(ValueError, match="only CPUs"):
        pp.loop_speedup("meta", torch.float32, 3, 16, 16)


@pytest.mark.parametrize("bad", ["fast", 3, {"cpu:float32:1x2x2": "loop"}])
def test_bad_products_option(bad: object) -> None:
    with pytest.raises(ValueError, match="products must be one of"):
        orthogonalize(torch.randn(4, 4), products=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="products must be one of"):
        modnorm.Spectral(products=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ns_products_auto"):
        pp.ProductChoices({"cpu:float32:1x2x2": "fast"})


def _cnn(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                         nn.Linear(8 * 16, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(6, 3, 4, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("preset", ["muon", "muadam", "scion"])
def test_optimizer_records_and_resumes_the_forms(loop_fast, preset: str) -> None:
    loop_fast(2.0)
    model = _cnn()
    opt = modnorm.optimizer(model, preset, lr=1e-2)
    _train(model, opt, 2)
    forms = opt.state_dict()["ns_products_auto"]
    assert forms and set(forms.values()) == {"loop"}
    assert any(k.endswith(":9x8x8") for k in forms)  # the second conv's 9 positions in one call
    assert "Newton–Schulz products" in opt.describe()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 2, seed=2)
    loop_fast(0.5)  # another machine: it would choose batched
    resumed = _cnn()
    resumed.load_state_dict(saved_model)
    opt2 = modnorm.optimizer(resumed, preset, lr=1e-2)
    opt2.load_state_dict(saved_opt)
    assert opt2.ns_products_auto == forms
    _train(resumed, opt2, 2, seed=2)
    assert opt2.ns_products_auto == forms  # nothing re-probed
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for clone in (copy.deepcopy(opt2), pickle.loads(pickle.dumps(opt2))):
        assert clone.state_dict()["ns_products_auto"] == forms


def test_forms_give_the_same_training(loop_fast) -> None:
    """ns_products changes execution only: the trajectories of the two forms agree to float32 rounding."""
    runs = {}
    for form in ("batched", "loop", "auto"):
        loop_fast(2.0)
        model = _cnn()
        _train(model, modnorm.optimizer(model, "muadam", lr=1e-2, ns_dtype="float32"), 3)
        runs[form] = [p.detach().clone() for p in model.parameters()]
    for a, b, c in zip(runs["batched"], runs["loop"], runs["auto"]):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(b, c)


def test_bad_saved_forms_raise_before_loading(loop_fast) -> None:
    loop_fast(2.0)
    model = _cnn()
    opt = modnorm.optimizer(model, "muon", lr=1e-2)
    _train(model, opt, 1)
    params = list(model.parameters())
    snap, forms = snapshot(opt, params), opt.ns_products_auto
    sd = {**opt.state_dict(), "ns_products_auto": {"cpu:float32:9x8x8": "sideways"}}
    with pytest.raises(ValueError, match="ns_products_auto"):
        opt.load_state_dict(sd)
    assert unchanged(opt, params, snap) and opt.ns_products_auto == forms


# ---------------------------------------------------------------- SpectralConv(layout="flatten")


def test_flatten_layout_is_the_spectral_norm_of_the_reshaping() -> None:
    G = torch.randn(2, 6, 4, 3, 3, dtype=torch.float64)
    flat = G.reshape(2, 6, 36)
    s = spectral_scale("rms", 6, 36)
    N = SpectralConv(layout="flatten", method="svd")
    O = N.lmo(G)
    assert torch.allclose(O, s * _svd_polar(flat).reshape(G.shape), atol=1e-12)
    sv = torch.linalg.svdvals(flat)
    assert torch.allclose(N.dual(G), s * sv.sum(-1), atol=1e-12)
    assert torch.allclose(N.value(G), sv.amax(-1) / s, atol=1e-12)
    assert torch.allclose((G * O).sum(dim=(1, 2, 3, 4)), N.dual(G), atol=1e-10)  # ⟨G, lmo G⟩ = dual
    assert torch.allclose(N.value(O), torch.ones(2, dtype=torch.float64), atol=1e-12)
    ns = SpectralConv(layout="flatten", dtype=torch.float64).lmo(G)
    assert (ns - O).abs().max() < 1e-6  # Newton–Schulz ≈ exact on a well-conditioned kernel
    assert not torch.allclose(O, SpectralConv(method="svd").lmo(G), atol=1e-3)  # another norm than per position


def test_flatten_layout_is_declared_and_kept_by_the_presets() -> None:
    with pytest.raises(ValueError, match="layout must be one of"):
        SpectralConv(layout="rows")  # type: ignore[arg-type]
    assert "layout='flatten'" in repr(SpectralConv(layout="flatten")) and "layout" not in repr(SpectralConv())
    model = nn.Sequential(layers.Conv2d(3, 8, 3, norm=SpectralConv(layout="flatten")), layers.Conv2d(8, 8, 3))
    for preset in ("muon", "scion", "muadam"):
        opt = modnorm.optimizer(model, preset, lr=1e-2)
        norms = {r["name"]: r["norm"] for r in opt.describe_rows()}
        assert "layout='flatten'" in norms["0.weight"], (preset, norms)
        assert "layout" not in norms["1.weight"]


def test_normed_init_keeps_the_flatten_layout() -> None:
    torch.manual_seed(0)
    flat = SpectralConv(layout="flatten", method="svd")
    conv = layers.Conv2d(4, 6, 3, norm=SpectralConv(layout="flatten"), init="normed")
    assert abs(float(flat.value(conv.weight.detach().double())) - 1.0) < 1e-5
    per_position = layers.Conv2d(4, 6, 3, init="normed")
    assert abs(float(SpectralConv(method="svd").value(per_position.weight.detach().double())) - 1.0) < 1e-5
