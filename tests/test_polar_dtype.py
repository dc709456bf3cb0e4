"""ns_dtype="auto": the compute dtype follows the hardware, the choice is recorded and survives a resume."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import modnorm
import modnorm.polar_dtype as pd
from modnorm.polar import DEFAULT_STEPS, default_steps, orthogonalize


@pytest.fixture
def bf16_fast(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU probe measured bf16 products `speedup` times faster than float32."""

    def set_speedup(speedup: float | dict[int, float]) -> None:
        monkeypatch.setattr(pd, "_cpu_speedup", lambda threads, size: speedup[size] if isinstance(speedup, dict) else speedup)

    return set_speedup


def test_auto_dtype_rules(bf16_fast) -> None:
    bf16_fast(4.0)
    assert pd.auto_dtype("cpu", torch.float32) == torch.bfloat16
    assert pd.auto_dtype("cpu", torch.float16) == torch.bfloat16
    assert pd.auto_dtype("cpu", torch.float64) == torch.float64  # exact paths stay exact
    assert pd.auto_dtype("meta", torch.float32) == torch.float32
    bf16_fast(1.1)  # faster, but below MIN_SPEEDUP: not worth bf16's rounding
    assert pd.auto_dtype("cpu", torch.float32) == torch.float32
    assert pd.auto_dtype("cpu", torch.bfloat16) == torch.float32
    assert set(pd.cpu_report()["choice"].values()) == {"float32"}


def test_choice_per_size_class(bf16_fast) -> None:
    assert [pd.size_class(n) for n in (1, 32, 33, 64, 100, 128, 129, 4096, None)] == [32, 32, 64, 64, 128, 128, 256, 256, 256]
    bf16_fast({32: 0.2, 64: 0.5, 128: 1.3, 256: 4.0})  # bf16 slower on small matrices, faster on large
    assert [pd.auto_dtype("cpu", torch.float32, n) for n in (16, 64, 128, 512)] == [torch.float32] * 2 + [torch.bfloat16] * 2
    assert pd.cpu_report()["choice"] == {32: "float32", 64: "float32", 128: "bfloat16", 256: "bfloat16"}
    model = torch.nn.Sequential(torch.nn.Linear(300, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = modnorm.optimizer(model, "muadam")
    norms = {r["name"]: r["norm"] for r in opt.describe_rows()}
    assert "dtype=bfloat16" in norms["0.weight"] and "dtype=float32" in norms["2.weight"], norms
    assert opt.state_dict()["ns_dtype_auto"] == {"cpu:float32:256": "bfloat16", "cpu:float32:32": "float32"}
    X = torch.randn(2, 300, 256)
    assert torch.equal(orthogonalize(X, dtype="auto"), orthogonalize(X, dtype=torch.bfloat16, steps=6))
    assert torch.equal(orthogonalize(X[:, :40, :16], dtype="auto"), orthogonalize(X[:, :40, :16], dtype=torch.float32))


def test_probe_measures_and_caches() -> None:
    s = pd.bf16_speedup("cpu", size=64)
    assert math.isfinite(s) and s > 0 and pd.bf16_speedup("cpu", size=64) == s
    with pytest.raises(ValueError, match="device"):
        pd.bf16_speedup("meta")


def test_default_steps_follow_the_compute_dtype() -> None:
    assert default_steps("polar_express", torch.bfloat16) == 6 and default_steps("polar_express", torch.float16) == 7
    assert default_steps("polar_express", torch.float32) == DEFAULT_STEPS["polar_express"] == 8
    assert default_steps("jordan", torch.bfloat16) == 5
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 64, 32, generator=g)
    O = orthogonalize(X, dtype=torch.bfloat16)
    assert torch.equal(O, orthogonalize(X, dtype=torch.bfloat16, steps=6))
    U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)  # independent reference
    sig = torch.linalg.svdvals(O.double())
    assert float((sig - 1).abs().max()) < 2e-2 and float((O.double() - U @ Vh).abs().max()) < 5e-2


def test_orthogonalize_auto(bf16_fast) -> None:
    X = torch.randn(2, 16, 8, dtype=torch.float64)
    bf16_fast(4.0)
    assert torch.equal(orthogonalize(X, dtype="auto"), orthogonalize(X))  # float64 untouched
    Xf = X.float()
    assert torch.equal(orthogonalize(Xf, dtype="auto"), orthogonalize(Xf, dtype=torch.bfloat16, steps=6))
    bf16_fast(0.1)
    assert torch.equal(orthogonalize(Xf, dtype="auto"), orthogonalize(Xf, dtype=torch.float32, steps=8))


def _model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 12, generator=g, dtype=next(model.parameters()).dtype), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        ((model(x) - y.to(x.dtype)) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("preset", ["muadam", "muon", "polargrad", "scion"])
def test_optimizer_records_the_choice(bf16_fast, preset: str) -> None:
    bf16_fast(4.0)
    opt = modnorm.optimizer(_model(), preset, lr=1e-3)
    hidden = [r for r in opt.describe_rows() if r["norm"].startswith("Spectral(")]
    assert hidden and all("dtype=bfloat16" in r["norm"] for r in hidden), hidden
    if preset != "muon":  # muon keeps torch's 5 Jordan steps
        assert all("steps=6" in r["norm"] for r in hidden)
    assert opt.state_dict()["ns_dtype_auto"] == {"cpu:float32:32": "bfloat16"}
    assert "dtype=bfloat16" in opt.describe()
    bf16_fast(0.1)
    slow = modnorm.optimizer(_model(), preset, lr=1e-3)
    assert all("dtype=float32" in r["norm"] for r in slow.describe_rows() if r["norm"].startswith("Spectral("))
    f64 = modnorm.optimizer(_model(torch.float64), preset, lr=1e-3)
    rows = [r["norm"] for r in f64.describe_rows() if r["norm"].startswith("Spectral(")]
    assert all("dtype=float64" in n for n in rows) and (preset == "muon" or all("steps=8" in n for n in rows))


def test_auto_equals_the_explicit_choice(bf16_fast) -> None:
    bf16_fast(4.0)
    runs = {}
    for dtype in ("auto", "bfloat16", "float32"):
        model = _model()
        _train(model, modnorm.optimizer(model, "muadam", lr=1e-2, ns_dtype=dtype), 3)
        runs[dtype] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["bfloat16"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["auto"], runs["float32"]))


def test_resume_keeps_the_saved_choice(bf16_fast) -> None:
    """A run saved where bf16 was fast and resumed where it is slow continues in bf16, bit for bit."""
    bf16_fast(4.0)
    model = _model()
    opt = modnorm.optimizer(model, "muadam", lr=1e-2)
    _train(model, opt, 2)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 3, seed=2)
    bf16_fast(0.1)  # another machine
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = modnorm.optimizer(resumed, "muadam", lr=1e-2)
    assert "dtype=float32" in opt2.describe()
    opt2.load_state_dict(saved_opt)
    assert "dtype=bfloat16" in opt2.describe() and "dtype=float32" not in opt2.describe()
    _train(resumed, opt2, 3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    for clone in (copy.deepcopy(opt2), pickle.loads(pickle.dumps(opt2))):
        assert clone.state_dict()["ns_dtype_auto"] == {"cpu:float32:32": "bfloat16"}


def _one_muadam_step() -> torch.optim.Optimizer:
    model = _model()
    opt = modnorm.optimizer(model, "muadam", lr=1e-2)
    _train(model, opt, 1)
    return opt


def test_bad_saved_choice_raises_before_loading(bf16_fast) -> None:
    bf16_fast(4.0)
    opt = _one_muadam_step()
    sd = opt.state_dict()
    sd["ns_dtype_auto"] = {"cpu:float32:32": "int8"}
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="ns_dtype_auto"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["ns_dtype_auto"] == before["ns_dtype_auto"]
    assert all(torch.equal(after["state"][k]["exp_avg"], before["state"][k]["exp_avg"]) for k in before["state"])


def test_old_checkpoints_without_the_record_still_load(bf16_fast) -> None:
    bf16_fast(4.0)
    sd = _one_muadam_step().state_dict()
    del sd["ns_dtype_auto"]
    opt2 = modnorm.optimizer(_model(), "muadam", lr=1e-2)
    opt2.load_state_dict(sd)
    assert opt2.state_dict()["ns_dtype_auto"] == {"cpu:float32:32": "bfloat16"}


def test_dcp_checkpoint_keeps_the_saved_choice(bf16_fast, tmp_path) -> None:
    import warnings

    bf16_fast(4.0)
    model = _model()
    opt = modnorm.optimizer(model, "muadam", lr=1e-2)
    _train(model, opt, 2)
    with warnings.catch_warnings():  # DCP without a process group says it assumes one process
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        modnorm.save_checkpoint(tmp_path / "ckpt", model, opt)
        bf16_fast(0.1)  # another machine
        resumed = _model()
        opt2 = modnorm.optimizer(resumed, "muadam", lr=1e-2)
        modnorm.load_checkpoint(tmp_path / "ckpt", resumed, opt2)
    assert opt2.state_dict()["ns_dtype_auto"] == {"cpu:float32:32": "bfloat16"}
    _train(model, opt, 2, seed=2)
    _train(resumed, opt2, 2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
