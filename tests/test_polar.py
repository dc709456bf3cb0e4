"""modnorm.orthogonalize against an SVD reference and a plain numpy iteration written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from modnorm import orthogonalize
from modnorm.polar import DEFAULT_STEPS, POLAR_EXPRESS, ns_coefficients, singular_values

METHODS = ("jordan", "polar_express", "cubic", "svd")
SHAPES = [(24, 24), (40, 12), (12, 40)]


def gradient_like(m: int, n: int, kappa: float, seed: int, batch: int = 3) -> torch.Tensor:
    """float64 (batch, m, n) with singular values log-uniform in [1/κ, 1]."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(batch, m, r, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(batch, n, r, generator=g, dtype=torch.float64))
    return (U * torch.logspace(0, -math.log10(kappa), r, dtype=torch.float64)) @ V.mT


def svd_polar(X: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(X, full_matrices=False)
    return U @ Vt


def sigma_error(O: torch.Tensor) -> float:
    return float((np.linalg.svd(O.double().numpy(), compute_uv=False) - 1).__abs__().max())


# Documented accuracy (module docstring of modnorm.polar, from benchmarks/polar_accuracy.py):
# worst max|σ−1| at the default steps, float64 compute, for κ = 1e2 and κ = 1e4.
ACCURACY = {
    ("jordan", 1e2): 0.32,
    ("jordan", 1e4): 1.0,
    ("polar_express", 1e2): 1e-6,
    ("polar_express", 1e4): 0.8,
    ("cubic", 1e2): 1e-10,
    ("cubic", 1e4): 1e-6,
    ("svd", 1e2): 1e-12,
    ("svd", 1e4): 1e-12,
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kappa", [1e2, 1e4])
def test_documented_accuracy(method: str, shape: tuple[int, int], kappa: float) -> None:
    X = gradient_like(*shape, kappa=kappa, seed=shape[0] + shape[1])
    O = orthogonalize(X, method=method)
    assert O.shape == X.shape and O.dtype == X.dtype
    assert sigma_error(O) <= ACCURACY[method, kappa]
    if method in ("cubic", "svd"):  # converged: equals the SVD factor written here
        np.testing.assert_allclose(O.numpy(), np.stack([svd_polar(x) for x in X.numpy()]), atol=1e-7 if kappa > 1e3 else 1e-10)


@pytest.mark.parametrize("method", ["jordan", "polar_express", "cubic"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_output_singular_values_follow_the_scalar_polynomials(method: str, steps: int) -> None:
    """σ(output) = p_k ∘ … ∘ p_1(σ / (‖X‖_F·safety)), evaluated here on scalars in numpy."""
    X = gradient_like(20, 12, kappa=1e3, seed=steps, batch=1)[0]
    sigma = np.linalg.svd(X.numpy(), compute_uv=False)
    y = sigma / (np.linalg.norm(sigma) * (1.01 if method == "polar_express" else 1.0))
    for a, b, c in ns_coefficients(method, steps):
        y = a * y + b * y**3 + c * y**5
    got = np.linalg.svd(orthogonalize(X, method=method, steps=steps).numpy(), compute_uv=False)
    np.testing.assert_allclose(np.sort(got), np.sort(np.abs(y)), rtol=1e-9, atol=1e-12)


def test_jordan_singular_values_stay_in_band() -> None:
    """Jordan's quintic does not converge: converged singular values oscillate in
    [0.6818, 1.1344] (the scalar map's invariant band); at 5 steps values still climbing
    from small σ can overshoot to 1.2024."""
    X = gradient_like(64, 64, kappa=1e2, seed=1)
    for steps, hi in ((5, 1.2024), (10, 1.1344)):
        s = singular_values(orthogonalize(X, method="jordan", steps=steps))
        assert 0.6818 < float(s.min()) and float(s.max()) < hi


def numpy_polar_express(X: np.ndarray, steps: int) -> np.ndarray:
    """The paper's Algorithm 1 in numpy float64 (short side, 1.01 safety in both places), with
    torch.optim.Muon's eps floor max(·, 1e-7) in place of the paper's ``+ 1e-7``."""
    coeffs = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in POLAR_EXPRESS[:-1]] + [POLAR_EXPRESS[-1]]
    tall = X.shape[0] > X.shape[1]
    Y = X.T if tall else X
    Y = Y / max(np.linalg.norm(Y) * 1.01, 1e-7)
    for a, b, c in coeffs[:steps] + [coeffs[-1]] * max(0, steps - len(coeffs)):
        A = Y @ Y.T
        Y = a * Y + (b * A + c * A @ A) @ Y
    return Y.T if tall else Y


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [1, 5, 10])
def test_polar_express_matches_numpy_transcription(shape: tuple[int, int], steps: int) -> None:
    X = gradient_like(*shape, kappa=1e3, seed=7, batch=1)[0] * 3.0
    np.testing.assert_allclose(orthogonalize(X, steps=steps).numpy(), numpy_polar_express(X.numpy(), steps), atol=1e-10)


def test_coefficient_schedules() -> None:
    assert POLAR_EXPRESS[0] == (8.28721201814563, -23.595886519098837, 17.300387312530933)
    assert POLAR_EXPRESS[4] == (2.300652019954817, -1.6689039845747493, 0.4188073119525673)
    sched = ns_coefficients("polar_express", 10)
    x = np.linspace(0.0, 1.0, 11)
    for (a, b, c), (a0, b0, c0) in zip(sched[:7], POLAR_EXPRESS[:7]):  # p(x/1.01)
        np.testing.assert_allclose(a * x + b * x**3 + c * x**5, a0 * (x / 1.01) + b0 * (x / 1.01) ** 3 + c0 * (x / 1.01) ** 5, rtol=1e-13, atol=1e-15)
    assert sched[7:] == [(1.875, -1.25, 0.375)] * 3
    assert ns_coefficients("jordan", 2) == [(3.4445, -4.7750, 2.0315)] * 2
    assert ns_coefficients("cubic", 1) == [(1.5, -0.5, 0.0)]


def test_explicit_coefficients_match_torch_muon_iteration() -> None:
    """Plain Newton–Schulz with given coefficients (torch.optim.Muon's form, float64)."""
    X = gradient_like(20, 30, kappa=10, seed=3, batch=1)[0]
    Y = X.numpy() / max(np.linalg.norm(X.numpy()), 1e-7)
    for _ in range(5):
        A = Y @ Y.T
        Y = 3.4445 * Y + (-4.7750 * A + 2.0315 * A @ A) @ Y
    np.testing.assert_allclose(orthogonalize(X, coefficients=[(3.4445, -4.7750, 2.0315)], steps=5).numpy(), Y, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_one_at_a_time(method: str) -> None:
    X = gradient_like(16, 10, kappa=1e2, seed=4, batch=6).reshape(2, 3, 16, 10)
    batched = orthogonalize(X, method=method)
    single = torch.stack([orthogonalize(x, method=method) for x in X.reshape(6, 16, 10)]).reshape(X.shape)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_scale_invariance_and_noncontiguous_input(method: str) -> None:
    X = gradient_like(12, 18, kappa=1e2, seed=5)
    O = orthogonalize(X, method=method)
    torch.testing.assert_close(orthogonalize(1e4 * X, method=method), O, rtol=0, atol=1e-9)
    torch.testing.assert_close(orthogonalize(X.mT, method=method), O.mT, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_compute_returns_input_dtype(method: str, dtype: torch.dtype) -> None:
    X = gradient_like(32, 16, kappa=10, seed=6).float()
    ref = orthogonalize(X.double(), method="svd")
    O = orthogonalize(X, method=method, dtype=dtype)
    assert O.dtype == torch.float32
    rel = torch.linalg.matrix_norm(O.double() - ref) / torch.linalg.matrix_norm(ref)
    tol = {"jordan": 0.35, "svd": 1e-5}.get(method, 5e-2 if dtype == torch.bfloat16 else 1e-5)
    assert float(rel.max()) < tol
    Ob = orthogonalize(X.bfloat16(), method=method)
    assert Ob.dtype == torch.bfloat16 and bool(torch.isfinite(Ob).all())


@pytest.mark.parametrize("method", METHODS)
def test_zero_gives_zero_and_tiny_or_huge_inputs_stay_finite(method: str) -> None:
    X = gradient_like(8, 5, kappa=10, seed=8)
    X[1] = 0.0
    O = orthogonalize(X, method=method)
    assert bool((O[1] == 0).all()) and bool(torch.isfinite(O).all())
    torch.testing.assert_close(O[0], orthogonalize(X[0], method=method), rtol=0, atol=1e-12)
    for c in (1e-150, 1e150):
        assert bool(torch.isfinite(orthogonalize(c * X, method=method)).all())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_stays_nonfinite(method: str, bad: float) -> None:
    X = gradient_like(6, 4, kappa=10, seed=9)
    X[0, 2, 1] = bad
    O = orthogonalize(X, method=method)
    assert not bool(torch.isfinite(O[0]).any())
    assert bool(torch.isfinite(O[1:]).all())


def test_empty_and_singular_value_helper() -> None:
    assert orthogonalize(torch.zeros(0, 3, 4)).shape == (0, 3, 4)
    X = gradient_like(5, 3, kappa=10, seed=10)
    np.testing.assert_allclose(singular_values(X).numpy(), np.linalg.svd(X.numpy(), compute_uv=False), rtol=1e-12)
    X[0, 0, 0] = float("nan")
    assert bool(singular_values(X)[0].isnan().all()) and bool(singular_values(X)[1:].isfinite().all())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "newton"}, ValueError, "method"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 2.5}, ValueError, "steps"),
        ({"steps": True}, ValueError, "steps"),
        ({"dtype": torch.int32}, ValueError, "dtype"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"coefficients": [(1.0, 2.0)]}, ValueError, "coefficients"),
        ({"coefficients": []}, ValueError, "coefficients"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        orthogonalize(torch.ones(3, 3), **kwargs)


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        orthogonalize(torch.ones(3))
    with pytest.raises(TypeError, match="floating"):
        orthogonalize(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        orthogonalize(np.ones((3, 3)))  # type: ignore[arg-type]


def test_default_steps_are_documented() -> None:
    import modnorm.polar as polar

    for method, steps in DEFAULT_STEPS.items():
        if method != "svd":
            assert f'"{method}"`` (default {steps} steps)' in polar.__doc__


def test_benchmark_quick_writes_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "polar_accuracy.py"
    spec = importlib.util.spec_from_file_location("polar_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    out = tmp_path / "polar.json"
    result = module.main(["--quick", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["accuracy"] == json.loads(json.dumps(result["accuracy"]))
    svd_rows = [r for r in saved["accuracy"] if r["method"] == "svd"]
    assert svd_rows and all(v < 1e-12 for r in svd_rows for k, v in r.items() if k.startswith("fro_"))
    assert {t["method"] for t in saved["timing"]} == set(METHODS)


@pytest.mark.parametrize("shape", [(3, 8, 5), (3, 5, 8), (4, 6)])
def test_narrow_output_is_the_cast_result_before_its_cast(shape):
    """``narrow=True`` returns the bf16 iterate the float32 result is an exact upcast of (tall matrices
    are iterated transposed: the view is returned, not copied)."""
    X = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    wide = orthogonalize(X, dtype=torch.bfloat16)
    narrow = orthogonalize(X, dtype=torch.bfloat16, narrow=True)
    assert narrow.dtype == torch.bfloat16 and narrow.shape == X.shape and torch.equal(narrow.float(), wide)
    assert orthogonalize(X, dtype=torch.float32, narrow=True).dtype == torch.float32  # nothing narrower to keep


def test_spectral_lmo_step_keeps_bf16_only_at_scale_one():
    from modnorm.norms import Spectral
    from modnorm.optim.recipe import _CoefficientSpectral

    X = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(4))
    for norm in (Spectral(scale="none", dtype=torch.bfloat16),
                 _CoefficientSpectral(((3.4445, -4.775, 2.0315),), scale="none", steps=5, dtype=torch.bfloat16)):
        step = norm.lmo_step(X)
        assert step.dtype == torch.bfloat16 and torch.equal(step.float(), norm.lmo(X))
    scaled = Spectral(scale="rms", dtype=torch.bfloat16)
    scratch = X.clone()
    step = scaled.lmo_step(scratch)  # X is the caller's scratch: upcast and scaled in its storage
    assert step.dtype == torch.float32 and torch.equal(step, scaled.lmo(X)) and step.data_ptr() == scratch.data_ptr()
