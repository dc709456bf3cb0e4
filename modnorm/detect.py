"""Recognizing layers by their structure; default geometries of raw parameters; output heads.

Layers of third-party libraries are recognized by what they hold, not by class name:

- **Conv1D-like** (transformers' GPT-2 ``Conv1D``): a leaf module with an integer ``nf``
  and a 2-D ``weight`` of shape (d_in, nf), computing y = x W + b — the nn.Linear map of
  the transposed weight. Weight ``Transposed(Spectral())`` (head: ``Transposed(RowNorm())``),
  bias ``RMS()``: the update is exactly the transpose of an nn.Linear's.
- **gain modules**: a leaf module whose parameters are all vectors (LlamaRMSNorm,
  T5LayerNorm, any LayerNorm/RMSNorm/ScaleNorm variant, a layer-scale module): every
  parameter ``RMS()``, role "vector", mass 1, sensitivity 1 (as nn.LayerNorm).

A **raw parameter** — registered directly on a module no rule covers (ViT's ``cls_token``
and ``position_embeddings``, ConvNeXt's ``layer_scale_parameter``, a state-space model's
``A_log`` and ``D``) — gets a default geometry from its use and rank. A 2-D parameter
that the traced forward uses only as a linear map is a hidden matrix: ``Spectral()`` when
it is ``F.linear``'s weight or the left factor ``W @ x`` (the (d_out, d_in) layout),
``Transposed(Spectral())`` for ``x @ W`` (transposes on the way are followed). Otherwise:

- at most one dim larger than 1 (layer scales, class tokens, per-channel vectors,
  scalars): ``RMS(ndim=p.ndim)`` over the whole tensor, role "vector";
- two or more dims larger than 1 (position tables (N, D) or (1, N, D), state-space
  tables (channels, state)): ``ColNorm(layout="embedding")`` on the last two dims (each
  row a vector in RMS), role "embedding" — routed like an embedding table (to AdamW in
  the Muon-type presets), never orthogonalized as a hidden matrix, since nothing says it
  is a linear map. A raw matrix that *is* a linear map (``x @ W``) should be declared
  (``rules.override(name, role="hidden", norm=Spectral())``) when its module cannot be traced.

A parameter of a leaf module with two or more dims larger than 1 and no rule is an
unknown weight layer: it gets no default (``GeometryError``).

**Output head**: the module a model returns from ``get_output_embeddings()``
(transformers' language-model heads, tied decoders); else the only terminal weight layer
of the composition; else (when the composition shows no single one, e.g. a model that
could not be traced) the last weight-holding leaf module whose path has a segment naming
a head (``HEAD_NAMES``: ``lm_head``, ``classifier``, ``head``, ``score``, ``fc``, …).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .geometry import Geometry
from .layers import defaults as D
from .blocks import Transposed
from .norms import RMS, ColNorm, RowNorm, Spectral

__all__ = [
    "is_conv1d_like",
    "conv1d_as_linear",
    "conv1d_geometries",
    "conv1d_head",
    "is_gain_module",
    "gain_geometries",
    "raw_parameter_geometry",
    "linear_layout",
    "declared_head_path",
    "named_head_path",
    "HEAD_NAMES",
]

HEAD_NAMES: tuple[str, ...] = ("lm_head", "classifier", "head", "heads", "score", "fc", "logits", "predictions", "output_layer")


def _leaf(m: nn.Module) -> bool:
    return not any(True for _ in m.children())


def is_conv1d_like(m: nn.Module) -> bool:
    """A leaf with an int ``nf`` and a (d_in, nf) weight (transformers' Conv1D layout)."""
    w, nf = getattr(m, "weight", None), getattr(m, "nf", None)
    return (
        _leaf(m) and isinstance(nf, int) and isinstance(w, Tensor) and w.ndim == 2 and w.shape[1] == nf
        and (getattr(m, "bias", None) is None or tuple(m.bias.shape) == (nf,))
    )


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """``model`` with every Conv1D-like layer replaced, in place, by the equivalent ``nn.Linear``
    (weight transposed to (d_out, d_in), same bias, dtype and device): the same function with
    torch's own layer, e.g. to compare an optimizer's treatment of the two layouts."""
    for path, m in list(model.named_modules()):
        if path and is_conv1d_like(m):
            lin = nn.Linear(m.weight.shape[0], m.nf, bias=m.bias is not None, dtype=m.weight.dtype, device=m.weight.device)
            with torch.no_grad():
                lin.weight.copy_(m.weight.T)
                if m.bias is not None:
                    lin.bias.copy_(m.bias)
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent), leaf, lin)
    return model


def conv1d_geometries(m: nn.Module) -> dict[str, Geometry]:
    out = {"weight": D.hidden(Transposed(Spectral()))}
    if getattr(m, "bias", None) is not None:
        out["bias"] = D.vector()
    return out


def conv1d_head(m: nn.Module) -> dict[str, Geometry]:
    return {**conv1d_geometries(m), "weight": D.head(Transposed(RowNorm()))}


def is_gain_module(m: nn.Module) -> bool:
    """A leaf whose parameters are all vectors (normalization gains/shifts, layer scales)."""
    params = list(m.parameters(recurse=False))
    return _leaf(m) and bool(params) and all(p.ndim == 1 for p in params)


def gain_geometries(m: nn.Module) -> dict[str, Geometry]:
    return {name: D.vector() for name, _ in m.named_parameters(recurse=False)}


_MATMUL = (operator.matmul, torch.matmul, torch.mm, "matmul", "mm")
_LINEAR = (F.linear, torch._C._nn.linear)


def _flips(n: fx.Node) -> bool:
    """Whether ``n`` transposes a matrix (``W.T``, ``W.t()``, ``W.mT``, ``W.transpose(0, 1)``, ``torch.t(W)``)."""
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in ("T", "mT"):
        return True
    if n.target in ("t", torch.t):
        return True
    return n.target in ("transpose", torch.transpose) and sorted(int(a) % 2 for a in n.args[1:3]) == [0, 1]


def linear_layout(node: fx.Node) -> str | None:
    """"out_in" or "in_out" when every use of the traced value ``node`` is as a linear map
    (``F.linear``'s weight or ``W @ x``: "out_in"; ``x @ W``: "in_out"), else None."""
    layouts: set[str] = set()
    stack = [(node, False)]
    while stack:
        n, flipped = stack.pop()
        for u in n.users:
            if _flips(u) and u.args[0] is n:
                stack.append((u, not flipped))
                continue
            if u.target in _LINEAR and len(u.args) > 1 and u.args[1] is n:
                layout = "out_in"
            elif u.target in _MATMUL and len(u.args) == 2:
                layout = "in_out" if u.args[1] is n else "out_in"
            else:
                return None
            layouts.add(layout if not flipped else ("in_out" if layout == "out_in" else "out_in"))
    return layouts.pop() if len(layouts) == 1 else None


def raw_parameter_geometry(param: Tensor, owner: nn.Module, layout: str | None = None) -> Geometry | None:
    """The default for a parameter no rule declares (see the module docstring), or None.
    ``layout`` is its use as a linear map (``linear_layout``) when known."""
    if param.ndim == 2 and layout in ("out_in", "in_out"):
        return D.hidden(Spectral() if layout == "out_in" else Transposed(Spectral()))
    big = sum(1 for s in param.shape if s > 1)
    if big <= 1:
        return D.vector(RMS(ndim=max(param.ndim, 1)))
    if _leaf(owner):
        return None  # a weight of an unknown layer type: its layout is unknown
    return D.embedding(ColNorm(layout="embedding"))


def named_head_path(model: nn.Module) -> str | None:
    """The last weight-holding leaf module, when a segment of its path is in ``HEAD_NAMES``."""
    last = None
    for path, m in model.named_modules():
        if path and _leaf(m) and any(p.ndim >= 2 for p in m.parameters(recurse=False)):
            last = path
    if last is None:
        return None
    segments = last.split(".")
    return last if any(s in HEAD_NAMES for s in segments) else None


def declared_head_path(model: nn.Module) -> str | None:
    """Path of the module ``model.get_output_embeddings()`` returns (transformers' API), or None."""
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a model whose method needs more set-up has no usable answer
            head = None
        if isinstance(head, nn.Module):
            for path, m in model.named_modules():
                if m is head:
                    return path
    return None

