"""Rules and recipes: the configuration space of the one optimizer pipeline.

A ``UpdateRule`` fixes, for the parameters it applies to,

    base norm  ×  preconditioner  ×  momentum  ×  mode ("lmo" | "sharp")
    + weight decay (decoupled or coupled), an lr ratio, Adagrad's lr decay and a
      fan-in factor for output maps (``lr_fan_in``: µP's lr ∝ 1/width for an Adam-type head)
    + where momentum acts (on the gradient, or on the preconditioned update) and a
      trust ratio (LAMB/LARS: a per-layer budget set by ‖W‖, ``update_stages``)

and a ``Recipe`` routes parameters to rules by their declared role ("hidden",
"embedding", "head", "conv", "vector"). Every preset is a function from its
hyperparameters to a Recipe; users can pass their own Recipe to ``modnorm.optimizer``.

Base norms: ``"declared"`` takes the parameter's declared geometry (``Geometry.norm``);
``"frobenius"``, ``"sign"``, ``"rms"`` act on the whole tensor; ``"spectral"`` is
``Spectral`` for a matrix and ``SpectralConv`` for a >2-D kernel, ``"colnorm"``/
``"rownorm"`` for matrices (embedding layout when the role is "embedding"), each acting
on the blocks of the declared norm (``modnorm.blocks``: gates, groups, (in, out)
layouts). A "spectral" rule uses a declared norm of another family than the role's
default as declared; where any other rule replaces such a norm, the optimizer says so. The
spectral options (``scale``, ``ns_method``, ``ns_steps``, ``ns_coefficients``, ``ns_dtype``,
``ns_eps``) configure the built spectral norms (``ns_dtype="auto"``: the optimizer resolves
it per device, parameter dtype and matrix size class with ``modnorm.polar_dtype.auto_dtype``
and passes the result to ``resolve_norm``; ``ns_steps=None`` then becomes that dtype's
``default_steps``); a declared norm is used as declared, except that polar-factor options
set explicitly on the rule replace those of a declared ``Spectral``/``SpectralConv`` (its
scale is kept).
``preconditioner="declared"`` takes ``Geometry.preconditioner``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..geometry import ROLES, Geometry
from ..blocks import block_shape, inner, rewrap
from ..polar_products import ProductChoices
from ..norms import RMS, ColNorm, Frobenius, Norm, RowNorm, Sign, Spectral, SpectralConv, _dtype_repr, spectral_scale
from ..polar import default_steps
from .hparams import Beta, NonNeg, NsDtype, NsMethod, NsProducts, Positive
from .momentum import MomentumKind


__all__ = ["UpdateRule", "Rule", "Recipe", "BaseNormName", "resolve_norm", "overrides_declared", "DTYPES"]

BaseNormName = Literal["declared", "frobenius", "sign", "spectral", "rms", "colnorm", "rownorm"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}



class UpdateRule(BaseModel):
    """One configuration of the pipeline (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    norm: BaseNormName = Field("declared", description="base norm")
    scale: str | float = Field("rms", description="spectral scale: rms|original|match_rms_adamw|none or a positive float")
    ns_method: NsMethod = Field("polar_express", description="polar-factor method (modnorm.orthogonalize)")
    ns_steps: int | None = Field(None, ge=1, description="Newton–Schulz steps (None: the method's default)")
    ns_coefficients: tuple[tuple[float, float, float], ...] | None = Field(None, description="explicit per-step (a, b, c)")
    ns_dtype: NsDtype = Field(
        None, description="Newton–Schulz compute dtype (auto: what the device multiplies fast, float64 kept; None: bf16 on CUDA, else the gradient's)")
    ns_eps: NonNeg = Field(1e-7, description="floor of the Frobenius normalizer before Newton–Schulz")
    ns_products: NsProducts = Field(
        "auto", description="how Newton–Schulz multiplies a batch (auto: measured per call shape, modnorm.polar_products); execution only")
    preconditioner: str = Field("none", description="registered preconditioner name, or 'declared'")
    preconditioner_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the preconditioner")
    momentum: MomentumKind = Field("none", description="momentum kind (momentum.py)")
    beta: Beta = Field(0.0, description="momentum coefficient β")
    dampening: NonNeg = Field(0.0, description="heavy-ball dampening τ (torch.optim.SGD)")
    mode: Literal["lmo", "sharp"] = Field("lmo", description="lmo: normalized steepest descent; sharp: dual(G)·lmo(G)")
    weight_decay: NonNeg = Field(0.0, description="weight decay λ")
    weight_decay_mode: Literal["decoupled", "coupled"] = Field("decoupled", description="decoupled: W ← W(1-ηλ); coupled: g ← g + λW (torch SGD/Adagrad L2)")
    lr_ratio: NonNeg = Field(1.0, description="this rule's lr = lr_ratio × the group's lr")
    lr_decay: NonNeg = Field(0.0, description="Adagrad's lr/(1 + (t-1)·lr_decay)")
    lr_adjust: str | float | None = Field(None, description="torch.optim.Muon's adjust_lr_fn: lr × spectral_scale(lr_adjust, d0, d1) of the first two dims")
    lr_fan_in: Positive | None = Field(None, description="output maps (a head, a table tied to it): lr × lr_fan_in / fan_in, fan_in = the product of the dims after the first; None: no factor")
    direction_beta: Beta = Field(0.0, description="Lion's β1 (momentum='lion'): direction = β1·buffer + (1-β1)·g")
    momentum_on: Literal["gradient", "update"] = Field("gradient", description="gradient: momentum before the preconditioner; update: on the preconditioned direction (RMSprop, LARS)")
    trust_ratio: Literal["none", "update", "triangle"] = Field("none", description="per-layer U ← c·min(‖W‖, clamp)/(den + ε)·U; den = ‖U‖ (update, LAMB) or ‖g‖ + λ‖W‖ (triangle, LARS)")
    trust_coefficient: NonNeg = Field(1.0, description="c of the trust ratio")
    trust_clamp: Positive | None = Field(None, description="upper clamp of ‖W‖ in the trust ratio (LAMB: 10; None: no clamp)")
    trust_eps: NonNeg = Field(0.0, description="ε of the trust ratio's denominator")
    sf_warmup_steps: int = Field(0, ge=0, description="schedule-free: linear lr warmup steps inside the iterate update")
    sf_r: NonNeg = Field(0.0, description="schedule-free: averaging weight (k+1)^r")
    sf_weight_lr_power: NonNeg = Field(2.0, description="schedule-free: averaging weight lr_max^p")

    @field_validator("lr_adjust")
    @classmethod
    def _lr_adjust(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            spectral_scale(v, 1, 1)
        return v

    def shape_factor(self, shape: tuple[int, ...]) -> float:
        """The lr multiplier of ``lr_adjust`` for a parameter of this shape (1 when unset or < 2-D)."""
        if self.lr_adjust is None or len(shape) < 2:
            return 1.0
        return spectral_scale(self.lr_adjust, shape[0], shape[1])

    def output_factor(self, geometry: Geometry, shape: tuple[int, ...]) -> float:
        """The lr multiplier of ``lr_fan_in``: ``lr_fan_in / fan_in`` for an output map of ≥ 2 dims
        (``Geometry.is_output``; fan_in = ∏ shape[1:], a table's width), else 1."""
        if self.lr_fan_in is None or len(shape) < 2 or not geometry.is_output:
            return 1.0
        return self.lr_fan_in / math.prod(shape[1:])

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: str | float) -> str | float:
        spectral_scale(v, 1, 1)
        return v

    def label(self) -> str:
        """Short description: base norm × preconditioner × momentum × mode."""
        return f"{self.norm} × {self.preconditioner} × {self.momentum} × {self.mode}"


class Rule(UpdateRule):
    """Deprecated name of ``UpdateRule`` (it warns when built); use ``UpdateRule``."""

    def __init__(self, **fields: Any) -> None:
        warnings.warn("modnorm.optim.Rule is deprecated: use modnorm.optim.UpdateRule (the same fields)", DeprecationWarning, stacklevel=2)
        super().__init__(**fields)


class Recipe(BaseModel):
    """Routes parameters to rules by role; roles not listed use ``default``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: UpdateRule
    roles: dict[str, UpdateRule] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: dict[str, UpdateRule]) -> dict[str, UpdateRule]:
        bad = sorted(set(v) - set(ROLES))
        if bad:
            raise ValueError(f"unknown roles {bad}; roles are {ROLES}")
        return v

    def rule_for(self, role: str) -> UpdateRule:
        return self.roles.get(role, self.default)


def _spectral_options(rule: UpdateRule, auto: torch.dtype | None = None, products: ProductChoices | None = None) -> dict[str, Any]:
    """Spectral's keyword arguments; ``auto`` is the concrete dtype for ``ns_dtype="auto"``, ``products``
    the table ``ns_products="auto"`` resolves with (None: the process-wide one).
    With a concrete dtype, unset steps become that dtype's ``default_steps`` (shown by repr)."""
    dtype: torch.dtype | str | None = DTYPES.get(rule.ns_dtype) if rule.ns_dtype != "auto" else (auto or "auto")
    if rule.ns_dtype == "auto" and rule.ns_method == "svd":
        dtype = None  # LAPACK: the gradient's float32/float64, whatever the device multiplies fast
    steps = rule.ns_steps
    if steps is None and isinstance(dtype, torch.dtype) and rule.ns_method != "svd" and rule.ns_coefficients is None:
        steps = default_steps(rule.ns_method, dtype)
    form = (products or "auto") if rule.ns_products == "auto" else rule.ns_products
    return {"scale": rule.scale, "method": rule.ns_method, "steps": steps, "dtype": dtype, "eps": rule.ns_eps, "products": form}


class _CoefficientSpectral(Spectral):
    """Spectral norm whose LMO runs Newton–Schulz with explicit coefficients (torch.optim.Muon's)."""

    def __init__(self, coefficients: tuple[tuple[float, float, float], ...], **options: Any) -> None:
        super().__init__(**options)
        self.coefficients = tuple(tuple(float(x) for x in abc) for abc in coefficients)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Spectral(scale={self.scale!r}, coefficients={self.coefficients}, steps={self.steps}{_dtype_repr(self.dtype, self.products)})"


class _CoefficientSpectralConv(SpectralConv):
    """SpectralConv whose per-position LMO is a ``_CoefficientSpectral`` (repr shows the coefficients)."""

    def __repr__(self) -> str:
        return f"SpectralConv(kernel_dims={self.kernel_dims}{self._layout_repr()}, spectral={self.spectral!r})"


def _spectral(rule: UpdateRule, auto: torch.dtype | None = None, products: ProductChoices | None = None) -> Spectral:
    opts = _spectral_options(rule, auto, products)
    if rule.ns_coefficients is not None:
        return _CoefficientSpectral(rule.ns_coefficients, **opts)
    return Spectral(**opts)


_POLAR_FIELDS = ("ns_method", "ns_steps", "ns_dtype", "ns_eps", "ns_coefficients", "ns_products")


def _with_rule_polar(norm: Norm, rule: UpdateRule, auto: torch.dtype | None, products: ProductChoices | None) -> Norm:
    """A declared Spectral/SpectralConv rebuilt with the polar-factor options the rule sets
    explicitly (its declared scale and conv layout kept); any other norm unchanged."""
    if not _sets_polar_options(rule):
        return norm
    if type(norm) is Spectral:
        return _spectral(rule.model_copy(update={"scale": norm.scale}), auto, products)
    if type(norm) is SpectralConv:
        return _spectral_conv(rule.model_copy(update={"scale": norm.spectral.scale}), norm.kernel_dims, auto, norm.layout, products)
    return norm


def _spectral_conv(rule: UpdateRule, kernel_dims: int, auto: torch.dtype | None, layout: str = "positions",
                   products: ProductChoices | None = None) -> SpectralConv:
    conv = _CoefficientSpectralConv(kernel_dims=kernel_dims, layout=layout, **_spectral_options(rule, auto, products))
    conv.spectral = _spectral(rule, auto, products)  # per kernel position (or of the flattening): the same spectral LMO
    return conv


def _sets_polar_options(rule: UpdateRule) -> bool:
    return any(f in rule.model_fields_set for f in _POLAR_FIELDS)


_DEFAULT_BASES: dict[str, tuple[type, ...]] = {
    "hidden": (Spectral,), "conv": (SpectralConv,), "head": (RowNorm,), "embedding": (ColNorm,), "vector": (RMS,),
}


def declares_default(geometry: Geometry) -> bool:
    """Whether the geometry's base norm (inside its block wrappers) is its role's default family."""
    return isinstance(inner(geometry.norm), _DEFAULT_BASES[geometry.role])


def resolve_norm(rule: UpdateRule, geometry: Geometry, shape: tuple[int, ...], name: str, ns_dtype: torch.dtype | None = None,
                 products: ProductChoices | None = None) -> Norm:
    """The base norm ``rule`` gives a parameter of (internal) ``shape`` with ``geometry``.

    Matrix norms ("spectral", "colnorm", "rownorm") act on the blocks the declared norm
    names (``Stacked``/``Transposed``: fused gates, groups, (in, out) layouts), so a
    preset's spectral step keeps the declared geometry. A "spectral" rule meeting a
    declared norm of another family than its role's default uses the declared norm (the
    user chose it). Raises a ValueError naming the parameter when the rule's norm cannot
    act on its shape. ``ns_dtype``: the concrete Newton–Schulz dtype that ``rule.ns_dtype ==
    "auto"`` stands for (None: left to ``orthogonalize`` at each call); ``products``: the table
    ``rule.ns_products == "auto"`` resolves with (the optimizer's; None: the process-wide one).
    """
    nd = len(shape)
    where = f"parameter {name!r} of shape {shape}"
    declared = geometry.norm
    if rule.norm == "declared" or (rule.norm == "spectral" and not declares_default(geometry)):
        if declared.ndim > nd:
            raise ValueError(f"{where}: its declared norm {declared!r} acts on {declared.ndim} dims; declare a norm for {nd}-D tensors")
        return rewrap(declared, _with_rule_polar(inner(declared), rule, ns_dtype, products))
    if rule.norm == "frobenius":
        return Frobenius(ndim=nd)
    if rule.norm == "sign":
        return Sign(ndim=nd)
    if rule.norm == "rms":
        return RMS(ndim=nd)
    block = block_shape(declared, shape) if declared.ndim <= nd else shape
    bd = len(block)
    if rule.norm == "spectral":
        if bd == 2:
            return rewrap(declared, _spectral(rule, ns_dtype, products))
        if 3 <= bd <= 5:
            return rewrap(declared, _spectral_conv(rule, bd - 2, ns_dtype, getattr(inner(declared), "layout", "positions"), products))
        raise ValueError(f"{where}: the spectral norm needs a matrix or a conv kernel (2-5 dims); route this role to another rule")
    if rule.norm in ("colnorm", "rownorm"):
        if bd != 2:
            raise ValueError(f"{where}: {rule.norm} is for matrices; route this role to another rule")
        layout = "embedding" if geometry.role == "embedding" else "linear"
        return rewrap(declared, ColNorm(layout=layout) if rule.norm == "colnorm" else RowNorm(layout=layout))
    raise ValueError(f"unknown base norm {rule.norm!r}")  # unreachable: pydantic checks the literal


def overrides_declared(geometry: Geometry, norm: Norm) -> bool:
    """Whether ``norm`` (what a rule resolved) replaces a non-default declared norm by another family."""
    return not declares_default(geometry) and type(inner(norm)) is not type(inner(geometry.norm))


def infer_geometry(shape: tuple[int, ...]) -> Geometry:
    """Geometry from tensor rank: 2-D hidden Spectral, 3-5-D SpectralConv, 0/1-D RMS vector, else RMS over all dims."""
    nd = len(shape)
    if nd == 2:
        return Geometry(Spectral(), role="hidden")
    if 3 <= nd <= 5:
        return Geometry(SpectralConv(kernel_dims=nd - 2), role="conv")
    return Geometry(RMS(ndim=max(nd, 1)), role="vector")


def norm_key(norm: Norm) -> object:
    """Batching key: norms of the same type and repr are treated as equal (else by identity)."""
    if type(norm).__repr__ is not Norm.__repr__:
        return (type(norm), repr(norm))
    return id(norm)

