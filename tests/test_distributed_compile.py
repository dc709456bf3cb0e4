"""torch.compile of the optimizer step's elementwise parts (momentum, second-moment statistics,
the D of the D-norm), as FSDP2 runs them on local shards.

They must compile into one graph (``fullgraph=True``: no graph break), agree bit for bit
with eager execution over several steps, and not recompile every step as the step count
(bias corrections) changes. ``aot_eager`` traces exactly what inductor would receive
(functionalized ATen graph) without spending the C++ compile time in the unit tests.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from modnorm.optim.diagonal import SecondMoment, adam, sania
from modnorm.optim.momentum import apply_momentum, init_momentum, momentum_scale

STEPS = 5


def elementwise(kind: str, precond: SecondMoment, states: list[dict], grads: list[torch.Tensor], step: int) -> torch.Tensor:
    """Momentum d (with its bias-correction scale), statistics update, then D⁻¹ ⊙ d — the
    elementwise work of one bucket, as the optimizer composes it."""
    d = apply_momentum(kind, 0.9, 0.0, states, grads, step)
    precond.update_many(states, grads, step, None)  # type: ignore[arg-type]
    return torch.stack(d) * momentum_scale(kind, 0.9, step) / precond.diagonal(states, step)


def _states(precond: SecondMoment, kind: str, n: int) -> list[dict]:
    shard = torch.zeros(3, 4, dtype=torch.float64)  # a local shard of a (5, 4) matrix on rank 0
    return [{**init_momentum(kind, shard, torch.float64), **precond.init_state(shard, torch.float64)} for _ in range(n)]


CASES = [("ema_nesterov", "muadam"), ("nesterov", "sania"), ("adam_ema", "adam")]
PRECONDS = {"adam": adam, "sania": sania, "muadam": lambda: adam(inner=1.0, outer=0.25)}


@pytest.mark.parametrize(("kind", "precond_name"), CASES)
def test_elementwise_step_compiles_and_matches_eager(kind: str, precond_name: str) -> None:
    make = PRECONDS[precond_name]
    torch._dynamo.reset()
    counters.clear()
    precond = make()
    eager_states, compiled_states = _states(precond, kind, 2), _states(precond, kind, 2)
    compiled = torch.compile(elementwise, backend="aot_eager", fullgraph=True)
    for step in range(1, STEPS + 1):
        g = torch.Generator().manual_seed(step)
        grads = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
        want = elementwise(kind, precond, eager_states, grads, step)
        got = compiled(kind, precond, compiled_states, grads, step)
        assert torch.equal(got, want), f"step {step}"
        for a, b in zip(eager_states, compiled_states):
            for key in a:
                assert torch.equal(a[key], b[key]), (step, key)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 2, f"{graphs} graphs for {STEPS} steps: the step count must not force a recompile every step"
    assert sum(counters["graph_break"].values()) == 0
