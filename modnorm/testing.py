"""Validators for norms: the laws every ``Norm`` must satisfy, and ``check_norm`` to run them.

For a norm with ``ndim`` trailing parameter dims and a gradient G (any batch shape):

- ``shapes``:          value/dual have G's batch shape, lmo/sharp have G's shape
- ``dual_attained``:   ⟨G, lmo(G)⟩ = dual(G)
- ``lmo_feasible``:    value(lmo(G)) ≤ 1
- ``lmo_optimal``:     ⟨G, T⟩ ≤ dual(G) for feasible T = t / value(t) (t: G, sign(G),
                       random directions, perturbations of lmo(G), and any given)
- ``scale_invariant``: lmo(cG) = lmo(G) for c > 0
- ``sharp``:           sharp(G) = dual(G) · lmo(G)
- ``batched``:         lmo of a stacked batch = the stack of the lmos
- ``zero``:            G = 0 gives dual 0 and a finite zero lmo and sharp
- ``nonfinite``:       a NaN or ±inf entry in G gives non-finite dual, lmo and sharp

Comparisons are relative: a law ``x ≤ y`` holds if ``x ≤ y + rtol·scale + atol`` where
``scale`` bounds the rounding error of the inner products (Σ|G|·|T| and |dual|).

``check_laws(norm, G)`` checks them for one tensor (tests use it with their own inputs);
``check_norm(norm, shapes)`` draws gradients with hypothesis (installed separately) and
raises ``NormLawError`` (an ``AssertionError``) naming the first law violated with a
counterexample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .norms import Norm

__all__ = ["LAWS", "NormLawError", "inner", "check_laws", "random_gradient", "STRUCTURES", "check_norm"]

LAWS: tuple[str, ...] = (
    "shapes",
    "dual_attained",
    "lmo_feasible",
    "lmo_optimal",
    "scale_invariant",
    "sharp",
    "batched",
    "zero",
    "nonfinite",
)
STRUCTURES: tuple[str, ...] = ("dense", "sparse", "low_rank", "zero_slice", "heavy_tailed")


class NormLawError(AssertionError):
    """A norm broke one of ``LAWS``; ``law`` names it, the message holds the counterexample."""

    def __init__(self, law: str, message: str) -> None:
        super().__init__(f"law {law!r} violated: {message}")
        self.law = law


def inner(G: Tensor, T: Tensor, ndim: int) -> Tensor:
    """⟨G, T⟩ summed over the last ``ndim`` dims (batch shape result)."""
    return (G * T).sum(dim=tuple(range(-ndim, 0)))


def _fmt(X: Tensor, limit: int = 24) -> str:
    flat = X.detach().flatten()
    body = ", ".join(f"{v:.6g}" for v in flat[:limit].tolist())
    more = f", … ({flat.numel()} entries)" if flat.numel() > limit else ""
    return f"shape {tuple(X.shape)} [{body}{more}]"


def _first_bad(ok: Tensor) -> int | None:
    bad = (~ok).flatten().nonzero()
    return None if bad.numel() == 0 else int(bad[0])


def _batch_item(X: Tensor, flat_index: int, batch_shape: torch.Size) -> Tensor:
    return X.reshape(-1, *X.shape[len(batch_shape) :])[flat_index]


def _has_nonfinite(x: Tensor, ndim: int) -> Tensor:
    """Per batch element: does x (``ndim`` trailing dims; 0 for per-element scalars) hold a non-finite entry?"""
    bad = ~torch.isfinite(x)
    return bad.flatten(start_dim=x.ndim - ndim).any(dim=-1) if ndim else bad


def _per_item_max(x: Tensor, batch_ndim: int) -> Tensor:
    return x.flatten(start_dim=batch_ndim).amax(dim=-1)


def check_laws(
    norm: Norm,
    G: Tensor,
    *,
    feasible: Sequence[Tensor] = (),
    scales: Sequence[float] = (2.0**-10, 2.0**7),
    rtol: float = 1e-6,
    atol: float = 1e-12,
    laws: Sequence[str] = LAWS,
    context: str = "",
) -> None:
    """Check ``laws`` for ``norm`` at gradient ``G`` (finite, batched as the norm expects).

    ``feasible``: extra tensors t of G's shape; each T = t / value(t) must satisfy
    ⟨G, T⟩ ≤ dual(G). Random directions and perturbations of lmo(G) are always added.
    ``scales``: the c > 0 of ``scale_invariant``; powers of two by default, which scale
    exactly in floating point, so a numerical-rank decision (SVD) cannot flip by rounding.
    Raises ``NormLawError`` naming the first law violated.
    """
    unknown = set(laws) - set(LAWS)
    if unknown:
        raise ValueError(f"check_laws: unknown laws {sorted(unknown)}; choose from {LAWS}")
    nd = norm.ndim
    batch = G.shape[: G.ndim - nd]
    where = f" ({context})" if context else ""

    def fail(law: str, msg: str, item: int | None = None) -> None:
        g = G if item is None else _batch_item(G, item, batch)
        at = "" if item is None else f" at batch index {item}"
        raise NormLawError(law, f"{norm!r} on G of shape {tuple(G.shape)}{where}{at}: {msg}; G = {_fmt(g)}")

    def tol(*terms: Tensor) -> Tensor:
        return rtol * sum(t.abs() for t in terms) + atol

    dual = norm.dual(G)
    L = norm.lmo(G)
    S = norm.sharp(G)
    if "shapes" in laws:
        for name, x, want in (("dual", dual, batch), ("lmo", L, G.shape), ("sharp", S, G.shape)):
            if tuple(x.shape) != tuple(want):
                fail("shapes", f"{name} has shape {tuple(x.shape)}, expected {tuple(want)}")
        v = norm.value(G)
        if tuple(v.shape) != tuple(batch):
            fail("shapes", f"value has shape {tuple(v.shape)}, expected {tuple(batch)}")
    absGL = inner(G.abs(), L.abs(), nd)
    if "dual_attained" in laws:
        got = inner(G, L, nd)
        i = _first_bad((got - dual).abs() <= tol(dual, absGL))
        if i is not None:
            fail("dual_attained", f"⟨G, lmo(G)⟩ = {got.flatten()[i]:.10g} but dual(G) = {dual.flatten()[i]:.10g}", i)
    if "lmo_feasible" in laws:
        v = norm.value(L)
        i = _first_bad(v <= 1 + rtol + atol)
        if i is not None:
            fail("lmo_feasible", f"value(lmo(G)) = {v.flatten()[i]:.10g} > 1; lmo(G) = {_fmt(_batch_item(L, i, batch))}", i)
    if "lmo_optimal" in laws:
        gen = torch.Generator().manual_seed(int(G.numel()))
        noise = torch.randn(4, *G.shape, generator=gen, dtype=torch.float64).to(G)
        # G itself and sign(G) (‖G‖_F² ≤ ‖G‖·‖G‖* catches many wrong pairs), random
        # directions, and small perturbations of lmo(G).
        candidates = [*feasible, G, torch.sign(G), *noise, *(L + 0.1 * L.abs().amax() * n for n in noise[:2])]
        for t in candidates:
            T = t / norm.value(t).reshape(*batch, *([1] * nd))
            got = inner(G, T, nd)
            i = _first_bad((got <= dual + tol(dual, inner(G.abs(), T.abs(), nd))) | ~torch.isfinite(got))
            if i is not None:
                fail(
                    "lmo_optimal",
                    f"a feasible T beats the LMO: ⟨G, T⟩ = {got.flatten()[i]:.10g} > dual(G) = {dual.flatten()[i]:.10g}; "
                    f"T = {_fmt(_batch_item(T, i, batch))}",
                    i,
                )
    if "scale_invariant" in laws:
        for c in scales:
            Lc = norm.lmo(G * c)
            err = _per_item_max((Lc - L).abs(), len(batch))
            i = _first_bad(err <= rtol * _per_item_max(L.abs(), len(batch)) + atol)
            if i is not None:
                fail("scale_invariant", f"lmo({c:g}·G) differs from lmo(G) by {err.flatten()[i]:.3g}", i)
    if "sharp" in laws:
        want = dual.reshape(*batch, *([1] * nd)) * L
        i = _first_bad(((S - want).abs() <= tol(want)).flatten(start_dim=len(batch)).all(dim=-1))
        if i is not None:
            fail("sharp", f"sharp(G) ≠ dual(G)·lmo(G): sharp = {_fmt(_batch_item(S, i, batch))}, dual·lmo = {_fmt(_batch_item(want, i, batch))}", i)
    if "batched" in laws:
        stacked = norm.lmo(torch.stack([G, -2.0 * G]))
        want = torch.stack([L, norm.lmo(-2.0 * G)])
        if tuple(stacked.shape) != tuple(want.shape) or not bool(((stacked - want).abs() <= tol(want)).all()):
            fail("batched", "lmo of the stacked batch [G, -2G] differs from the stacked lmos")
    if "zero" in laws:
        Z = torch.zeros_like(G)
        for name, x in (("dual", norm.dual(Z)), ("lmo", norm.lmo(Z)), ("sharp", norm.sharp(Z))):
            if not bool(torch.isfinite(x).all()) or bool((x != 0).any()):
                fail("zero", f"{name}(0) = {_fmt(x)}, expected finite zeros")
    if "nonfinite" in laws:
        for bad in (float("nan"), float("inf"), -float("inf")):
            Gb = G.reshape(-1, *G.shape[len(batch) :]).clone()
            Gb[(slice(None),) + (0,) * nd] = bad  # first entry of every batch element
            Gb = Gb.reshape(G.shape)
            for name, fn, k in (("dual", norm.dual, 0), ("lmo", norm.lmo, nd), ("sharp", norm.sharp, nd)):
                try:
                    x = fn(Gb)
                except Exception as e:  # noqa: BLE001 - any exception is the violation reported
                    fail("nonfinite", f"{name} of G with an entry {bad} raised {type(e).__name__}: {e} (expected non-finite values)")
                i = _first_bad(_has_nonfinite(x, k))
                if i is not None:
                    fail("nonfinite", f"G with an entry {bad} gives a finite {name}", i)


def random_gradient(shape: Sequence[int], ndim: int, structure: str, log10_scale: float, seed: int, dtype: torch.dtype) -> Tensor:
    """A test gradient: Gaussian entries shaped by ``structure`` (one of ``STRUCTURES``), times 10**log10_scale."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(*shape, generator=g, dtype=torch.float64)
    if structure == "sparse":
        G = G * (torch.rand(*shape, generator=g, dtype=torch.float64) < 0.3)
    elif structure == "low_rank" and len(shape) >= 2:
        a = torch.randn(*shape[:-1], 1, generator=g, dtype=torch.float64)
        b = torch.randn(*shape[:-2], 1, shape[-1], generator=g, dtype=torch.float64)
        G = a @ b
    elif structure == "zero_slice" and len(shape) >= 1:
        G[..., 0] = 0.0  # a zero column (or zero last entry) inside every parameter
    elif structure == "heavy_tailed":
        G = G ** 3
    elif structure not in STRUCTURES:
        raise ValueError(f"random_gradient: structure must be one of {STRUCTURES}, got {structure!r}")
    return (G * 10.0**log10_scale).to(dtype)


def check_norm(
    norm: Norm,
    shapes: Sequence[Sequence[int]],
    dtype: torch.dtype = torch.float64,
    max_examples: int = 25,
    rtol: float = 1e-6,
    atol: float = 1e-12,
    laws: Sequence[str] = LAWS,
    seed: int | None = 0,
    make_norm: Callable[[tuple[int, ...]], Norm] | None = None,
    shrink: bool = False,
) -> None:
    """Run ``LAWS`` on ``norm`` over hypothesis-drawn gradients of the given ``shapes``.

    Each shape is a full tensor shape (batch dims first, then the norm's ``ndim`` dims).
    Gradients vary in structure (``STRUCTURES``: dense, sparse, rank one, with a zero
    slice, heavy-tailed) and in scale (1e-3 to 1e3). ``make_norm(shape)``, if given,
    builds the norm per shape (for norms tied to a shape, like a ``DNorm``'s D).
    Loosen ``rtol`` for approximate LMOs (Newton–Schulz ``Spectral``). ``seed=None`` draws
    fresh examples each run (otherwise runs are deterministic); ``shrink=True`` lets
    hypothesis minimize a failing example (slower).

    Raises ``NormLawError`` (an ``AssertionError``) naming the first violated law, with the
    shape, seed and offending values; ``ImportError`` if hypothesis is not installed.
    """
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("modnorm.testing.check_norm needs hypothesis: pip install hypothesis") from e
    if not shapes:
        raise ValueError("check_norm: shapes must list at least one tensor shape, e.g. shapes=[(4, 3)]")
    shapes = [tuple(int(d) for d in s) for s in shapes]
    # The law's message already holds the counterexample; shrinking a seed buys little.
    phases = [p for p in Phase if p.name != "shrink" or shrink]
    for s in shapes:
        if len(s) < norm.ndim:
            raise ValueError(f"check_norm: shape {s} has fewer than {norm.ndim} dims, the number {norm!r} acts on")

    @settings(max_examples=max_examples, deadline=None, derandomize=seed is not None, database=None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
              phases=phases)
    @given(
        shape=st.sampled_from(shapes),
        structure=st.sampled_from(STRUCTURES),
        log10_scale=st.floats(-3.0, 3.0),
        seed_=st.integers(0, 2**31 - 1),
    )
    def run(shape: tuple[int, ...], structure: str, log10_scale: float, seed_: int) -> None:
        G = random_gradient(shape, norm.ndim, structure, log10_scale, seed_, dtype)
        n = make_norm(shape) if make_norm is not None else norm
        context = f"structure={structure!r}, log10_scale={log10_scale:.3g}, seed={seed_}, dtype={dtype}"
        check_laws(n, G, rtol=rtol, atol=atol, laws=laws, context=context)

    run()
