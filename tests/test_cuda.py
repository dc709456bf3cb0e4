"""CUDA paths (skipped without a GPU): bf16 Newton–Schulz by default, its accuracy, the recorded choice,
an optimizer step against a CPU float64 reference, and benchmarks/gpu.py end to end."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import modnorm
from modnorm.polar import orthogonalize
from modnorm.polar_dtype import auto_dtype

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gradient_like(m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(3, m, min(m, n), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, n, min(m, n), generator=g, dtype=torch.float64))
    return (U * torch.logspace(0, -2, min(m, n), dtype=torch.float64)) @ V.mT


def test_auto_is_bf16_on_cuda_and_accurate() -> None:
    want = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    assert auto_dtype("cuda", torch.float32, 512) == want and auto_dtype("cuda", torch.float64) == torch.float64
    X = _gradient_like(256, 128)
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    O = orthogonalize(X.float().cuda(), dtype="auto").cpu().double()
    assert O.dtype == torch.float64 and float((torch.linalg.svdvals(O) - 1).abs().max()) < 1e-2
    assert float((O - U @ Vh).abs().max()) < 5e-2
    O64 = orthogonalize(X.cuda(), dtype="auto").cpu()
    assert float((O64 - U @ Vh).abs().max()) < 1e-8  # float64 stays float64, 8 steps


def test_optimizer_on_cuda_records_bf16_and_tracks_the_cpu_float64_run() -> None:
    def run(device: str, dtype: torch.dtype, lr: float = 1e-3, **hp) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8)).to(device, dtype)
        opt = modnorm.optimizer(model, "muadam", lr=lr, **hp)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randn(32, 64, generator=g), torch.randn(32, 8, generator=g)
            opt.zero_grad()
            ((model(x.to(device, dtype)) - y.to(device, dtype)) ** 2).mean().backward()
            opt.step()
        return [p.detach().cpu().double() for p in model.parameters()], opt

    got, opt = run("cuda", torch.float32)
    assert any("dtype=bfloat16" in r["norm"] for r in opt.describe_rows())
    assert set(opt.state_dict()["ns_dtype_auto"].values()) == {"bfloat16"}
    ref, _ = run("cpu", torch.float64, ns_dtype="float64")
    start, _ = run("cpu", torch.float64, ns_dtype="float64", lr=0.0)
    moved = max(float((a - b).abs().max()) for a, b in zip(ref, start))
    err = max(float((a - b).abs().max()) for a, b in zip(got, ref))
    assert moved > 1e-3 and err < 0.05 * moved


def test_gpu_benchmark_quick(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    gpu = importlib.import_module("gpu")
    res = gpu.main(["--quick", "--repeats", "2", "--out", str(tmp_path / "gpu.json")])
    assert res["matmul_bf16_tflops"] > 0 and 0 < res["ns"]["fraction_of_matmul_peak"] < 1.5
    assert res["bf16_polar_express_max_sigma_err"][6] < 1e-2


@pytest.mark.parametrize("preset", ["muon", "muadam", "shampoo", "soap"])
def test_statistics_redone_at_the_commit_on_cuda(preset: str) -> None:
    """On CUDA the deferred statistics (``modnorm.optim.deferred``) and the scratch-buffer dual maps
    (muon's bf16 stack with row-by-row momentum, muadam's update held in parts with its bounded
    check, ``DNorm.lmo_step``, ``LRNorm.sharp_step``) equal
    the step computed aside bit for bit, and a NaN gradient (caught by the probes read with the
    transaction's check) changes nothing."""
    optimizer_module = sys.modules["modnorm.optim.optimizer"]

    def run(defer: bool) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 4)).cuda()
        opt = modnorm.optimizer(net, preset, lr=1e-2)
        original = optimizer_module.Deferred
        if not defer:
            optimizer_module.Deferred = lambda bounds: None
        try:
            g = torch.Generator(device="cuda").manual_seed(1)
            for _ in range(4):
                opt.zero_grad()
                net(torch.randn(8, 16, device="cuda", generator=g)).square().mean().backward()
                opt.step()
        finally:
            optimizer_module.Deferred = original
        return list(net.parameters()), opt

    (pa, oa), (pb, ob) = run(True), run(False)
    assert all(torch.equal(p, q) for p, q in zip(pa, pb))
    assert all(torch.equal(oa.state[p][k], ob.state[q][k]) for p, q in zip(pa, pb) for k in oa.state[p]
               if isinstance(oa.state[p][k], torch.Tensor))
    for p in pa:
        p.grad = torch.randn_like(p)
    pa[2].grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in pa], {k: v.clone() for k, v in oa.state[pa[2]].items() if isinstance(v, torch.Tensor)}
    with pytest.raises(FloatingPointError, match="nothing was updated"):
        oa.step()
    assert all(torch.equal(p, q) for p, q in zip(pa, before[0]))
    assert all(torch.equal(oa.state[pa[2]][k], v) for k, v in before[1].items())


def test_narrowed_batch_gives_the_float32_bits_on_cuda() -> None:
    """``narrow_into`` (2^-k prescale per matrix on CUDA) then Newton–Schulz in bf16: the bits of the float32 batch."""
    from modnorm.polar import narrow_into

    X = torch.randn(3, 64, 48, device="cuda") * torch.tensor([1e-30, 1.0, 1e20], device="cuda").view(-1, 1, 1)
    narrowed = narrow_into(torch.empty(X.shape, dtype=torch.bfloat16, device="cuda"), X)
    want = modnorm.orthogonalize(X, dtype=torch.bfloat16, narrow=True)
    assert torch.equal(modnorm.orthogonalize(narrowed, dtype=torch.bfloat16, narrow=True), want)
