"""Content-based masks chosen at run time from pooled q / k per tile (``tiles`` layout)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .block_mask import BlockMask
from .local import _check_grid_tile, tile_grid, tiles_mask

__all__ = ["dynamic", "pool_tiles"]


def pool_tiles(x: torch.Tensor, grid: tuple[int, int], tile: tuple[int, int]) -> torch.Tensor:
    """Mean of each tile's tokens: x [B, H, N, D] (N = gh*gw, row-major) -> float32 [B, H, M, D].

    Edge tiles average only their real tokens. Pure tensor ops: no host sync.
    """
    b, h, n, d = x.shape
    (gh, gw), (th, tw) = grid, tile
    nth, ntw = tile_grid(grid, tile)
    xg = x.detach().float().reshape(b * h, gh, gw, d)
    xg = F.pad(xg, (0, 0, 0, ntw * tw - gw, 0, nth * th - gh))  # zero tokens add nothing to the sums
    sums = xg.reshape(b * h, nth, th, ntw, tw, d).sum((2, 4))  # [BH, nth, ntw, D]
    rows = (gh - torch.arange(nth, device=x.device) * th).clamp(max=th)
    cols = (gw - torch.arange(ntw, device=x.device) * tw).clamp(max=tw)
    counts = (rows[:, None] * cols[None, :]).to(sums.dtype)  # real tokens per tile [nth, ntw]
    return (sums / counts[..., None]).reshape(b, h, nth * ntw, d)


def dynamic(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: tuple[int, int],
    tile: Sequence[int] = (8, 16),
    top_k: int | None = None,
    density: float = 0.25,
    include_diagonal: bool = True,
) -> BlockMask:
    """Per query tile, the key tiles whose pooled keys best match its pooled queries.

    q and k are mean-pooled per tile (:func:`pool_tiles`), tile pairs are scored by the
    dot product of the pooled vectors, and each query tile keeps its ``top_k`` best key
    tiles (ties go to the lower tile id), plus its own tile when ``include_diagonal``.

    Args:
        q, k: [B, H, N, D] with N = gh * gw tokens in row-major grid order.
        grid: (gh, gw); tile: (th, tw) tokens per tile, ``M`` tiles in all.
        top_k: key tiles kept per query tile, in [1, M]; None: ``max(1, round(density * M))``.
        density: fraction of tiles to keep when ``top_k`` is None, in (0, 1].
        include_diagonal: also keep each tile's own tile (then rows hold top_k or top_k + 1).

    Returns:
        BlockMask, layout ``tiles``, blocks bool ``[B, H, M, M]`` on q's device. Computed
        with tensor ops only (no host sync); deterministic for given q, k.
    """
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor):
        raise TypeError("q and k must be tensors [B, H, N, D]")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, H, N, D], got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same shape [B, H, N, D]")
    grid, tile = _check_grid_tile(grid, tile)
    n = q.shape[2]
    if n != grid[0] * grid[1]:
        raise ValueError(f"q has N={n} tokens, but grid {grid} holds {grid[0] * grid[1]}; pass the grid of this call")
    nth, ntw = tile_grid(grid, tile)
    m = nth * ntw
    if top_k is None:
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
            raise ValueError(f"density must be a number in (0, 1], got {density!r}")
        top_k = max(1, round(density * m))
    elif isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= m:
        raise ValueError(f"top_k must be an int in [1, {m}] (the number of tiles), got {top_k!r}")

    pq = pool_tiles(q, grid, tile)  # [B, H, M, D]
    pk = pool_tiles(k, grid, tile)
    scores = pq @ pk.transpose(-1, -2)  # [B, H, M, M]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :top_k]
    blocks = torch.zeros(scores.shape, dtype=torch.bool, device=q.device)
    blocks.scatter_(-1, order, True)
    if include_diagonal:
        blocks |= torch.eye(m, dtype=torch.bool, device=q.device)
    return tiles_mask(blocks, grid, tile)

