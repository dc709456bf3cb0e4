"""A step's buckets, kept from one step to the next while what they were formed from holds.

``ModnormOptimizer._prepare`` forms each step's buckets (``form_buckets``): it walks the param
groups for the parameters with a gradient, resolves their plans (``plan.py``), groups them by
(plan key, step count) and finds the buckets a fused kernel can step (``fused.FusedBucket``). In
an ordinary training loop every step forms the same buckets, so they are recorded (``StepPlan``)
and the next step re-checks only what can change between steps:

- the optimizer's plan cache (a new one whenever plans are forgotten: construction,
  ``load_state_dict``, unpickling), ``param_groups`` and ``state`` are the same objects; so are
  each group dict, its ``params`` list and every parameter in it;
- the same parameters have a non-empty gradient, none sparse or complex (the full planning raises
  for those);
- each stepped group's plans (``_plans``: its hyperparameters but lr, validated again) are the
  same list and its ``maximize`` the same; its lr is validated and read again;
- each stepped parameter's state is the same dict holding the same step counter, whose version
  (``Tensor._version``, bumped by every in-place write) is the one recorded when the optimizer's
  last step committed, so that its step count is the recorded one (not read);
- a fused bucket's state dicts hold the tensors that were checked (``FusedBucket.unchanged``); its
  parameters and gradients (a new gradient tensor every step is the common case) are checked every
  step (``FusedBucket.step``), as are lr and the running bounds of ``fused.py``.

When any of these differs the buckets are formed afresh, exactly as without a record. A step
that commits advances every recorded step count by one (``StepPlan.committed``: each stepped
parameter's counter advanced once); a refused or skipped step changes nothing, the record
included. Nothing is recorded for a step that holds a parameter's first step (its state dict is
made by the step), or step counters without a version (not tensors, or inference-mode tensors)
or shared between parameters.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .fused import FusedBucket, FusedStep

__all__ = ["Bucket", "StepPlan", "form_buckets"]

Member = tuple[Tensor, Any, dict[str, Any] | None]  # (parameter, its Plan, its state or None before its first step)
Bucket = tuple[list[Member], int, Any, bool]  # (members, step count, lr, maximize)
_Formed = tuple[list[Member], int, int, bool]  # (members, step count, index into the stepped groups, maximize)


def form_buckets(opt: Any, fusable: bool) -> tuple[list[Bucket], list[FusedStep | None]]:
    """The step's buckets and, for each, its fused step (None: the transactional path); ``fusable``:
    whether fused steps are allowed at all. Reuses ``opt._step_plan`` when it holds, else forms them
    (and records them in ``opt._step_plan``, or None)."""
    plan: StepPlan | None = getattr(opt, "_step_plan", None)
    reused = plan.reuse(opt, fusable) if plan is not None else None
    if reused is not None:
        return reused
    opt._step_plan = None
    work = []
    for gi, group in enumerate(opt.param_groups):
        items = [(i, p) for i, p in enumerate(group["params"]) if p.grad is not None and p.numel() > 0]
        if items:
            work.append((gi, group, items))
    opt._check_gradients(work)
    # resolve every group first: hyperparameters changed to bad values fail before any update
    all_plans = [opt._plans(gi, group) for gi, group, _ in work]
    lrs = [opt._checked_lr(gi, group) for gi, group, _ in work]
    formed: list[_Formed] = []
    for w, ((gi, group, items), plans) in enumerate(zip(work, all_plans)):
        by_key: dict[tuple, list[Member]] = defaultdict(list)
        for i, p in items:
            original = opt.state.get(p) or None
            t = int(original["step"]) + 1 if original is not None else 1  # step lives on the CPU: no device sync
            by_key[(plans[i].key, t)].append((p, plans[i], original))
        formed += [(members, t, w, bool(group["maximize"])) for (_, t), members in by_key.items()]
    templates = [FusedBucket.of(members, maximize, opt._storage_dtype, opt._init_state) if fusable else None
                 for members, _, _, maximize in formed]
    opt._step_plan = StepPlan.record(opt, fusable, [gi for gi, _, _ in work], all_plans, formed, templates)
    return _instances(formed, templates, lrs, opt._bounds)


def _instances(formed: Sequence[_Formed], templates: Sequence[FusedBucket | None], lrs: Sequence[Any],
               running: Any) -> tuple[list[Bucket], list[FusedStep | None]]:
    buckets = [(members, t, lrs[w], maximize) for members, t, w, maximize in formed]
    return buckets, [b.step(t, lrs[w], running) if b is not None else None for b, (_, t, w, _) in zip(templates, formed)]


class StepPlan:
    """The buckets of the optimizer's last step and what they were formed from (module docstring)."""

    def __init__(self, opt: Any, fusable: bool, stepped: list[int], plans: list[list[Any]], formed: list[_Formed],
                 templates: list[FusedBucket | None], counters: list[Tensor], versions: list[int]) -> None:
        self.plan_cache, self.param_groups, self.state, self.fusable = opt._plan_cache, opt.param_groups, opt.state, fusable
        self.groups = [(g, g["params"], list(g["params"]), [p.grad is not None and p.numel() > 0 for p in g["params"]])
                       for g in opt.param_groups]
        self.stepped, self.plans, self.maximize = stepped, plans, [bool(opt.param_groups[gi]["maximize"]) for gi in stepped]
        self.formed, self.templates = formed, templates
        self.members = [m for members, *_ in formed for m in members]
        self.counters, self.versions = counters, versions

    @classmethod
    def record(cls, opt: Any, fusable: bool, stepped: list[int], plans: list[list[Any]], formed: list[_Formed],
               templates: list[FusedBucket | None]) -> StepPlan | None:
        """The record of this step's buckets; None when a parameter takes its first step, or a step
        counter keeps no version or is shared (it would advance more than once per step)."""
        states = [st for members, *_ in formed for _, _, st in members]
        if any(st is None for st in states):
            return None
        try:
            counters = [st["step"] for st in states]
            versions = [c._version for c in counters]
        except (KeyError, AttributeError, RuntimeError):  # no counter, not a tensor, an inference-mode tensor
            return None
        if len({id(c) for c in counters}) != len(counters):
            return None
        return cls(opt, fusable, stepped, plans, formed, templates, counters, versions)

    def reuse(self, opt: Any, fusable: bool) -> tuple[list[Bucket], list[FusedStep | None]] | None:
        """This step's buckets and fused steps when the record holds (module docstring); else None."""
        groups = opt.param_groups
        if (opt._plan_cache is not self.plan_cache or groups is not self.param_groups or opt.state is not self.state
                or fusable != self.fusable or len(groups) != len(self.groups)):
            return None
        for group, (g0, params, copy, has_grad) in zip(groups, self.groups):
            ps = group["params"]
            if (group is not g0 or ps is not params or len(ps) != len(copy) or not all(map(operator.is_, ps, copy))
                    or [p.grad is not None and p.numel() > 0 for p in ps] != has_grad):
                return None
        get = opt.state.get
        for (p, _, st), counter, version in zip(self.members, self.counters, self.versions):
            g = p.grad
            if get(p) is not st or st.get("step") is not counter or counter._version != version or g.is_sparse or g.is_complex():
                return None
        plans = [opt._plans(gi, groups[gi]) for gi in self.stepped]
        if (any(a is not b for a, b in zip(plans, self.plans))
                or [bool(groups[gi]["maximize"]) for gi in self.stepped] != self.maximize
                or not all(b is None or b.unchanged() for b in self.templates)):
            return None
        lrs = [opt._checked_lr(gi, groups[gi]) for gi in self.stepped]
        return _instances(self.formed, self.templates, lrs, opt._bounds)

    def committed(self) -> None:
        """The step committed: every stepped parameter's counter advanced by one."""
        self.formed = [(members, t + 1, w, maximize) for members, t, w, maximize in self.formed]
        self.versions = [c._version for c in self.counters]
