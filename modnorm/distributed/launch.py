"""Run a function on W local ranks (``torch.multiprocessing``), for tests and benchmarks.

``launch(fn, world_size, *args)`` spawns W processes, joins them into a process group on
127.0.0.1 with a free port (gloo on CPU; nccl with one GPU per rank when asked),
calls ``fn(*args)`` on each and returns the W return values (each saved with
``torch.save`` in a temporary directory, so they may hold tensors). ``fn`` must be
importable by name (a module-level function). Child processes use one intra-op thread
each and import the same ``modnorm`` as the parent (its directory is put on PYTHONPATH).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "free_port"]

_ROOT = str(Path(__file__).resolve().parents[2])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, backend: str, fn: Callable[..., Any], args: tuple, out_dir: str, threads: int) -> None:
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo", threads: int = 1) -> list[Any]:
    """``[fn(*args) on rank r for r in range(world_size)]``, each rank in its own process."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"launch: world_size must be a positive int, got {world_size!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"launch: backend must be 'gloo' (CPU) or 'nccl' (one GPU per rank), got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"launch: nccl with {world_size} ranks needs {world_size} GPUs, found {torch.cuda.device_count()}")
    paths = os.environ.get("PYTHONPATH", "")
    if _ROOT not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = _ROOT + (os.pathsep + paths if paths else "")
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world_size, free_port(), backend, fn, args, out_dir, threads), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(world_size)]
