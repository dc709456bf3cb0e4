"""Training under DDP and FSDP2 (2 gloo ranks) against a single-process run.

The same float64 model (uneven shard sizes: 5 and 3 rows over 2 ranks) and the same data
are trained for a few steps three ways: in one process on the full batch (the
reference), with DistributedDataParallel, and with FSDP2 ``fully_shard`` — each rank
seeing half of every batch. After the steps, every rank's parameters must match the
reference. One spawn runs every preset (process start-up dominates the cost).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import modnorm
from modnorm.distributed import counting
from modnorm import CheckpointMismatchError, load_checkpoint, save_checkpoint
from modnorm.distributed.launch import launch

WORLD = 2
STEPS = 4
SAVE_AT = 2
PRESETS: dict[str, dict] = {
    "muon": {"lr": 0.02, "ns_dtype": "float64"},
    "muadam": {"lr": 0.01, "ns_dtype": "float64"},
    "muadam_sania": {"lr": 0.01, "ns_dtype": "float64"},
    "shampoo": {"lr": 0.01, "eps": 1e-6, "root_dtype": "float64"},
    "soap": {"lr": 0.01, "precondition_frequency": 2, "root_dtype": "float64"},
}


def make_optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    return modnorm.optimizer(model, name, **PRESETS[name])


def make_model() -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*blocks).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, rank: int, world: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        x, y = batch(t)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name.removeprefix("module.")] = p.detach().clone()
    return out


def fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m)
    return fully_shard(model)


def reference_step(model: nn.Module, opt: torch.optim.Optimizer, t: int) -> None:
    """One single-process step; the gradient is the mean of the WORLD half-batch gradients,
    added in rank order as the all-reduce does (SANIA divides by V, which magnifies the
    last bit of a tiny gradient entry, so the reference adds in the same order)."""
    x, y = batch(t)
    grads = []
    for xs, ys in zip(x.chunk(WORLD), y.chunk(WORLD)):
        model.zero_grad()
        nn.functional.mse_loss(model(xs), ys).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for p, *gs in zip(model.parameters(), *grads):
        total = gs[0]
        for g in gs[1:]:
            total = total + g
        p.grad = total / WORLD
    opt.step()


def reference(preset: str, steps: int = STEPS) -> dict[str, torch.Tensor]:
    model = make_model()
    opt = make_optimizer(model, preset)
    for t in range(steps):
        reference_step(model, opt, t)
    return full_params(model)


def worker(presets: list[str], ckpt_root: str) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for preset in presets:
        res = {}
        ddp = DDP(make_model())
        opt = make_optimizer(ddp, preset)
        with counting() as stats:
            train(ddp, opt, STEPS, rank, world)
        res["ddp"] = full_params(ddp)
        res["ddp_bytes"] = stats.bytes_sent
        # FSDP2, with a checkpoint after SAVE_AT steps (saving must not perturb the run)
        path = f"{ckpt_root}/{preset}"
        model = fsdp(make_model())
        opt = make_optimizer(model, preset)
        with counting() as stats:
            train(model, opt, SAVE_AT, rank, world)
            save_checkpoint(path, model, opt)
            train(model, opt, STEPS - SAVE_AT, rank, world, start=SAVE_AT)
        res["fsdp"] = full_params(model)
        res["fsdp_bytes"] = stats.bytes_sent
        # resume from the checkpoint in fresh objects
        model = fsdp(make_model())
        opt = make_optimizer(model, preset)
        load_checkpoint(path, model, opt)
        train(model, opt, STEPS - SAVE_AT, rank, world, start=SAVE_AT)
        res["fsdp_resumed"] = full_params(model)
        # world size 1 → 2: a single-process checkpoint (written by the parent) into FSDP2
        model = fsdp(make_model())
        opt = make_optimizer(model, preset)
        load_checkpoint(f"{ckpt_root}/{preset}_single", model, opt)
        train(model, opt, STEPS - SAVE_AT, rank, world, start=SAVE_AT)
        res["fsdp_from_single"] = full_params(model)
        # a different preset must be refused
        other = fsdp(make_model())
        try:
            load_checkpoint(path, other, make_optimizer(other, "muon" if preset != "muon" else "muadam"))
            res["mismatch_error"] = ""
        except CheckpointMismatchError as e:
            res["mismatch_error"] = str(e)
        out[preset] = res
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("ckpt")
    for preset in PRESETS:  # single-process checkpoints after SAVE_AT steps, for the 1 → 2 test
        model = make_model()
        opt = make_optimizer(model, preset)
        for t in range(SAVE_AT):
            reference_step(model, opt, t)
        with warnings.catch_warnings():  # DCP without a process group says it assumes one process
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            save_checkpoint(root / f"{preset}_single", model, opt)
    return [*launch(worker, WORLD, list(PRESETS), str(root)), root]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_matches_single_process(results, preset: str, mode: str) -> None:
    want = reference(preset)
    start = full_params(make_model())
    assert any(not torch.equal(want[k], start[k]) for k in want), "the reference did not move"
    for rank, res in enumerate(results[:WORLD]):
        got = res[preset][mode]
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-11, msg=lambda m: f"{preset} {mode} rank {rank} {k}: {m}")
        # FSDP2 must have sent the spectral LMOs' matrices through the all_to_all; DDP nothing.
        assert (res[preset][f"{mode}_bytes"] > 0) == (mode == "fsdp")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_fsdp_checkpoint_resumes_exactly(results, preset: str) -> None:
    """Saved after SAVE_AT steps on 2 ranks, loaded into fresh FSDP2 objects: the resumed
    run equals the uninterrupted one bit for bit."""
    for res in results[:WORLD]:
        for k, v in res[preset]["fsdp"].items():
            assert torch.equal(res[preset]["fsdp_resumed"][k], v), (preset, k)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("preset", list(PRESETS))
def test_checkpoint_loads_on_one_process(results, preset: str) -> None:
    """World size 2 → 1: the FSDP2 checkpoint loads into a plain model and optimizer in this
    process (DCP reshards) and the continued run matches the single-process reference."""
    model = make_model()
    opt = make_optimizer(model, preset)
    load_checkpoint(results[WORLD] / preset, model, opt)
    for t in range(SAVE_AT, STEPS):
        reference_step(model, opt, t)
    want = reference(preset)
    for k, v in full_params(model).items():
        torch.testing.assert_close(v, want[k], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_checkpoint_of_another_preset_is_refused(results, preset: str) -> None:
    msg = results[0][preset]["mismatch_error"]
    assert msg, "loading into another preset's optimizer did not raise"
    assert "preset" in msg or "state_keys" in msg
    assert "Build the optimizer with the checkpoint's configuration" in msg


@pytest.mark.parametrize("preset", list(PRESETS))
def test_single_process_checkpoint_loads_on_two_ranks(results, preset: str) -> None:
    """World size 1 → 2: a checkpoint of a plain model loads into FSDP2 (DCP shards it) and
    the continued run matches the single-process reference."""
    want = reference(preset)
    for res in results[:WORLD]:
        for k, v in res[preset]["fsdp_from_single"].items():
            torch.testing.assert_close(v, want[k], rtol=1e-9, atol=1e-11)
