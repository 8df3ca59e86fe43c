"""Local 2D neighbourhoods over a grid of tiles (``tiles`` layout).

Also holds the small tile-geometry helpers the other grid builders share.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .block_mask import BlockMask

__all__ = ["local_2d"]


def _int_pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` as a pair of ints >= ``minimum`` (an int means the same for both)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or any(isinstance(v, bool) or int(v) != v for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    a, b = int(items[0]), int(items[1])
    if a < minimum or b < minimum:
        raise ValueError(f"{name} must be >= {minimum} in both directions, got {(a, b)}")
    return a, b


def _check_grid_tile(grid, tile) -> tuple[tuple[int, int], tuple[int, int]]:
    return _int_pair(grid, "grid"), _int_pair(tile, "tile")


def _check_heads(num_heads, name: str = "num_heads") -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"{name} must be a positive int, got {num_heads!r}")
    return num_heads


def tile_grid(grid: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int]:
    """(tile rows, tile cols) of a token ``grid`` cut into ``tile``s (edge tiles may be partial)."""
    return math.ceil(grid[0] / tile[0]), math.ceil(grid[1] / tile[1])


def tile_coords(
    grid: tuple[int, int], tile: tuple[int, int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile row and tile column of every tile, row-major: (int64 [M], int64 [M])."""
    nth, ntw = tile_grid(grid, tile)
    ids = torch.arange(nth * ntw, device=device)
    return ids // ntw, ids % ntw


def tile_extents(grid: tuple[int, int], tile: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Real token height of each tile row and width of each tile column (float64, CPU)."""
    (gh, gw), (th, tw) = grid, tile
    nth, ntw = tile_grid(grid, tile)
    hs = torch.tensor([min(th, gh - r * th) for r in range(nth)], dtype=torch.float64)
    ws = torch.tensor([min(tw, gw - c * tw) for c in range(ntw)], dtype=torch.float64)
    return hs, ws


def tiles_mask(
    blocks: torch.Tensor, grid: tuple[int, int], tile: tuple[int, int], allow_empty_rows: bool = False
) -> BlockMask:
    """Wrap tile blocks [B', H', M, M] as a ``tiles``-layout BlockMask."""
    n = grid[0] * grid[1]
    bs = tile[0] * tile[1]
    return BlockMask(
        blocks, (bs, bs), (n, n), layout="tiles", grid=grid, tile=tile, allow_empty_rows=allow_empty_rows
    )


def local_pattern(
    grid: tuple[int, int],
    tile: tuple[int, int],
    radius: tuple[int, int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """bool [M, M]: tile q reads tile k iff |row diff| <= rh and |col diff| <= rw."""
    rows, cols = tile_coords(grid, tile, device)
    rh, rw = radius
    return ((rows[:, None] - rows[None, :]).abs() <= rh) & ((cols[:, None] - cols[None, :]).abs() <= rw)


def local_2d(
    grid: tuple[int, int] = (64, 64),
    tile: tuple[int, int] = (8, 16),
    radius: int | Sequence[int] = 1,
    num_heads: int = 1,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Each tile reads the tiles within Chebyshev distance ``radius`` (in tile units).

    The token grid ``(gh, gw)`` (row-major tokens, as in SAM's encoder) is cut into
    ``(th, tw)`` tiles, ``M = ceil(gh/th) * ceil(gw/tw)`` of them, numbered row-major.
    Tile ``(i, j)`` reads tile ``(i', j')`` iff ``|i - i'| <= rh`` and ``|j - j'| <= rw``.

    Args:
        grid: (gh, gw) tokens.
        tile: (th, tw) tokens per tile (a block of ``th * tw`` tokens; edge tiles may be partial).
        radius: int ``r`` (same both ways) or a pair ``(rh, rw)``; ``0`` = own tile only.
        num_heads: H' of the result (all heads equal).
        device: device of the blocks.

    Returns:
        BlockMask, layout ``tiles``, blocks bool ``[1, num_heads, M, M]``; the diagonal is set.
    """
    grid, tile = _check_grid_tile(grid, tile)
    radius = _int_pair(radius, "radius", minimum=0)
    num_heads = _check_heads(num_heads)
    pattern = local_pattern(grid, tile, radius, device)
    blocks = pattern[None, None].expand(1, num_heads, *pattern.shape).contiguous()
    return tiles_mask(blocks, grid, tile)
