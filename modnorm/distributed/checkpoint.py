"""Model + optimizer checkpoints with torch.distributed.checkpoint (DCP).

``save_checkpoint(path, model, optimizer)`` writes the model's and the optimizer's state
dicts as DCP shards (each rank writes its own shards of DTensor parameters and of the
sharded elementwise optimizer state; replicated tensors such as Shampoo factors are
written once) plus ``modnorm.json``, which records what optimizer produced the state and
what its ``ns_dtype="auto"`` resolved to (restored on load, so the run keeps its dtypes).
``load_checkpoint`` checks that record against the optimizer it is given — a checkpoint
from another preset raises an error naming both — then lets DCP load and, where the
world size or sharding differs from the saved one, reshard.

Works for plain, DDP and FSDP2 (``fully_shard``) models, in a process group or not; the
state dicts use parameter names (``torch.distributed.checkpoint.state_dict``), so a
checkpoint from an FSDP2 run on 2 ranks loads on 1 or 4 ranks, or into an unsharded model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict

from ..optim.state_io import CheckpointMismatchError

__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_identity", "CheckpointMismatchError"]

META = "modnorm.json"


def _rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def optimizer_identity(optimizer: torch.optim.Optimizer, optim_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must match between a checkpoint and the optimizer loading it: the optimizer
    class, its preset (``optimizer.preset`` when it has one) and the set of state keys."""
    preset = getattr(optimizer, "preset", None)
    keys: set[str] = set()
    state = optim_state["state"] if optim_state is not None else optimizer.state_dict()["state"]
    for s in state.values():
        keys.update(k for k in s)
    return {"class": type(optimizer).__name__, "preset": None if preset is None else str(getattr(preset, "name", preset)), "state_keys": sorted(keys)}


def _check(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    for field in ("class", "preset", "state_keys"):
        if saved.get(field) != current.get(field):
            raise CheckpointMismatchError(
                f"checkpoint {path!r} holds optimizer state of {field} {saved.get(field)!r}, but the optimizer being "
                f"loaded has {field} {current.get(field)!r}. Build the optimizer with the checkpoint's configuration "
                f"(saved: {saved}), or load only the model weights (load_checkpoint(..., optimizer=None))"
            )


def _initialize(optimizer: torch.optim.Optimizer | None) -> list[Any]:
    """Give an optimizer without state its initial state without a step (torch's state-dict
    helpers would otherwise run a zero-gradient step, which advances step counters)."""
    init = getattr(optimizer, "initialize_state", None)
    return init() if callable(init) else []


def _check_shapes(path: str, state: dict[str, Any]) -> None:
    """Compare every tensor we are about to load with the checkpoint's metadata (before any read)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    flat, _ = flatten_state_dict(state)
    missing, wrong = [], []
    for key, value in flat.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key not in saved:
            missing.append(key)
        elif hasattr(saved[key], "size") and tuple(saved[key].size) != tuple(value.shape):
            wrong.append(f"{key}: checkpoint {tuple(saved[key].size)}, here {tuple(value.shape)}")
    if missing or wrong:
        raise CheckpointMismatchError(
            f"checkpoint {path!r} does not fit: " + "; ".join(([f"missing {missing[:5]}"] if missing else []) + wrong[:5])
            + ". Build the model (and optimizer) as when it was saved; nothing was loaded")


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Save ``model`` (and ``optimizer``) to the directory ``path`` with DCP; collective."""
    path = os.fspath(path)
    if optimizer is not None:
        _initialize(optimizer)
    msd, osd = (get_model_state_dict(model), None) if optimizer is None else get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": msd}
    if osd is not None:
        state["optim"] = osd
    dcp.save(state, checkpoint_id=path)
    if _rank0():
        meta = {"optimizer": None if optimizer is None else optimizer_identity(optimizer, osd),
                "ns_dtype_auto": getattr(optimizer, "ns_dtype_auto", None),  # DCP's optimizer state drops these three
                "ns_products_auto": getattr(optimizer, "ns_products_auto", None),
                "rounding_seed": getattr(optimizer, "rounding_seed", None)}
        with open(os.path.join(path, META), "w") as f:
            json.dump(meta, f, indent=1)
    _barrier()


def _load(path: str, state: dict[str, Any]) -> None:
    _check_shapes(path, state)
    try:
        dcp.load(state, checkpoint_id=path)
    except dcp.api.CheckpointException as e:  # a BaseException: turn it into an ordinary error
        raise CheckpointMismatchError(f"checkpoint {path!r} could not be loaded: {e}") from None


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a ``save_checkpoint`` directory into ``model`` (and ``optimizer``), resharding
    to the current world size and placements; collective. Raises
    ``CheckpointMismatchError`` when the optimizer or a tensor's shape differs from the saved
    ones, with the model and the optimizer unchanged."""
    path = os.fspath(path)
    meta_path = os.path.join(path, META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"load_checkpoint: {meta_path} not found; expected a directory written by modnorm's save_checkpoint")
    with open(meta_path) as f:
        meta = json.load(f)
    if optimizer is None:
        state: dict[str, Any] = {"model": get_model_state_dict(model)}
        _load(path, state)
        set_model_state_dict(model, state["model"])
        return
    if meta.get("optimizer") is None:
        raise CheckpointMismatchError(f"checkpoint {path!r} holds no optimizer state; pass optimizer=None to load the model only")
    added = _initialize(optimizer)
    try:
        msd, osd = get_state_dict(model, optimizer)
        _check(meta["optimizer"], optimizer_identity(optimizer, osd), path)
        state = {"model": msd, "optim": osd}
        _load(path, state)
    except BaseException:
        for p in added:  # a refused load leaves the optimizer as it was
            optimizer.state.pop(p, None)
        raise
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if meta.get("ns_dtype_auto") and hasattr(optimizer, "set_ns_dtype_auto"):
        optimizer.set_ns_dtype_auto(meta["ns_dtype_auto"])  # the saved Newton–Schulz dtypes, not this machine's
    if meta.get("ns_products_auto") and hasattr(optimizer, "set_ns_products_auto"):
        optimizer.set_ns_products_auto(meta["ns_products_auto"])  # and product forms
    if meta.get("rounding_seed") is not None and getattr(optimizer, "rounding_seed", None) is not None:
        optimizer.rounding_seed = meta["rounding_seed"]  # 16-bit state: the saved stochastic-rounding seed
