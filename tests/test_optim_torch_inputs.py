"""torch's own optimizer test inputs (``torch.testing._internal.common_optimizers.optim_db``)
run against the modnorm presets that have a torch peer: sgd ↔ SGD, adamw ↔ AdamW,
adagrad ↔ Adagrad, muon ↔ Muon.

- ``optim_inputs_func``: every hyperparameter combination torch tests its optimizer with.
  Each one the preset supports trains the same float64 model 10 steps with both; the
  trajectories agree to 1e-10 (muon: Newton–Schulz in bf16 like torch, to a few bf16 ulps
  of the update per step; see the test).
  Unsupported ones are skipped with the reason (``SKIP_INPUTS``).
- ``optim_error_inputs_func``: every invalid construction torch rejects, the preset
  rejects too (modnorm's ``ConfigError`` is a ValueError), unless ``SKIP_ERRORS`` says
  why the configuration is valid for modnorm.

Implementation selectors (``foreach``, ``fused``, ``differentiable``, ``capturable``) are
not modnorm hyperparameters: modnorm always batches with ``torch._foreach_*`` and rejects
these names as unknown hyperparameters, so inputs that set them are skipped.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import optim_db

import modnorm

PEERS = {"sgd": "SGD", "adamw": "AdamW", "adagrad": "Adagrad", "muon": "Muon"}
STEPS = 10
INFO = {info.optim_cls.__name__: info for info in optim_db}

# (preset, torch kwarg) → why an input with that kwarg is not run against modnorm.
SKIP_INPUTS = {
    ("adamw", "amsgrad"): "amsgrad (max of V over steps) is not part of modnorm's adam preconditioner",
}
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable", "capturable")
# (preset, error description) → why modnorm accepts that configuration.
SKIP_ERRORS = {
    ("adamw", "lr as a Tensor is not supported for capturable=False and foreach=True"): "a torch foreach limitation; modnorm takes a tensor lr",
    ("adamw", "betas\\[0\\] as a Tensor is not supported for capturable=False and foreach=True"): "a torch foreach limitation",
    ("adamw", "betas must be either both floats or both Tensors"): "modnorm reads each beta as a float, tensor or not",
    ("muon", "Muon only supports 2D parameters"): "modnorm's muon routes non-matrix parameters to its AdamW rule",
}


def _inputs(torch_name: str) -> list:
    return INFO[torch_name].optim_inputs_func(device="cpu", dtype=torch.float64)


def _errors(torch_name: str) -> list:
    return INFO[torch_name].optim_error_inputs_func(device="cpu", dtype=torch.float64)


def _skip_reason(preset: str, kwargs: dict) -> str | None:
    for key in kwargs:
        if (preset, key) in SKIP_INPUTS and kwargs[key]:
            return SKIP_INPUTS[(preset, key)]
        if key in IMPLEMENTATION_FLAGS:
            return f"{key!r} selects a torch implementation; not a modnorm hyperparameter"
    return None


def _shapes(preset: str) -> list[tuple[int, ...]]:
    return [(8, 6), (6, 8), (7, 7)] if preset == "muon" else [(6, 4), (4, 6), (5,), ()]


def _train(make, preset: str, kwargs: dict) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = _shapes(preset)
    params = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    targets = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    sign = -1.0 if kwargs.get("maximize") else 1.0
    opt = make(params)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = sum(((p - t) ** 2).sum() + 0.1 * ((p - t) ** 4).sum() + 0.3 * p.sum() for p, t in zip(params, targets))
        (sign * loss).backward()
        opt.step()
    return [p.detach().clone() for p in params]


def _copy(kwargs: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


INPUT_CASES = [
    pytest.param(preset, i, id=f"{preset}-{inp.desc.replace(' ', '_')}")
    for preset, torch_name in PEERS.items()
    for i, inp in enumerate(_inputs(torch_name))
]


@pytest.mark.parametrize(("preset", "index"), INPUT_CASES)
def test_torch_optim_input_trajectory(preset: str, index: int) -> None:
    inp = _inputs(PEERS[preset])[index]
    reason = _skip_reason(preset, inp.kwargs)
    if reason:
        pytest.skip(reason)
    assert inp.params is None  # torch's inputs carry hyperparameters only
    cls = INFO[PEERS[preset]].optim_cls
    ref = _train(lambda ps: cls(ps, **_copy(inp.kwargs)), preset, inp.kwargs)
    like_torch = {"ns_dtype": "bfloat16"} if preset == "muon" else {}  # torch.optim.Muon: bf16 Newton–Schulz, even for float64
    got = _train(lambda ps: modnorm.optimizer(ps, preset, budgets=False, **like_torch, **_copy(inp.kwargs)), preset, inp.kwargs)
    start = _train(lambda ps: cls(ps, lr=0.0), preset, {})
    assert max(float((a - b).abs().max()) for a, b in zip(ref, start)) > 1e-4  # the run moves the weights
    tol = 1e-10
    if preset == "muon":
        # torch orthogonalizes one matrix at a time (addmm), modnorm a bucket at once (baddbmm): in bf16
        # their accumulations round apart in rare entries (6 of 300 random 6×8 matrices differ by one
        # bf16 ulp somewhere). Allow a few ulps of a unit-size update per step; most runs are identical.
        tol = float(inp.kwargs.get("lr", 1e-3)) * 2.0**-6
    for k, (a, b) in enumerate(zip(got, ref)):
        diff = float((a - b).abs().max())
        assert diff <= tol, f"{inp.desc}: parameter {k} differs from torch.optim.{PEERS[preset]} by {diff}"


ERROR_CASES = [
    pytest.param(preset, i, id=f"{preset}-{err.optimizer_error_input.desc.replace(' ', '_')}")
    for preset, torch_name in PEERS.items()
    for i, err in enumerate(_errors(torch_name))
]


@pytest.mark.parametrize(("preset", "index"), ERROR_CASES)
def test_torch_error_input_rejected(preset: str, index: int) -> None:
    err = _errors(PEERS[preset])[index]
    inp = err.optimizer_error_input
    reason = SKIP_ERRORS.get((preset, err.error_regex))
    if reason:
        pytest.skip(reason)
    params = inp.params
    if params is None:
        params = [torch.randn(2, 3, dtype=torch.float64, requires_grad=True)]
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            modnorm.optimizer(params, preset, **_copy(inp.kwargs))
        return
    # torch raises some of these at step time (complex parameters); modnorm refuses them at construction.
    expected = (err.error_type, ValueError) if err.error_type is not TypeError else TypeError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(expected) as info:
            opt = modnorm.optimizer(params, preset, **_copy(inp.kwargs))
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = torch.ones_like(p)
            opt.step()
    words = [w for w in re.findall(r"[a-z_]{4,}", err.error_regex.lower()) if w not in ("should", "with", "without", "more", "than", "optimizer")]
    assert words, err.error_regex
    # modnorm's message names what is wrong; torch's key words (a field name, "complex", "names") appear in it
    message = str(info.value).lower()
    assert any(w in message for w in words), f"{message!r} does not mention any of {words}"


def test_coverage_counts() -> None:
    """The number of torch inputs run vs skipped per preset (documented in docs/optimizer.md)."""
    counts = {}
    for preset, torch_name in PEERS.items():
        inputs = _inputs(torch_name)
        skipped = sum(_skip_reason(preset, i.kwargs) is not None for i in inputs)
        errors = _errors(torch_name)
        err_skipped = sum((preset, e.error_regex) in SKIP_ERRORS for e in errors)
        counts[preset] = (len(inputs) - skipped, skipped, len(errors) - err_skipped, err_skipped)
    assert counts == {"sgd": (9, 0, 7, 0), "adamw": (4, 1, 8, 4), "adagrad": (7, 0, 7, 0), "muon": (7, 0, 8, 1)}, counts
