"""modnorm on torch.distributed: DDP, FSDP2 (DTensor) parameters, checkpoints.

- ``distributed_lmo`` / ``distributed_sharp``: a norm's dual map on sharded parameters,
  computed on whole matrices with each rank doing ~1/W of them (all_to_all; see
  ``exchange`` for the communication volume and docs/distributed.md).
- ``sharded(norm, layout)``: the same as a ``Norm`` acting on local shards.
- ``ShardLayout`` / ``layout_of``: how a DTensor is split.
- ``bucket``: the optimizer's hook (its pipeline on local shards); ``checkpoint``: DCP
  save/load with an optimizer-identity check; ``launch``: W local ranks for tests and
  benchmarks.
"""

from .dual_map import distributed_lmo, distributed_sharp
from .exchange import STATS, CommStats, apply_whole, counting, owned_counts
from .layout import ShardLayout, chunk_sizes, is_dtensor, layout_of
from .sharded_norm import ShardedNorm, sharded, to_local

__all__ = [
    "distributed_lmo",
    "distributed_sharp",
    "sharded",
    "ShardedNorm",
    "ShardLayout",
    "layout_of",
    "chunk_sizes",
    "is_dtensor",
    "to_local",
    "apply_whole",
    "owned_counts",
    "STATS",
    "counting",
    "CommStats",
]
