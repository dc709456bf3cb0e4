"""Block-structured norms: where a parameter tensor keeps the linear maps its norm acts on.

Many layers store several linear maps in one tensor, or one map in another orientation:

- ``nn.MultiheadAttention``'s ``in_proj_weight`` (3E, E) holds the query, key and value
  projections; ``nn.LSTM``'s ``weight_ih`` (4H, d) holds four gate matrices;
- a grouped convolution (out, in/g, *k) holds g independent maps (out/g, in/g) per
  kernel position (a depthwise conv: out maps 1 → 1);
- transformers' ``Conv1D`` stores its weight (in, out), ``nn.ConvTranspose`` (in, out/g, *k).

Two wrappers express this around any base norm:

``Stacked(base, blocks)``: split the first of the base's dims into ``blocks`` equal
parts, W = [W_1; …; W_n];  ‖W‖ = max_b ‖W_b‖_base, dual(G) = Σ_b ‖G_b‖*_base,
lmo(G)_b = lmo_base(G_b) (a max-composition: each block gets the whole budget). For a
block-diagonal map (a grouped conv) the max over blocks of the RMS→RMS norms *is* the
RMS→RMS norm of the whole map, since √(d_in/d_out) is the same for every block and for the whole.

``Transposed(base)``: the base norm of the tensor with its first two dims swapped,
‖W‖ = ‖Wᵀ‖_base, lmo(G) = lmo_base(Gᵀ)ᵀ, so a (in, out) weight gets exactly the update
an nn.Linear holding the transposed weight gets.

``inner(norm)`` unwraps to the base norm, ``block_shape(norm, shape)`` gives the shape
one base block has, and ``rewrap(norm, new_base)`` puts another base inside the same
wrappers (an optimizer's own spectral norm keeps the declared blocks this way).
"""

from __future__ import annotations

from torch import Tensor

from .norms import Norm

__all__ = ["Stacked", "Transposed", "BlockNorm", "inner", "block_shape", "rewrap", "blocks"]


class BlockNorm(Norm):
    """A norm defined by re-arranging a tensor for a ``base`` norm (see the module docstring)."""

    base: Norm

    def with_base(self, base: Norm) -> BlockNorm:
        """The same re-arrangement around another base norm."""
        raise NotImplementedError

    def inner_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one base block of a parameter of ``shape`` (leading batch dims dropped)."""
        raise NotImplementedError


class Stacked(BlockNorm):
    """‖W‖ = max_b ‖W_b‖_base for W split into ``blocks`` equal parts along the base's first dim.

    dual(G) = Σ_b ‖G_b‖*_base, lmo(G)_b = lmo_base(G_b). ``base`` may act on any number of
    dims: Spectral (fused projections), SpectralConv (grouped convolutions), Transposed(…).
    """

    def __init__(self, base: Norm, blocks: int) -> None:
        if not isinstance(base, Norm):
            raise ValueError(f"Stacked: base must be a modnorm.Norm, got {base!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"Stacked: blocks must be a positive int, got {blocks!r}")
        self.base, self.blocks = base, blocks
        self.ndim = base.ndim

    def with_base(self, base: Norm) -> Stacked:
        return Stacked(base, self.blocks)

    def inner_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        own = tuple(shape[len(shape) - self.ndim:])
        return (own[0] // self.blocks, *own[1:])

    def expected_shape(self) -> str:
        dims = self.base.expected_shape().strip("()").split(", ")
        k = dims.index("...") + 1 if "..." in dims else 0
        dims[k] = f"{self.blocks}·{dims[k]}"
        return "(" + ", ".join(dims) + ")"

    def _split(self, X: Tensor) -> Tensor:
        self._check(X)
        lead = X.ndim - self.ndim
        rows = X.shape[lead]
        if rows % self.blocks:
            raise ValueError(f"{self!r}: dim {lead} of size {rows} does not split into {self.blocks} equal blocks (shape {tuple(X.shape)})")
        return X.reshape(*X.shape[:lead], self.blocks, rows // self.blocks, *X.shape[lead + 1:])

    def value(self, W: Tensor) -> Tensor:
        return self.base.value(self._split(W)).amax(dim=-1)

    def dual(self, G: Tensor) -> Tensor:
        return self.base.dual(self._split(G)).sum(dim=-1)

    def lmo(self, G: Tensor) -> Tensor:
        return self.base.lmo(self._split(G)).reshape(G.shape)

    def __repr__(self) -> str:
        return f"Stacked({self.base!r}, blocks={self.blocks})"


class Transposed(BlockNorm):
    """‖W‖ = ‖W with its first two (of the base's) dims swapped‖_base: (in, out, …) layouts.

    lmo(G) = lmo_base(Gᵀ)ᵀ and dual(G) = dual_base(Gᵀ). The swapped tensor is made
    contiguous first, so the base sees exactly the tensor an (out, in, …) layer would.
    """

    def __init__(self, base: Norm) -> None:
        if not isinstance(base, Norm) or base.ndim < 2:
            raise ValueError(f"Transposed: base must be a modnorm.Norm on at least 2 dims, got {base!r}")
        self.base = base
        self.ndim = base.ndim

    def with_base(self, base: Norm) -> Transposed:
        return Transposed(base)

    def inner_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        own = tuple(shape[len(shape) - self.ndim:])
        return (own[1], own[0], *own[2:])

    def expected_shape(self) -> str:
        dims = self.base.expected_shape().strip("()").split(", ")
        k = dims.index("...") + 1 if "..." in dims else 0
        dims[k], dims[k + 1] = dims[k + 1], dims[k]
        return "(" + ", ".join(dims) + ")"

    def _swap(self, X: Tensor) -> Tensor:
        lead = X.ndim - self.ndim
        return X.transpose(lead, lead + 1)

    def value(self, W: Tensor) -> Tensor:
        self._check(W)
        return self.base.value(self._swap(W).contiguous())

    def dual(self, G: Tensor) -> Tensor:
        self._check(G)
        return self.base.dual(self._swap(G).contiguous())

    def lmo(self, G: Tensor) -> Tensor:
        self._check(G)
        return self._swap(self.base.lmo(self._swap(G).contiguous()))

    def __repr__(self) -> str:
        return f"Transposed({self.base!r})"


def inner(norm: Norm) -> Norm:
    """The base norm inside any ``Stacked``/``Transposed`` wrappers."""
    while isinstance(norm, BlockNorm):
        norm = norm.base
    return norm


def block_shape(norm: Norm, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one block the base norm acts on, in the base's own layout (e.g. (d_out, d_in))."""
    shape = tuple(shape[len(shape) - norm.ndim:]) if len(shape) >= norm.ndim else tuple(shape)
    while isinstance(norm, BlockNorm):
        shape = norm.inner_shape(shape)
        norm = norm.base
    return shape


def rewrap(norm: Norm, base: Norm) -> Norm:
    """``base`` inside the same wrappers as ``norm`` (just ``base`` when ``norm`` has none)."""
    if isinstance(norm, BlockNorm):
        return norm.with_base(rewrap(norm.base, base))
    return base


def blocks(norm: Norm) -> int:
    """How many base blocks one parameter holds (1 without ``Stacked``)."""
    n = 1
    while isinstance(norm, BlockNorm):
        n *= getattr(norm, "blocks", 1)
        norm = norm.base
    return n

