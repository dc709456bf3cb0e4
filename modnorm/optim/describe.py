"""What a ``ModnormOptimizer`` does to each parameter: ``modnorm.describe(opt)``.

One row per parameter, in param-group order: the route (the recipe entry that handles
the parameter: its role, or ``default``), the norm the update really uses (the rule's
base norm, or the declared one), the preconditioner, momentum and mode, the budget, and
the effective learning rate

    lr_eff = group lr × budget × lr_ratio × shape factor

(budget: the parameter's share of the modular norm, 1 with ``budgets=False``;
lr_ratio: the rule's, e.g. ``adamw_lr_ratio`` for what a matrix preset routes to AdamW;
shape factor: torch.optim.Muon's ``adjust_lr_fn`` times, on the head and a table tied to
it, a rule's ``lr_fan_in`` / fan_in (``adamw_head_width``), else 1). Adagrad's ``lr_decay``
further divides lr_eff by 1 + (t − 1)·lr_decay at step t. A 3-layer MLP has budget 1/3
per layer, so ``modnorm.optimizer(mlp, "adamw", lr=3e-3)`` steps like
``torch.optim.AdamW(lr=1e-3)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..table import format_table, fraction_text

if TYPE_CHECKING:
    from .optimizer import ModnormOptimizer

__all__ = ["OPTIMIZER_COLUMNS", "LR_NOTE", "optimizer_rows", "optimizer_overrides", "optimizer_table", "lr_note"]

OPTIMIZER_COLUMNS: tuple[str, ...] = ("name", "shape", "role", "route", "norm", "preconditioner", "momentum", "mode", "budget", "lr")

LR_NOTE = "lr = effective lr per parameter = group lr × budget × lr_ratio × shape factor (every budget 1 unless budgets=True)"


def _float(lr: Any) -> float:
    return float(lr.item()) if isinstance(lr, Tensor) else float(lr)


def optimizer_rows(opt: ModnormOptimizer) -> list[dict[str, Any]]:
    """One dict per parameter: name, shape (tuple), role, route, norm, preconditioner, momentum,
    mode, budget, lr_scale (budget × lr_ratio × shape factor), lr (= group lr × lr_scale), group, and
    declared: the declared norm when the preset replaces it by another family ("" otherwise)."""
    rows = []
    for gi, group in enumerate(opt.param_groups):
        lr = _float(group["lr"])
        for p, plan in zip(group["params"], opt._plans(gi, group)):
            scale = plan.step_scale * plan.rule.lr_ratio
            rows.append({
                "name": plan.name,
                "shape": tuple(p.shape),
                "role": plan.role,
                "route": plan.route,
                "norm": repr(plan.norm),
                "preconditioner": plan.precond_label,
                "momentum": plan.rule.momentum,
                "mode": plan.rule.mode,
                "budget": plan.budget,
                "lr_scale": scale,
                "lr": lr * scale,
                "group": gi,
                "declared": plan.declared,
            })
    return rows


def optimizer_overrides(opt: ModnormOptimizer) -> dict[str, dict[str, str]]:
    """Cells for ``modnorm.describe(model, overrides=...)``: the norm and preconditioner the optimizer
    actually uses, momentum, mode and lr scale (and the declared norm a preset replaces, if any)."""
    rows = optimizer_rows(opt)
    replaced = any(r["declared"] for r in rows)
    return {
        r["name"]: {"norm": r["norm"], "preconditioner": r["preconditioner"], "momentum": r["momentum"], "mode": r["mode"],
                    "lr_scale": f"{r['lr_scale']:.6g}", **({"declared": r["declared"]} if replaced else {})}
        for r in rows
    }


def _cell(column: str, value: Any) -> str:
    if column == "shape":
        return "×".join(str(s) for s in value) or "scalar"
    if column == "budget":
        return fraction_text(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def optimizer_table(opt: ModnormOptimizer, columns: tuple[str, ...] | list[str] | None = None) -> str:
    """``ModnormOptimizer(preset=…)``, a text table of ``optimizer_rows`` (``columns`` selects and
    orders them; default ``OPTIMIZER_COLUMNS``, plus "declared" when the preset replaces a
    declared norm), and a line saying how the lr column is computed."""
    rows = optimizer_rows(opt)
    default = list(OPTIMIZER_COLUMNS) + (["declared"] if any(r["declared"] for r in rows) else [])
    columns = default if columns is None else list(columns)
    known = set(OPTIMIZER_COLUMNS) | {"lr_scale", "group", "declared"}
    bad = [c for c in columns if c not in known]
    if bad:
        raise ValueError(f"describe: unknown columns {bad} for an optimizer; available: {sorted(known)}")
    cells = [{c: _cell(c, r[c]) for c in columns} for r in rows]
    out = f"ModnormOptimizer(preset={opt.preset!r})\n{format_table(cells, columns)}"
    out = out + f"\n{LR_NOTE}" if "lr" in columns else out
    forms = getattr(opt, "ns_products_auto", {})
    return out + "\nNewton–Schulz products (measured, kept in state_dict): " + ", ".join(f"{k} {v}" for k, v in forms.items()) if forms else out


def lr_note(opt: ModnormOptimizer) -> str:
    """The one-line note of the optimizer's repr: budgets scale the lr."""
    budgets = sorted({b for meta in opt._meta for _, _, b in meta}) or [1.0]
    span = f"{budgets[0]:.4g}" if len(budgets) == 1 else f"{budgets[0]:.4g}…{budgets[-1]:.4g}"
    return f"note: step size per parameter = lr × budget ({span} here) × lr_ratio × shape factor; modnorm.describe(opt) lists it"
