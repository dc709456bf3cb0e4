"""Hessian-diagonal preconditioner from Hutchinson's estimator (Sophia-style), for any base norm.

Hutchinson: for Rademacher z (entries ±1), E[z ⊙ (H z)] = diag(H), because
E[z_i z_j] = δ_ij. The Hessian-vector product H z is computed forward-over-reverse with
``torch.func.jvp(torch.func.grad(loss_fn), (params,), (z,))`` — no second backward and
no ``create_graph`` in the training loop. Several samples are batched with ``torch.func.vmap``.

``HessianDiagonal`` keeps h ← β2 h + (1-β2) ĥ_t, refreshed every ``every`` steps
(steps 1, 1+k, …), bias-corrected by the number of refreshes, and returns
``DNorm(base, D)`` with D = max(|h|, ε)^p. With the Frobenius base and p = 1/2 the sharp
is G / max(|h|, ε): diagonal Newton (Sophia without its clipping); with the spectral
base it gives polar(G ⊘ D) ⊘ D, a Hessian-scaled Muon. Under a scale reparametrization
W = A ⊙ W' the Hessian diagonal becomes A² ⊙ h, so D = h^{1/2} transforms as D ↦ A ⊙ D
(Theorem 2) — in expectation over z, since one sample of z ⊙ Hz does not.

The estimate needs Hessian-vector products: pass ``loss_fn(params)`` (a dict name →
tensor, e.g. built with ``functional_loss``) with the named parameters — one estimate for
all of them at the first bucket of a due step — or ``from_graph=True`` to use the
optimizer's ``StepContext.hvp`` after ``loss.backward(create_graph=True)``; without
either, feed estimates yourself with ``absorb``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from ..norms import Norm
from ..preconditioned import DNorm
from .hparams import Beta, Frequency, Positive, require
from .preconditioner import Preconditioner, State, StepContext, check_eps

__all__ = ["hutchinson_diagonal", "functional_loss", "HessianDiagonal"]

LossFn = Callable[[dict[str, Tensor]], Tensor]


def functional_loss(model: nn.Module, loss_of_output: Callable[[Tensor], Tensor], *inputs: Tensor) -> LossFn:
    """params ↦ loss_of_output(model(*inputs) evaluated with ``params``) via ``torch.func.functional_call``."""
    return lambda params: loss_of_output(functional_call(model, params, inputs))


def rademacher_like(params: Mapping[str, Tensor], samples: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Independent ±1 entries, shape (samples, *p.shape) per parameter."""
    out = {}
    for name, p in params.items():
        bits = torch.randint(0, 2, (samples, *p.shape), generator=generator, dtype=torch.int8)
        out[name] = (bits.to(p.dtype) * 2 - 1).to(p.device)
    return out


def hutchinson_diagonal(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Mean over ``samples`` Rademacher z of z ⊙ (H z), H the Hessian of ``loss_fn`` at ``params``.

    ``loss_fn`` maps a dict of tensors (same keys as ``params``) to a scalar. Exact for a
    diagonal H with one sample; unbiased in general, with variance Σ_{j≠i} H_ij² per entry.
    """
    if not callable(loss_fn):
        raise TypeError(f"hutchinson_diagonal: loss_fn must be callable params -> scalar loss, got {type(loss_fn).__name__}")
    require("hutchinson_diagonal", "samples", samples, Frequency)
    primals = {k: v.detach() for k, v in params.items()}
    Z = rademacher_like(primals, samples, generator)

    def z_hz(z: dict[str, Tensor]) -> dict[str, Tensor]:
        _, hz = jvp(grad(loss_fn), (primals,), (z,))
        return {k: z[k] * hz[k] for k in z}

    est = vmap(z_hz)(Z) if samples > 1 else z_hz({k: v[0] for k, v in Z.items()})
    return {k: v.mean(0) if samples > 1 else v for k, v in est.items()}


class HessianDiagonal(Preconditioner):
    """D = max(|h|, ε)^p from an EMA h of Hutchinson estimates of the Hessian diagonal.

    Where the Hessian-vector products come from (one of):
    - ``loss_fn`` + ``params``: ``loss_fn(params_dict)`` is the loss on the current batch
      (read the batch from a holder your training loop updates); H z comes from
      ``torch.func`` at the first bucket of a due step, for all parameters at once.
    - ``from_graph=True``: the optimizer's ``StepContext.hvp`` (double backward through
      the gradients; the training step must call ``loss.backward(create_graph=True)``);
      z ⊙ H z is then estimated per bucket (unbiased: the diagonal of each block).
    - neither: call ``absorb(state, estimate)`` yourself.

    Args:
        beta2: EMA decay of h (bias-corrected by the number of refreshes).
        eps: floor of |h| (h can be negative or 0 away from a minimum).
        power: p; 1/2 makes the Frobenius sharp G/|h| and D scale-equivariant.
        every: refresh h every k steps (Sophia uses k = 10).
        samples: Rademacher vectors per refresh.
        seed: seed of the preconditioner's own generator (reproducible runs).
    Before the first estimate D = 1 (the base norm unchanged).
    """

    updates_in_place = False
    needs_hvp = True  # it reads the step context (params, Hessian-vector products): the bucket stays eager

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        params: Mapping[str, Tensor] | None = None,
        beta2: float = 0.99,
        eps: float = 1e-12,
        power: float = 0.5,
        every: int = 10,
        samples: int = 1,
        seed: int = 0,
        from_graph: bool = False,
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"HessianDiagonal: loss_fn must be callable params -> loss, got {type(loss_fn).__name__}")
        if loss_fn is not None and not isinstance(params, Mapping):
            raise ValueError("HessianDiagonal: with loss_fn, pass params= a dict name -> parameter, e.g. dict(model.named_parameters())")
        if loss_fn is not None and from_graph:
            raise ValueError("HessianDiagonal: pass either loss_fn (torch.func) or from_graph=True (create_graph backward), not both")
        require("HessianDiagonal", "beta2", beta2, Beta)
        require("HessianDiagonal", "eps", eps, Positive)  # it floors |h|
        require("HessianDiagonal", "power", power, Positive)
        require("HessianDiagonal", "every", every, Frequency)
        require("HessianDiagonal", "samples", samples, Frequency)
        self.loss_fn, self.beta2, self.eps, self.power = loss_fn, float(beta2), float(eps), float(power)
        self.every, self.samples, self.from_graph = every, samples, bool(from_graph)
        self.params = dict(params) if params is not None else {}
        self._name_of = {id(p): n for n, p in self.params.items()}
        self.generator = torch.Generator().manual_seed(seed)
        self._cache: tuple[int, dict[str, Tensor]] | None = None

    def init_state(self, param: Tensor, state_dtype: torch.dtype) -> State:
        return {
            "h": torch.zeros(param.shape, dtype=state_dtype, device=param.device),
            "refreshes": torch.zeros((), dtype=torch.float64),
        }

    def check_state_dtype(self, state_dtype: torch.dtype) -> None:
        """ε floors |h| in the state dtype: D² = max(|h|, ε)^(2p) > 0."""
        check_eps("HessianDiagonal", self.eps, state_dtype, max(1.0, 2.0 * self.power))

    def absorb(self, state: State, estimate: Tensor) -> None:
        """h ← β2 h + (1-β2) · estimate (one refresh; new tensors are assigned, the old ones are not written)."""
        state["h"] = state["h"].lerp(estimate.reshape(state["h"].shape).to(state["h"].dtype), 1.0 - self.beta2)
        state["refreshes"] = state["refreshes"] + 1

    def estimates(self, step: int) -> dict[str, Tensor]:
        """Hutchinson estimates of all ``params`` at this step (computed once per step)."""
        if self.loss_fn is None:
            raise RuntimeError("HessianDiagonal.estimates needs loss_fn= and params=")
        if self._cache is None or self._cache[0] != step:
            self._cache = (step, hutchinson_diagonal(self.loss_fn, self.params, self.samples, self.generator))
        return self._cache[1]

    def update(self, state: State, grad: Tensor, step: int) -> None:
        if self.loss_fn is not None or self.from_graph:
            raise RuntimeError("HessianDiagonal needs the optimizer's StepContext: it is updated through update_many")

    def update_many(self, states: Sequence[State], grads: Sequence[Tensor], step: int, ctx: StepContext) -> None:
        if (step - 1) % self.every != 0:
            return
        if self.loss_fn is not None:
            est = self.estimates(step)
            for state, p, name in zip(states, ctx.params, ctx.names or [""] * len(states)):
                if id(p) not in self._name_of:
                    raise ValueError(
                        f"HessianDiagonal: parameter {name or tuple(p.shape)!r} is not among the params= given with "
                        "loss_fn; pass every parameter this preconditioner serves (dict(model.named_parameters()))"
                    )
                self.absorb(state, est[self._name_of[id(p)]])
        elif self.from_graph:
            totals = [torch.zeros_like(s["h"]) for s in states]
            for _ in range(self.samples):
                zs = list(rademacher_like({str(i): s["h"] for i, s in enumerate(states)}, 1, self.generator).values())
                zs = [z[0] for z in zs]
                for total, z, hz in zip(totals, zs, ctx.hvp(zs)):
                    total.add_(z * hz)
            for state, total in zip(states, totals):
                self.absorb(state, total / self.samples)

    def norm(self, base: Norm, states: Sequence[State], step: int) -> Norm:
        h = torch.stack([s["h"] for s in states])
        n = torch.stack([s["refreshes"] for s in states]).to(h.dtype).reshape(-1, *([1] * (h.ndim - 1)))
        h_hat = h / torch.where(n > 0, 1.0 - self.beta2**n, torch.ones_like(n))
        D = h_hat.abs().clamp_min(self.eps).pow(self.power)
        return DNorm(base, torch.where(n > 0, D, torch.ones_like(D)))

    def __repr__(self) -> str:
        return f"HessianDiagonal(beta2={self.beta2}, eps={self.eps}, power={self.power}, every={self.every}, samples={self.samples})"
