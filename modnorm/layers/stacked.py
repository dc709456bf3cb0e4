"""The block-structured norms (``Stacked``, ``Transposed``) under their former path; they live in ``modnorm.blocks``."""

from ..blocks import BlockNorm, Stacked, Transposed, block_shape, blocks, inner, rewrap

__all__ = ["Stacked", "Transposed", "BlockNorm", "inner", "block_shape", "rewrap", "blocks"]
