"""distributed_lmo / distributed_sharp on 2 gloo ranks against the single-process norm.

One spawn runs every case (process start-up dominates the cost); each case stacks N
same-shape float64 matrices, shards them with DTensor (uneven shards included), and the
parent compares the gathered result with ``norm.lmo``/``norm.sharp`` of the whole stack.
"""

from __future__ import annotations

import pytest
import torch

from modnorm import RMS, ColNorm, DNorm, Frobenius, LRNorm, RowNorm, Sign, Spectral, SpectralConv
from modnorm.distributed import distributed_lmo, distributed_sharp
from modnorm.distributed.exchange import counting
from modnorm.distributed.launch import launch

WORLD = 2


def cases() -> list[tuple[str, object, tuple[int, ...], int, int]]:
    """(name, norm, parameter shape, shard dim, N)."""
    return [
        ("spectral_svd_rows", Spectral(method="svd"), (5, 3), 0, 3),
        ("spectral_ns_cols", Spectral(), (4, 7), 1, 4),
        ("spectral_one_matrix", Spectral(method="svd"), (6, 6), 0, 1),
        ("colnorm_across", ColNorm(), (5, 4), 0, 3),
        ("colnorm_local", ColNorm(), (5, 4), 1, 3),
        ("rownorm_across", RowNorm(), (4, 5), 1, 2),
        ("rownorm_local", RowNorm(), (5, 4), 0, 2),
        ("colnorm_embedding", ColNorm(layout="embedding"), (7, 4), 0, 2),
        ("sign", Sign(), (5, 3), 0, 2),
        ("frobenius", Frobenius(), (5, 3), 1, 3),
        ("rms_vector", RMS(), (7,), 0, 3),
        ("conv", SpectralConv(kernel_dims=2, method="svd"), (4, 3, 2, 2), 0, 2),
        ("dnorm_spectral", "dnorm", (6, 4), 0, 3),
        ("lrnorm_spectral", "lrnorm", (5, 4), 0, 3),
    ]


def _data(shape: tuple[int, ...], n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    D = torch.rand(n, *shape, generator=g, dtype=torch.float64) + 0.5
    m, k = shape[0], shape[-1]
    A = torch.randn(n, m, m, generator=g, dtype=torch.float64)
    B = torch.randn(n, k, k, generator=g, dtype=torch.float64)
    L = A @ A.mT + m * torch.eye(m, dtype=torch.float64)
    R = B @ B.mT + k * torch.eye(k, dtype=torch.float64)
    return {"G": G, "D": D, "L": L, "R": R}


def _norm(spec: object, data: dict[str, torch.Tensor], D: torch.Tensor | None = None):
    if spec == "dnorm":
        return DNorm(Spectral(method="svd"), data["D"] if D is None else D)
    if spec == "lrnorm":
        return LRNorm(Spectral(method="svd"), data["L"], L_inv=None, R_inv=data["R"])
    return spec


def worker() -> dict[str, dict[str, torch.Tensor]]:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, (name, spec, shape, dim, n) in enumerate(cases()):
        data = _data(shape, n, i)
        Gs = [distribute_tensor(g, mesh, [Shard(dim)]) for g in data["G"]]
        Dd = distribute_tensor(data["D"], mesh, [Shard(dim + 1)])
        norm = _norm(spec, data, Dd)
        with counting() as stats:
            lmo_list = distributed_lmo(norm, Gs)
        bytes_lmo = stats.bytes_sent
        stacked = distributed_sharp(norm, torch.stack(Gs))
        bf16 = distributed_lmo(norm, Gs, comm_dtype=torch.bfloat16)
        out[name] = {
            "lmo_bf16_comm": torch.stack([t.full_tensor() for t in bf16]),
            "lmo": torch.stack([t.full_tensor() for t in lmo_list]),
            "sharp": stacked.full_tensor(),
            "placements_kept": torch.tensor(all(t.placements == g.placements for t, g in zip(lmo_list, Gs))),
            "bytes": torch.tensor(bytes_lmo),
        }
    out["errors"] = bad_input_errors(mesh)
    # HSDP layout (Replicate(), Shard(0)) on a (1, 2) mesh: shards over the last mesh dim
    hsdp_mesh = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("replicate", "shard"))
    G = _data((5, 3), 3, 0)["G"]
    from torch.distributed.tensor import Replicate

    hs = [distribute_tensor(g, hsdp_mesh, [Replicate(), Shard(0)]) for g in G]
    out["hsdp"] = {"lmo": torch.stack([t.full_tensor() for t in distributed_lmo(Spectral(method="svd"), hs)])}
    return out


def bad_input_errors(mesh) -> dict[str, str]:
    """Error messages for placements the optimizer cannot handle ('' if none was raised)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

    from modnorm.distributed import layout_of
    from modnorm.distributed.bucket import shard_bucket

    def message(fn) -> str:
        try:
            fn()
        except ValueError as e:
            return str(e)
        return ""

    x = torch.randn(4, 6, dtype=torch.float64)
    rows, cols = distribute_tensor(x, mesh, [Shard(0)]), distribute_tensor(x, mesh, [Shard(1)])
    partial = DTensor.from_local(x, mesh, [Partial()])
    p = torch.nn.Parameter(distribute_tensor(x, mesh, [Shard(0)]))
    p.grad = distribute_tensor(x, mesh, [Replicate()])
    mesh2 = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("a", "b"))
    two = distribute_tensor(x, mesh2, [Shard(0), Shard(1)])
    return {
        "partial": message(lambda: distributed_lmo(Spectral(), partial)),
        "mixed": message(lambda: distributed_lmo(Spectral(), [rows, cols])),
        "grad_placement": message(lambda: shard_bucket([p], [{}], ["layer.weight"])),
        "two_shards": message(lambda: layout_of(two, name="w")),
    }


@pytest.fixture(scope="module")
def results() -> list[dict[str, dict[str, torch.Tensor]]]:
    return launch(worker, WORLD)


@pytest.mark.parametrize("case", cases(), ids=[c[0] for c in cases()])
def test_matches_single_process(results, case) -> None:
    name, spec, shape, dim, n = case
    i = [c[0] for c in cases()].index(name)
    data = _data(shape, n, i)
    norm = _norm(spec, data)
    want_lmo, want_sharp = norm.lmo(data["G"]), norm.sharp(data["G"])
    for rank, res in enumerate(results):
        r = res[name]
        torch.testing.assert_close(r["lmo"], want_lmo, rtol=1e-10, atol=1e-10, msg=f"lmo rank {rank}")
        torch.testing.assert_close(r["sharp"], want_sharp, rtol=1e-10, atol=1e-10, msg=f"sharp rank {rank}")
        assert bool(r["placements_kept"])


def test_local_cases_do_not_communicate(results) -> None:
    for name in ("colnorm_local", "rownorm_local", "sign"):
        assert int(results[0][name]["bytes"]) == 0, name
    for name in ("spectral_svd_rows", "colnorm_across", "rownorm_across", "dnorm_spectral"):
        assert int(results[0][name]["bytes"]) > 0, name


def test_exchange_volume_matches_formula(results) -> None:
    """Rank 0 owns ⌈N/2⌉ matrices: it sends its shard of rank 1's matrices, then rank 1's
    slices of its own results."""
    name, _, shape, dim, n = cases()[0]  # (5, 3) split 3/2 rows, N = 3: rank 0 owns 2, rank 1 owns 1
    rows = [3, 2]
    per_row = shape[1] * 8
    want = 1 * rows[0] * per_row + 2 * rows[1] * per_row
    assert int(results[0][name]["bytes"]) == want


def test_bf16_communication_rounds_only_in_transit(results) -> None:
    """comm_dtype=bf16: shards travel (both ways) in bf16, the LMO runs in the input dtype
    on the owner: result = bf16(lmo(bf16(G))) where the exchange happened."""
    name, spec, shape, dim, n = cases()[0]
    data = _data(shape, n, 0)
    norm = _norm(spec, data)
    rb = lambda X: X.to(torch.bfloat16).to(torch.float64)  # noqa: E731
    want = rb(norm.lmo(rb(data["G"])))
    torch.testing.assert_close(results[0][name]["lmo_bf16_comm"], want, rtol=0, atol=0)


def nccl_worker() -> dict[str, torch.Tensor]:
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    G = torch.randn(6, 256, 128, generator=torch.Generator().manual_seed(0)).cuda()
    Gs = [distribute_tensor(g, mesh, [Shard(0)]) for g in G]
    out = distributed_lmo(Spectral(), Gs, comm_dtype=torch.bfloat16)  # bf16 Newton–Schulz on CUDA
    return {"G": G.cpu(), "lmo": torch.stack([t.full_tensor() for t in out]).cpu()}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL, bf16 orthogonalization)")
def test_nccl_bf16_matches_single_gpu() -> None:
    res = launch(nccl_worker, 2, backend="nccl")
    want = Spectral().lmo(res[0]["G"].cuda().to(torch.bfloat16).float()).cpu()
    for r in res:
        torch.testing.assert_close(r["lmo"], want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("partial", ["Partial", "expected Shard(d) or Replicate()"]),
        ("mixed", ["G[1]", "Shard(dim=1)", "expected one shape and one placement"]),
        ("grad_placement", ["layer.weight", "Replicate()", "expected a DTensor placed like its parameter"]),
        ("two_shards", ["2 mesh dimensions", "expected one Shard(d)"]),
    ],
)
def test_unsupported_placements_raise_clear_errors(results, case: str, words: list[str]) -> None:
    msg = results[0]["errors"][case]
    assert msg, f"{case}: no error raised"
    for w in words:
        assert w in msg, (w, msg)


def test_hsdp_layout_matches_single_process(results) -> None:
    G = _data((5, 3), 3, 0)["G"]
    for res in results:
        torch.testing.assert_close(res["hsdp"]["lmo"], Spectral(method="svd").lmo(G), rtol=1e-10, atol=1e-10)
