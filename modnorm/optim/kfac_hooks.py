"""Layer statistics for KFAC: what only a layer knows, its inputs and its output gradients.

``LayerStatistics.of(model)`` installs (once per model) a forward hook on every
``nn.Linear`` and ``nn.Conv2d`` (groups = 1, zero padding; modnorm's layers subclass these):

- forward (training mode, grad enabled): the layer's input rows a — a Linear's input
  flattened to (n, d_in), a Conv2d's unfolded patches (n = batch × positions,
  C·kh·kw) as in KFC — and a hook on the output tensor;
- backward through that output: the output-gradient rows g (n, d_out).

Rows of one forward are (a, [(g, s), …]), one g per recorded backward pass, with the
scale s that makes ``s · gᵀg`` the Fisher factor's share: with ``samples`` = rows for a
Linear (every row a sample) and = batch for a Conv2d (KFC),

- the training backward (``fisher="empirical"``, a loss that is a mean over samples, so
  per-sample gradients are samples · g):  s = samples;
- ``curvature_backward`` passes (``fisher="ggn"`` or ``"mc"``, per-sample vectors):  s = 1/samples.

The KFAC preconditioners (``kfac.py``) read and clear these rows at each optimizer step.
``remove()`` takes the hooks off again.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerStatistics", "curvature_backward", "remove_kfac_hooks", "SUPPORTED"]

SUPPORTED = (nn.Linear, nn.Conv2d)
_REGISTRY: weakref.WeakKeyDictionary[nn.Module, LayerStatistics] = weakref.WeakKeyDictionary()


@dataclass
class Rows:
    """One forward pass of one layer: input rows, and output-gradient rows with their scales."""

    a: Tensor
    samples: int
    grads: list[tuple[Tensor, float, bool]] = field(default_factory=list)  # (g, s, from curvature_backward)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a layer's weight cannot take KFAC statistics (None when it can)."""
    if not isinstance(module, SUPPORTED):
        return f"{type(module).__name__} is not an nn.Linear or nn.Conv2d"
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return "KFAC supports Conv2d with groups=1, padding_mode='zeros' and numeric padding"
    return None


def _input_rows(module: nn.Module, x: Tensor) -> tuple[Tensor, int]:
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1]), x.shape[0]
    rows = x.reshape(-1, x.shape[-1])
    return rows, rows.shape[0]


def _output_rows(module: nn.Module, g: Tensor) -> Tensor:
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


class LayerStatistics:
    """The hooks of one model and the rows they collected since the last ``take``."""

    def __init__(self, model: nn.Module) -> None:
        self.modules: dict[nn.Parameter, nn.Module] = {}
        self.pending: dict[nn.Module, list[Rows]] = {}
        self.curvature = False  # inside curvature_backward
        self._handles = []
        for module in model.modules():
            if isinstance(module, SUPPORTED) and unsupported_reason(module) is None:
                self.modules[module.weight] = module
                self._handles.append(module.register_forward_hook(self._forward))

    @classmethod
    def of(cls, model: nn.Module) -> LayerStatistics:
        """The statistics of ``model``, installing the hooks on first use."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"KFAC needs the model (an nn.Module) to hook its layers, got {type(model).__name__}")
        stats = _REGISTRY.get(model)
        if stats is None:
            stats = _REGISTRY[model] = cls(model)
        return stats

    def module_of(self, param: Tensor) -> nn.Module | None:
        """The layer whose weight shares ``param``'s storage (None if none)."""
        for w, m in self.modules.items():
            if w.data_ptr() == param.data_ptr() and w.shape == param.shape:
                return m
        return None

    def _forward(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (module.training and torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        a, samples = _input_rows(module, inputs[0].detach())
        rows = Rows(a, samples)
        self.pending.setdefault(module, []).append(rows)

        def on_grad(g: Tensor) -> None:
            scale = 1.0 / rows.samples if self.curvature else float(rows.samples)
            rows.grads.append((_output_rows(module, g.detach()), scale, self.curvature))

        output.register_hook(on_grad)

    def take(self, module: nn.Module) -> list[Rows]:
        """The rows collected for ``module`` since the last call (and forget them)."""
        return self.pending.pop(module, [])

    def remove(self) -> None:
        """Take the hooks off the model and drop pending rows."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.pending.clear()
        for model, stats in list(_REGISTRY.items()):
            if stats is self:
                del _REGISTRY[model]

    @contextmanager
    def _curvature(self) -> Iterator[None]:
        self.curvature = True
        try:
            yield
        finally:
            self.curvature = False


def remove_kfac_hooks(model: nn.Module) -> None:
    """Take KFAC's hooks off ``model`` (no-op when none are installed)."""
    stats = _REGISTRY.get(model)
    if stats is not None:
        stats.remove()


def _output_vectors(output: Tensor, loss: str, fisher: str, generator: torch.Generator | None) -> list[Tensor]:
    """Per-sample vectors v with E[v vᵀ] (mc) or Σ v vᵀ (ggn) = the loss's Hessian w.r.t. the output rows."""
    f = output.detach().reshape(-1, output.shape[-1])
    C = f.shape[1]
    if loss == "mse":  # ℓ = ½‖f − t‖²: H = I
        if fisher == "ggn":
            return [torch.zeros_like(f).index_fill_(1, torch.tensor([c], device=f.device), 1.0) for c in range(C)]
        return [torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)]
    p = torch.softmax(f, dim=1)  # ℓ = cross-entropy: H = diag(p) − ppᵀ = B Bᵀ, B[:, c] = √p_c (e_c − p)
    if fisher == "ggn":
        eye = torch.eye(C, dtype=f.dtype, device=f.device)
        return [p[:, c : c + 1].sqrt() * (eye[c] - p) for c in range(C)]
    y = torch.multinomial(p, 1, generator=generator).squeeze(1)
    return [p - F.one_hot(y, C).to(f.dtype)]


def curvature_backward(model: nn.Module, output: Tensor, loss: Literal["mse", "cross_entropy"],
                       fisher: Literal["ggn", "mc"] = "ggn", generator: torch.Generator | None = None) -> None:
    """Backward passes that record KFAC's output-gradient factor from the loss's Hessian.

    Call after the forward pass and before ``loss.backward()`` (the graph is retained).
    ``loss="mse"``: per-sample ℓ = ½‖f − t‖² summed over outputs; ``"cross_entropy"``: softmax
    cross-entropy of the logits ``output`` (last dimension = classes). ``fisher="ggn"``: the exact
    output Hessian (one pass per output dimension); ``"mc"``: one pass with a sampled target.
    Parameter gradients are not touched.
    """
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"curvature_backward: loss must be 'mse' or 'cross_entropy', got {loss!r}")
    if fisher not in ("ggn", "mc"):
        raise ValueError(f"curvature_backward: fisher must be 'ggn' or 'mc', got {fisher!r}")
    stats = LayerStatistics.of(model)
    weights = [w for w in stats.modules if w.requires_grad]
    with stats._curvature():
        for v in _output_vectors(output, loss, fisher, generator):
            torch.autograd.grad(output, weights, grad_outputs=v.reshape(output.shape).to(output.dtype),
                                retain_graph=True, allow_unused=True)
