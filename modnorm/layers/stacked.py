"""A norm for several same-shape matrices stacked along the output dimension.

``nn.MultiheadAttention`` keeps the query, key and value projections in one
``in_proj_weight`` of shape (3·E, E). Each block is its own linear map, so the natural
norm is the max over blocks of the base norm of each block, and the LMO is the base LMO
of every block (a max-composition: each block gets the whole budget).
"""

from __future__ import annotations

from torch import Tensor

from ..norms import Norm

__all__ = ["Stacked"]


class Stacked(Norm):
    """‖W‖ = max_b ‖W_b‖_base for W = [W_1; …; W_n] split into ``blocks`` equal row blocks.

    dual(G) = Σ_b ‖G_b‖*_base, lmo(G)_b = lmo_base(G_b). ``base`` must act on matrices.
    """

    ndim = 2

    def __init__(self, base: Norm, blocks: int) -> None:
        if not isinstance(base, Norm) or base.ndim != 2:
            raise ValueError(f"Stacked: base must be a modnorm.Norm on matrices (ndim=2), got {base!r}")
        if not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"Stacked: blocks must be a positive int, got {blocks!r}")
        self.base, self.blocks = base, blocks

    def expected_shape(self) -> str:
        return f"(..., {self.blocks}·d_out, d_in)"

    def _split(self, X: Tensor) -> Tensor:
        self._check(X)
        rows = X.shape[-2]
        if rows % self.blocks:
            raise ValueError(f"{self!r}: {rows} rows do not split into {self.blocks} equal blocks (shape {tuple(X.shape)})")
        return X.reshape(*X.shape[:-2], self.blocks, rows // self.blocks, X.shape[-1])

    def value(self, W: Tensor) -> Tensor:
        return self.base.value(self._split(W)).amax(dim=-1)

    def dual(self, G: Tensor) -> Tensor:
        return self.base.dual(self._split(G)).sum(dim=-1)

    def lmo(self, G: Tensor) -> Tensor:
        return self.base.lmo(self._split(G)).reshape(G.shape)

    def sharp(self, G: Tensor) -> Tensor:
        return self.dual(G)[..., None, None] * self.lmo(G)

    def __repr__(self) -> str:
        return f"Stacked({self.base!r}, blocks={self.blocks})"

