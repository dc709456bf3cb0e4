"""Buckets kept from one step to the next (``modnorm.optim.step_plan``): whatever changes between
steps — hyperparameters, which parameters have gradients, the gradient tensors, the state, a
loaded state dict, a new param group, a parameter's data — the steps stay torch.optim's (bit for
bit its ``fused=True`` kernels); and the record is used while nothing changes."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

import modnorm

step_plan = importlib.import_module("modnorm.optim.step_plan")
fused_module = importlib.import_module("modnorm.optim.fused")
SHAPES = [(6, 4), (6, 4), (4, 6), (5,), ()]
Event = Callable[[torch.optim.Optimizer, list[torch.Tensor], bool], None]  # (optimizer, its parameters, whether modnorm's)


@pytest.fixture
def formed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Appends 1 each time a step forms its buckets afresh (and records them)."""
    calls: list[int] = []
    record = step_plan.StepPlan.record.__func__

    def counted(cls: type, *args: Any) -> Any:
        calls.append(1)
        return record(cls, *args)

    monkeypatch.setattr(step_plan.StepPlan, "record", classmethod(counted))
    return calls


@pytest.fixture
def transactional(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every bucket takes the transactional path (whose bias correction reads the bucket's step count)."""
    monkeypatch.setattr(fused_module, "fused_kind", lambda *a, **k: None)


def params_of(shapes: list = SHAPES, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def lockstep(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], peer: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
             events: dict[int, Event], steps: int = 8, in_place: frozenset[int] = frozenset(), exact: bool = True) -> torch.optim.Optimizer:
    """Steps a modnorm optimizer and a torch peer on copies of the same parameters with the same
    gradients; ``events[k]`` changes both alike before step k; the steps in ``in_place`` write the
    gradients into the existing gradient tensors. Parameters are compared after every step
    (bitwise, or within float32 rounding when not ``exact``)."""
    ours = params_of()
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = make(ours), peer(theirs)
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        for p, q in zip(ours, theirs):
            grad = torch.randn(p.shape, generator=g)
            for x in (p, q):
                if k in in_place and x.grad is not None:
                    x.grad.copy_(grad)
                else:
                    x.grad = grad.clone()
        if k in events:
            events[k](opt, ours, True)
            events[k](ref, theirs, False)
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            if exact:
                assert torch.equal(a, b), f"step {k}"
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {k}")
    return opt


def set_group(key: str, value: Any, group: int = 0) -> Event:
    def event(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        opt.param_groups[group][key] = value

    return event


def adamw(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
    return modnorm.optimizer(ps, "adamw", lr=0.01)


def torch_adamw(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(ps, lr=0.01, fused=True)


def test_hyperparameters_changed_between_steps_equal_torch_fused(formed):
    def tensor_lr(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        opt.param_groups[0]["lr"] = torch.tensor(0.03, dtype=torch.float64) if ours else 0.03

    events = {2: set_group("lr", 0.02), 3: set_group("betas", (0.8, 0.95)), 4: set_group("weight_decay", 0.1),
              5: set_group("eps", 1e-6), 6: set_group("maximize", True), 7: tensor_lr, 8: set_group("betas", (0.9, 0.999))}
    lockstep(adamw, torch_adamw, events, steps=10)
    assert len(formed) < 10  # the record served some steps


@pytest.mark.parametrize("hp", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}])
def test_sgd_hyperparameters_changed_between_steps_equal_torch_fused(hp):
    events = {2: set_group("lr", 0.02), 3: set_group("momentum", 0.5), 4: set_group("weight_decay", 0.2),
              5: set_group("dampening", 0.0 if hp.get("nesterov") else 0.3), 6: set_group("maximize", True)}
    lockstep(lambda ps: modnorm.optimizer(ps, "sgd", lr=0.01, **hp), lambda ps: torch.optim.SGD(ps, lr=0.01, fused=True, **hp), events)


def test_gradients_dropped_restored_and_written_in_place_equal_torch_fused(formed):
    def drop(*indices: int) -> Event:
        def event(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
            for i in indices:
                ps[i].grad = None

        return event

    def zero_grad_in_place(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        grads = [p.grad.clone() for p in ps]
        opt.zero_grad(set_to_none=False)
        for p, g in zip(ps, grads):
            p.grad.add_(g)

    events = {2: drop(1), 3: drop(1, 4), 5: drop(0, 1, 2, 3), 6: zero_grad_in_place}
    lockstep(adamw, torch_adamw, events, steps=10, in_place=frozenset({4, 7, 8, 9}))
    assert len(formed) < 10


@pytest.mark.parametrize("preset, peer", [("adamw", torch_adamw),
                                          ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, fused=True))])
def test_state_replaced_reset_or_written_equals_torch_fused(preset, peer):
    key = "exp_avg" if preset == "adamw" else "momentum_buffer"

    def replace(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        opt.state[ps[0]][key] = torch.full_like(ps[0], 0.25)

    def reset(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        if preset == "sgd":  # torch's fused SGD starts buffers only when no parameter has one
            opt.state.clear()
            return
        del opt.state[ps[1]]  # a fresh start for these parameters: their first step again
        opt.state[ps[3]] = {}

    def write(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        opt.state[ps[2]][key].mul_(2.0)
        if preset == "adamw":  # torch's SGD keeps no counter
            opt.state[ps[4]]["step"].fill_(10.0)

    make = adamw if preset == "adamw" else lambda ps: modnorm.optimizer(ps, "sgd", lr=0.01, momentum=0.9)
    lockstep(make, peer, {2: replace, 4: reset, 6: write}, steps=9)


def test_load_state_dict_add_param_group_and_new_parameter_data_equal_torch_fused():
    saved: dict[bool, Any] = {}

    def save(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        saved[ours] = copy.deepcopy(opt.state_dict())

    def load(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        opt.load_state_dict(saved[ours])

    def new_data(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        for p in ps:
            p.data = p.data.clone()  # the same Parameter over new storage (0-D ones too)

    def add_group(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        extra = params_of([(3, 2), (2,)], seed=5)
        for p in extra:
            p.grad = torch.full(p.shape, 0.5)
        opt.add_param_group({"params": extra, "lr": 0.005, "weight_decay": 0.3})
        added[ours] = extra

    added: dict[bool, list[torch.Tensor]] = {}
    ours = lockstep(adamw, torch_adamw, {2: save, 4: load, 5: new_data, 6: add_group}, steps=9)
    assert ours.state[added[True][0]]["step"].item() == 3  # steps 6, 7, 8 (gradients kept)
    assert all(torch.equal(a, b) for a, b in zip(added[True], added[False]))


def test_a_step_counter_written_in_place_is_read_again(transactional):
    """A bucket's step count comes from its counters: one written in place is read at the next
    step (not assumed advanced by one since the last). The transactional path's bias correction
    uses it; torch's foreach AdamW reads its counters."""

    def jump(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        for p in ps:
            opt.state[p]["step"].fill_(10.0)

    lockstep(adamw, lambda ps: torch.optim.AdamW(ps, lr=0.01, foreach=True), {4: jump}, steps=7, exact=False)


def test_a_skipped_step_does_not_advance_the_recorded_counts(transactional):
    """A step skipped for a non-finite gradient changes nothing, the recorded step counts included
    (transactional path: its bias correction uses them; the peer does not take that step)."""

    class Skipping(torch.optim.AdamW):
        def step(self, closure: Any = None) -> Any:  # the peer of nonfinite="skip": no step on a NaN gradient
            if any(not bool(p.grad.isfinite().all()) for g in self.param_groups for p in g["params"] if p.grad is not None):
                return None
            return super().step(closure)

    def poison(opt: torch.optim.Optimizer, ps: list[torch.Tensor], ours: bool) -> None:
        ps[2].grad[0, 0] = float("nan")

    opt = lockstep(lambda ps: modnorm.optimizer(ps, "adamw", lr=0.01, nonfinite="skip"),
                   lambda ps: Skipping(ps, lr=0.01, foreach=True), {3: poison}, steps=7, exact=False)
    assert opt.skipped_steps == 1


def test_the_buckets_are_formed_again_only_when_something_changed(formed):
    ps = params_of()
    opt = modnorm.optimizer(ps, "adamw", lr=0.01)

    def step() -> int:
        before = len(formed)
        for p in ps:
            p.grad = torch.randn(p.shape)
        opt.step()
        return len(formed) - before

    # the first step makes the state (nothing recorded), the second records, the rest reuse
    assert [step() for _ in range(5)] == [1, 1, 0, 0, 0]
    opt.param_groups[0]["lr"] = 0.5  # read every step
    assert step() == 0
    opt.param_groups[0]["weight_decay"] = 0.2
    assert [step(), step()] == [1, 0]
    opt.state[ps[0]]["exp_avg"] = torch.zeros_like(ps[0])
    assert [step(), step()] == [1, 0]
    opt.load_state_dict(opt.state_dict())
    assert [step(), step()] == [1, 0]
