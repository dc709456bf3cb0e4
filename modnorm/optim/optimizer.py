"""ModnormOptimizer: the one steepest-descent pipeline, configured by a preset or a Recipe.

Per step, for every bucket of parameters that share a rule, a base norm, a shape, a
dtype, a device and a step count (so one batched call serves them all)::

    g   ← ∓grad (maximize), + λW if weight decay is coupled     (cast to the state dtype)
    d   ← momentum(g)                                           (momentum.py)
    precond.update_many(states, g)                              (statistics of the raw g)
    N   ← precond.norm(base, states, t)                         (Theorem 1: DNorm / LRNorm)
    U   ← N.lmo(stack d)   or   N.sharp(stack d)                (mode)
    W   ← W (1 − η_r · budget · λ)                              (decoupled weight decay)
    W   ← W − η_r · γ · budget · shape · U                      (η_r = lr · rule.lr_ratio)

γ = 1 unless a global step-size stage is configured (``step_size="polyak"``,
``step_size.py``): it then comes from every bucket's direction and the loss, which
``step`` reads from the closure's return value or its ``loss=`` argument.
A stage that runs before the directions (``step_size="prodigy"``, ``prodigy.py``)
instead returns a ``Scaling`` of the step from every parameter's gradient: the gradients
(and coupled decay) above × σ, the preconditioner's ε at the loss scale σ_ε, η_r × ρ.

torch.optim conventions: param groups with per-group hyperparameters (validated), named
parameters, state_dict loadable with ``torch.load(weights_only=True)``, tensor lr,
``maximize``, closures, step hooks, lr schedulers, deepcopy. A parameter without a
gradient is skipped and gets no state. Non-finite gradients raise before anything is
modified (``nonfinite="raise"``) or skip the step and count it in ``skipped_steps``
(``nonfinite="skip"``). 16-bit parameters keep fp32 state unless ``state_dtype`` says otherwise;
a 16-bit ``state_dtype`` is a storage format: steps compute in float32 and round every state
write back, stochastically by default (``low_precision.py``).

``ns_dtype="auto"`` (the default of the Newton–Schulz presets) is resolved once per
(device type, parameter dtype, matrix size class) with ``modnorm.polar_dtype.auto_dtype``;
the choice shows in ``describe()`` (the norm's ``dtype=``) and travels in
``state_dict()["ns_dtype_auto"]`` (e.g. ``{"cpu:float32:256": "bfloat16"}``),
so a resumed run keeps the saved choice even on hardware that would choose otherwise. Likewise the
product forms of ``ns_products="auto"`` (``modnorm.polar_products``): ``state_dict()["ns_products_auto"]``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..distributed.bucket import shard_bucket
from ..distributed.layout import is_dtensor
from ..geometry import Geometry
from ..polar_products import checked_choices
from .catalog import STEP_SIZES
from .config import ConfigError, get_preset, validate_hyperparameters
from .describe import lr_note, optimizer_overrides, optimizer_rows, optimizer_table
from .hparams import require_nonneg
from .low_precision import LowPrecisionState, state_storage
from .ns_choices import RecordedNsChoices
from .momentum import init_momentum, momentum_key
from .preconditioner import RESERVED_STATE_KEYS, StepContext
from .presets import Preset, custom_recipe_preset
from .plan import Plan, PlanCache, build_plans
from .recipe import Recipe, infer_geometry
from .step_size import Direction, Scaling, StepSizeStage, group_stage, stage_inputs, stage_loss
from .update_stages import ScheduleFreeModes
from .state_io import GROUP_KEYS, NS_AUTO_KEY, NS_PRODUCTS_KEY, PRESET_KEY, SKIPPED_KEY, STORAGE_KEY, check_loadable, checked_ns_choices, is_runtime, portable, upgraded
from .deferred import Deferred
from .fused import FusedStep, admit, advance
from .running_bounds import RunningBounds
from .step_plan import form_buckets
from .transaction import PendingWrite, StepTransaction
from .update import BucketStep, compiled_update_bucket, momentum_implied, update_bucket

__all__ = ["ModnormOptimizer"]

def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class ModnormOptimizer(LowPrecisionState, RecordedNsChoices, ScheduleFreeModes, Optimizer):
    """Steepest descent in each parameter's (preconditioned) norm; see the module docstring.

    Args:
        params: tensors, ``(name, tensor)`` pairs, or param-group dicts (which may
            override any hyperparameter per group).
        preset: a preset name (``modnorm.optim.PRESETS``) or a ``Recipe``.
        geometries: name → Geometry (from ``modnorm.geometries(model)``); parameters
            without one get a geometry inferred from their rank.
        budgets: name → budget (from ``modnorm.budgets(model)``); default 1.
        nonfinite: "raise" (default) or "skip".
        state_dtype: dtype of optimizer state; None keeps fp32 for 16-bit parameters
            and the parameter's dtype otherwise. "bfloat16"/"float16" store the state in 16
            bits and compute in float32 (``low_precision.py``: which state stays wider).
        state_rounding: how 16-bit state is written: "stochastic" (unbiased, default) or "nearest".
        rounding_seed: seed of stochastic rounding (default 0, the same in every process; the
            global RNG is never drawn from); saved in ``state_dict``.
        compile: torch.compile each bucket's update (True, or a dict of torch.compile
            options such as ``{"backend": "aot_eager"}``); lr enters as a 0-d tensor, so
            lr schedules do not recompile. DTensor buckets and Hessian preconditioners stay eager.
        **hyperparameters: the preset's hyperparameters (validated; errors name the field).
    """

    def __init__(
        self,
        params: Iterable[Any],
        preset: str | Recipe = "adamw",
        *,
        geometries: dict[str, Geometry] | None = None,
        budgets: dict[str, float] | None = None,
        nonfinite: str = "raise",
        state_dtype: str | torch.dtype | None = None,
        state_rounding: str = "stochastic",
        rounding_seed: int | None = None,
        compile: bool | dict[str, Any] = False,
        **hyperparameters: Any,
    ) -> None:
        if not isinstance(compile, (bool, dict)):
            raise ConfigError(f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}")
        if isinstance(preset, Recipe):
            self._preset: Preset = custom_recipe_preset(preset)
        else:
            self._preset = get_preset(preset)
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        try:
            state_dtype, self._storage = state_storage(state_dtype, state_rounding, rounding_seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for label, table in (("geometries", geometries), ("budgets", budgets)):
            if table is not None and not isinstance(table, dict):
                raise ConfigError(f"{label} must be a dict name → value, got {type(table).__name__}")
        for name, b in (budgets or {}).items():
            try:
                require_nonneg(b, f"budget of parameter {name!r}", finite=False)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        self.nonfinite = nonfinite
        self.state_dtype = state_dtype
        self._compile = compile
        self._compiled: dict[tuple, Callable[..., None]] = {}  # bucket → its compiled update
        self.skipped_steps = 0
        self._eval_mode = False  # schedule-free rules: parameters hold the averaged iterate (eval())
        self._geometries = dict(geometries or {})
        self._budgets = {k: float(v) for k, v in (budgets or {}).items()}
        self._meta: list[list[tuple[str, Geometry, float]]] = []
        self._forget_plans()
        self._init_ns_choices()  # what ns_dtype="auto" and ns_products="auto" resolve to (ns_choices.py)
        self._bounds = RunningBounds()  # of the state written in place: fused steps, statistics redone at the commit
        defaults = validate_hyperparameters(self._preset, hyperparameters).model_dump()
        super().__init__(params, defaults)
        self._warn_overridden()

    def _warn_overridden(self) -> None:
        """One warning listing the declared norms this preset replaces (also in ``describe``'s "declared" column)."""
        replaced = [r for r in self.describe_rows() if r["declared"]]
        if replaced:
            shown = "; ".join(f"{r['name']}: declared {r['declared']}, uses {r['norm']}" for r in replaced[:4])
            more = f"; and {len(replaced) - 4} more" if len(replaced) > 4 else ""
            warnings.warn(
                f"modnorm: preset {self.preset!r} replaces the norm declared for {len(replaced)} parameter(s) ({shown}{more}). "
                "Presets that use declared norms: 'scion' (every role) and the spectral presets (muon, muadam, polargrad, "
                "…: hidden and conv roles); or pass a Recipe with norm='declared'.", stacklevel=3,
            )

    # ------------------------------------------------------------------ construction

    @property
    def preset(self) -> str:
        return self._preset.name

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, plus validation of the group's hyperparameters and parameters."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        gi = len(self.param_groups)
        overrides = {k: v for k, v in param_group.items() if k not in GROUP_KEYS}
        known = self._preset.hyperparameters.model_fields
        validate_hyperparameters(self._preset, {k: v for k, v in {**self.defaults, **overrides}.items() if k in known or k in overrides}, where=f", param group {gi}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        names = group.get("param_names") or [""] * len(group["params"])
        meta = []
        for name, p in zip(names, group["params"]):
            label = name or f"group {gi} param {len(meta)}"
            if p.is_complex():
                raise ConfigError(f"parameter {label!r} is complex; modnorm optimizers support real parameters only (view_as_real it)")
            if not p.is_floating_point():
                raise ConfigError(f"parameter {label!r} has dtype {p.dtype}; only floating-point parameters can be optimized")
            if self._stores_low(p) and is_dtensor(p):
                raise ConfigError(f"parameter {label!r} is a DTensor (FSDP2): state_dtype={self.state_dtype!r} (16-bit state "
                                  "computed in float32) runs on whole tensors only; use state_dtype=None for sharded parameters")
            geometry = self._geometries.get(name) or infer_geometry(tuple(p.shape))
            meta.append((label, geometry, self._budgets.get(name, 1.0)))
        self._meta.append(meta)
        try:
            self._plans(gi, group)  # resolve now: a rule that cannot handle a parameter fails here
        except Exception:
            self.param_groups.pop()
            self._meta.pop()
            raise

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: group[k] for k in self._preset.hyperparameters.model_fields if k in group}

    def _plans(self, gi: int, group: dict[str, Any]) -> list[Plan]:
        """Per-parameter plans for the group's current hyperparameters (cached on them, lr excluded)."""
        hp = {k: v for k, v in self._hyperparameters(group).items() if k != "lr"}

        def build() -> list[Plan]:
            recipe = self._preset.build(validate_hyperparameters(self._preset, hp, where=f", param group {gi}"))
            return build_plans(recipe, self._meta[gi], group["params"], self._storage_dtype, self._auto_ns_dtype, self._ns_products)

        return self._plan_cache.get(gi, hp, len(group["params"]), build)

    def _forget_plans(self) -> None:
        """Drop the cached plans (rebuilt on demand)."""
        self._plan_cache = PlanCache()

    # ------------------------------------------------------------------ state

    def _init_state(self, p: Tensor, plan: Plan, state: dict[str, Any], stage: StepSizeStage | None) -> None:
        dtype = self._state_dtype(p)
        view = p.detach().reshape(plan.shape)
        state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        state.update(init_momentum(plan.rule.momentum, view, dtype))
        extra = plan.precond.init_state(view, dtype)
        clash = RESERVED_STATE_KEYS.intersection(extra)
        if clash:
            raise RuntimeError(f"preconditioner {plan.precond!r} uses reserved state keys {sorted(clash)}; rename them")
        state.update(extra)
        if stage is not None:
            state.update(stage.init_state(view, dtype))  # the stage's running statistics

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for k in ("_preset", "nonfinite", "state_dtype", "skipped_steps", "_geometries", "_budgets", "_meta", "_compile", "_eval_mode", "_ns_auto", "_ns_products", "_storage"):
            state[k] = getattr(self, k)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._forget_plans()
        # torch's load_state_dict calls __setstate__ with only state and param_groups: keep our own fields
        self._compile = state.get("_compile", getattr(self, "_compile", False))
        self._compiled = {}
        self._init_ns_choices(state)
        self._bounds = RunningBounds()  # the running bounds belong to the state tensors they were made for

    def _expected_state(self) -> list[dict[str, tuple[int, ...]]]:
        """State key → shape that each parameter (in group order) has once stepped ({} for 0-size ones)."""
        out, stage = [], group_stage(self.param_groups, STEP_SIZES)
        for gi, group in enumerate(self.param_groups):
            for p, plan in zip(group["params"], self._plans(gi, group)):
                shadow: dict[str, Any] = {}
                if p.numel():
                    self._init_state(torch.empty(p.shape, dtype=p.dtype, device="meta"), plan, shadow, stage)
                out.append({k: tuple(v.shape) for k, v in shadow.items()})
        return out

    def initialize_state(self) -> list[Tensor]:
        """Give every trainable parameter without state its initial state (step 0), without a step;
        returns those parameters. Checkpoint loading uses it instead of torch's zero-gradient step."""
        added, stage = [], group_stage(self.param_groups, STEP_SIZES)
        for gi, group in enumerate(self.param_groups):
            for p, plan in zip(group["params"], self._plans(gi, group)):
                if p.requires_grad and p.numel() and not self.state.get(p):
                    self._init_state(p, plan, self.state[p], stage)
                    self._store_initial(p, plan, stage)
                    added.append(p)
        return added

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, plus the preset's name and ``"ns_dtype_auto"`` (what ns_dtype="auto"
        resolved to), minus runtime hyperparameters (``state_io``)."""
        extra = {STORAGE_KEY: self._storage.state_dict()} if self._storage is not None else {}
        return {**portable(super().state_dict(), self.preset, self.skipped_steps), NS_AUTO_KEY: dict(self._ns_auto),
                NS_PRODUCTS_KEY: self.ns_products_auto, **extra}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict after ``state_io.upgraded`` (an earlier version's state keys, e.g.
        Shampoo's half roots) and ``state_io.check_loadable`` (another preset's state, or state
        that does not fit, is refused with nothing changed); keeps this optimizer's runtime
        hyperparameters and state dtypes (torch casts state to the parameter's dtype), adopts the
        saved ns_dtype="auto" choices (they replace this machine's) and the saved rounding seed. The
        state is copied: stepping this optimizer never writes into ``state_dict``'s tensors (nor the reverse)."""
        state_dict = upgraded(state_dict, [plan.precond for gi, g in enumerate(self.param_groups) for plan in self._plans(gi, g)])
        check_loadable(self, state_dict, self._expected_state())
        saved_auto = checked_ns_choices(state_dict.get(NS_AUTO_KEY, {}))
        saved_forms = checked_choices(state_dict.get(NS_PRODUCTS_KEY, {}))
        runtime = [{k: v for k, v in g.items() if is_runtime(v)} for g in self.param_groups]
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in (PRESET_KEY, SKIPPED_KEY, NS_AUTO_KEY, NS_PRODUCTS_KEY, STORAGE_KEY)})
        if self._storage is not None and STORAGE_KEY in state_dict:
            self.rounding_seed = state_dict[STORAGE_KEY]["seed"]
        self.skipped_steps = int(state_dict.get(SKIPPED_KEY, self.skipped_steps))
        for group, values in zip(self.param_groups, runtime):
            for k, v in values.items():
                group.setdefault(k, v)
        self.set_ns_dtype_auto(saved_auto)
        self.set_ns_products_auto(saved_forms)
        saved_ids = iter([i for g in state_dict["param_groups"] for i in g["params"]])
        stage = group_stage(self.param_groups, STEP_SIZES)
        for gi, group in enumerate(self.param_groups):
            for p, plan in zip(group["params"], self._plans(gi, group)):
                if isinstance(self.state.get(p, {}).get("step"), Tensor):  # torch keeps the dict's own step tensors; steps advance them in place
                    self.state[p]["step"] = self.state[p]["step"].clone()
                saved = state_dict["state"].get(next(saved_ids)) or {}
                self._restore_dtypes(p, plan, stage, saved)
                for k, v in saved.items():  # torch keeps the dict's own tensors: the fused steps write in place
                    if k != "step" and isinstance(v, Tensor) and self.state[p].get(k) is v:
                        self.state[p][k] = v.clone()
        self._forget_plans()

    # ------------------------------------------------------------------ step

    def _check_gradients(self, work: list[tuple[int, dict, list[tuple[int, Tensor]]]]) -> None:
        """Refuse sparse/complex gradients (their finiteness is checked with the new state)."""
        for gi, _, items in work:
            for i, p in items:
                label = self._meta[gi][i][0]
                if p.grad.is_sparse:
                    raise RuntimeError(f"parameter {label!r} has a sparse gradient; modnorm optimizers need dense gradients (e.g. nn.Embedding(sparse=False))")
                if p.grad.is_complex():
                    raise RuntimeError(f"parameter {label!r} has a complex gradient; modnorm optimizers support real tensors only")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss.

        ``loss``: the loss at the current parameters, for a step-size stage that needs it
        (``step_size="polyak"``) when no closure is given; a closure's value takes precedence.
        """
        stage = group_stage(self.param_groups, STEP_SIZES)  # settings checked before the closure runs or anything is touched
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():  # torch.compile(opt.step): keep planning out of the graph
            torch.compiler.disable(self._apply)(stage, closure, loss)
        else:
            self._apply(stage, closure, loss)
        return loss

    def _apply(self, stage: StepSizeStage | None, closure: Callable[[], Any] | None, loss: Any) -> None:
        """Plan, compute every bucket aside, check once, commit (``transaction``). Never traced:
        ``torch.compile(opt.step)`` runs this eagerly; ``compile=True`` compiles each bucket's
        computation (``update.compiled_update_bucket``)."""
        value = stage_loss(stage, self.param_groups, loss)
        if value is not None and not math.isfinite(value):
            if self.nonfinite == "skip":
                self.skipped_steps += 1
                return
            raise FloatingPointError(f"non-finite loss {value} for the step-size stage; nothing was updated. "
                                     "Find the cause, or pass nonfinite='skip' to skip such steps.")
        collected: list[Direction] | None = [] if stage is not None and not stage.runs_before else None
        txn = StepTransaction(Deferred(self._bounds) if self._storage is None and stage is None and self._compile is False else None)
        failure: BaseException | None = None
        fused: list[FusedStep] = []
        try:
            jobs, fused = self._prepare(txn, stage)
            scaling = stage.prepare(stage_inputs(jobs, self._state_dtype), self.state.values()) if stage is not None and stage.runs_before else None
            for members, t, lr, maximize in jobs:
                self._update_bucket(members, t, lr, maximize, closure, loss, txn, collected, scaling)
            if stage is not None and collected:
                txn.scale_steps(stage.factor(value, collected))
            if scaling is not None and scaling.step != 1.0:
                txn.scale_steps(scaling.step)
        except torch.linalg.LinAlgError as e:  # e.g. eigh of statistics made non-finite by this step
            failure = e
        if failure is None and txn.all_finite():
            txn.commit(self.state)
            advance(fused)
            if self._step_plan is not None:
                self._step_plan.committed()
            for step in reversed(fused):  # proven finite (fused.py): in place, once nothing can refuse the step
                step.run(self.state, self._bounds)
            return
        bad = txn.bad_gradients()
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return
        if bad:
            message = f"non-finite gradient in parameter(s) {bad}"
        elif failure is not None:
            message = f"a decomposition failed ({failure})"
        else:
            message = f"the step would make non-finite values in {txn.bad_values()}"
        raise FloatingPointError(
            f"{message}; nothing was updated. Find the cause (lr too high, a gradient too large for the "
            "state dtype, overflow), or pass nonfinite='skip' to skip such steps."
        ) from failure

    def _prepare(self, txn: StepTransaction, stage: StepSizeStage | None) -> tuple[list[tuple[list[tuple[Tensor, Plan, dict]], int, Any, bool]], list[FusedStep]]:
        """Resolve plans and form the buckets (eager, never traced): (jobs, fused). A bucket that a
        fused kernel can step in place, with a precondition that holds (``fused.py``), is in ``fused``;
        every other bucket opens its parameters' shadow state in ``txn`` and is a job."""
        buckets, candidates = form_buckets(self, stage is None and self._compile is False)  # step_plan.py
        admitted, _ = admit([f for f in candidates if f is not None])
        taken = {id(f) for f in admitted}
        init = lambda p, plan, shadow: self._init_state(p, plan, shadow, stage)  # noqa: E731
        storage = None
        if self._storage is not None:  # 16-bit state: the rounding noise is keyed by the parameter's index
            index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
            storage = lambda p, plan, shadow, t: self._upcast(p, plan, stage, shadow, index[id(p)], t)  # noqa: E731
        jobs = [(txn.open_bucket(members, t, init, storage), t, lr, maximize) for f, (members, t, lr, maximize) in zip(candidates, buckets) if id(f) not in taken]
        return jobs, admitted

    def _checked_lr(self, gi: int, group: dict[str, Any]) -> Any:
        """The group's lr, validated again (a scheduler or the user may have set it after construction)."""
        lr = group["lr"]
        try:  # a tensor on an accelerator is not read (that would synchronize)
            return require_nonneg(lr, "lr")
        except ValueError as e:
            raise ConfigError(f"param group {gi}: {e} (float or 1-element floating tensor); nothing was updated") from None

    def _update_bucket(self, members: list[tuple[Tensor, Plan, dict]], step: int, lr: Any, maximize: bool, closure: Any, loss: Any,
                       txn: StepTransaction, collect: list[Direction] | None = None, scaling: Scaling | None = None) -> None:
        params = [m[0] for m in members]
        plan = members[0][1]
        spec, precond = plan.spec, plan.precond
        states = [m[2] for m in members]
        names = [m[1].name for m in members]
        # FSDP2 (DTensor) parameters: run the pipeline on local shards (modnorm.distributed.bucket)
        sharded = shard_bucket(params, states, names)
        if sharded is not None:
            states = sharded.states
            for p, work in zip(params, states):
                txn.bind_work(p, work)
        shape = plan.shape
        views = sharded.views if sharded else [p.view(shape) if p.ndim == 0 else p for p in params]
        grads = sharded.grads if sharded else [p.grad if p.ndim else p.grad.reshape(shape) for p in params]
        if scaling is not None:  # a stage before the directions: the pipeline sees the loss σ·f, lr × ρ
            grads = torch._foreach_mul([g.to(self._state_dtype(params[0])) for g in grads], scaling.loss)
            if spec.coupled and spec.weight_decay:
                spec = dataclasses.replace(spec, weight_decay=spec.weight_decay * scaling.loss)
            precond, lr = precond.for_loss_scale(scaling.eps), float(lr) * scaling.lr
        fn: Callable[..., BucketStep] = update_bucket
        if self._compile is not False and sharded is None and not (precond.needs_hvp or precond.eager_only) and collect is None and scaling is None:
            key = (plan.key, len(members))
            if key not in self._compiled:
                self._compiled[key] = compiled_update_bucket(self._compile if isinstance(self._compile, dict) else {})
            fn = self._compiled[key]
            lr = lr.to(device=views[0].device, dtype=torch.float64) if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=torch.float64, device=views[0].device)
            ctx = StepContext(step=step)
        else:
            lr = float(lr)
            defer = txn.deferred if sharded is None and collect is None and scaling is None else None
            ctx = StepContext(step=step, params=params, names=names, closure=closure, loss=loss, defer=defer)
        out = fn(spec=spec, base=plan.norm, precond=precond, views=views, grads=grads, states=states, step=step, lr=lr,
                 maximize=maximize, state_dtype=self._state_dtype(params[0]), ctx=ctx, step_scales=[m[1].step_scale for m in members],
                 decay_budgets=[m[1].budget for m in members], sharded=sharded, collect=collect)
        if ctx.defer is not None:
            ctx.defer.end_bucket(", ".join(names))
        implied = momentum_key(plan.rule.momentum) if momentum_implied(plan.spec, plan.precond, self._storage_dtype(params[0])) else None
        txn.add_write(PendingWrite(views, out.update, out.alpha, out.decay, out.divisor, out.fresh, out.scale, out.rows, out.form),
                      out.checks, names, params, implied, out.bound)
        txn.store(params)

    # ------------------------------------------------------------------ introspection

    def __repr__(self) -> str:
        text = super().__repr__().replace(type(self).__name__, f"{type(self).__name__}[{self.preset}]", 1)
        return f"{text}\n{lr_note(self)}"

    def describe_rows(self) -> list[dict[str, Any]]:
        """One dict per parameter (``modnorm.optim.describe.optimizer_rows``), incl. the effective lr."""
        return optimizer_rows(self)

    def describe_overrides(self) -> dict[str, dict[str, str]]:
        """Cells for ``modnorm.describe(model, overrides=opt.describe_overrides())``: the norm and
        preconditioner this optimizer actually uses, plus momentum, mode and lr scale columns."""
        return optimizer_overrides(self)

    def describe(self, columns: list[str] | None = None) -> str:
        """What the optimizer does per parameter, as text (the same as ``modnorm.describe(opt)``)."""
        return optimizer_table(self, columns)
