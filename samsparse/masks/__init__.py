"""Block masks and their builders."""

from .block_mask import BlockMask, KVIndices

__all__ = ["BlockMask", "KVIndices"]
