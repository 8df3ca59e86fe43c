"""Pictures of block masks: one small block matrix per head, or one query tile over the image grid."""

from __future__ import annotations

import math
import os

import numpy as np

from .._atomic import atomic_path
from .block_mask import BlockMask

__all__ = ["render_mask", "render_query_tile", "save_png"]

READ = (255, 255, 255)  # white: the block / tile is read
SKIP = (40, 40, 40)  # dark: skipped
SEPARATOR = (128, 128, 128)
QUERY = (220, 50, 50)  # the query tile itself (render_query_tile)
QUERY_SKIPPED = (110, 25, 25)


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 [H, W, 3] image as PNG, atomically (temp file in the same folder, then os.replace)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _colour(blocks: np.ndarray) -> np.ndarray:
    img = np.empty((*blocks.shape, 3), dtype=np.uint8)
    img[blocks] = READ
    img[~blocks] = SKIP
    return img


def render_mask(
    mask: BlockMask,
    path: str | os.PathLike | None = None,
    max_heads: int = 16,
    batch: int = 0,
    cell: int | None = None,
) -> np.ndarray:
    """Draw each head's block matrix (query blocks down, key blocks across).

    Heads ``0 .. min(H', max_heads) - 1`` of batch entry ``batch`` are laid out in a
    grid of ``cols = ceil(sqrt(n))`` columns and ``rows = ceil(n / cols)`` rows; each
    picture is ``Mq * cell`` x ``Mk * cell`` pixels (white = read, dark = skipped),
    with 1px grey separators around and between pictures. ``cell`` defaults to
    ``max(1, 128 // max(Mq, Mk))``.

    Returns:
        uint8 [rows * (Mq*cell + 1) + 1, cols * (Mk*cell + 1) + 1, 3]; written as PNG to
        ``path`` (atomically) when given.
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a BlockMask, got {type(mask).__name__}")
    if isinstance(max_heads, bool) or not isinstance(max_heads, int) or max_heads < 1:
        raise ValueError(f"max_heads must be a positive int, got {max_heads!r}")
    nb, nh = mask.blocks.shape[:2]
    if not 0 <= batch < nb:
        raise ValueError(f"batch {batch} is out of range for a mask with batch dimension {nb}")
    mq, mk = mask.blocks.shape[-2:]
    if cell is None:
        cell = max(1, 128 // max(mq, mk, 1))
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be a positive int (pixels per block), got {cell!r}")
    n = min(nh, max_heads)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ph, pw = mq * cell, mk * cell
    image = np.empty((rows * (ph + 1) + 1, cols * (pw + 1) + 1, 3), dtype=np.uint8)
    image[...] = SEPARATOR
    blocks = mask.blocks[batch, :n].detach().to("cpu").numpy()
    for h in range(n):
        r, c = divmod(h, cols)
        pic = _colour(blocks[h]).repeat(cell, axis=0).repeat(cell, axis=1)
        y, x = 1 + r * (ph + 1), 1 + c * (pw + 1)
        image[y : y + ph, x : x + pw] = pic
    if path is not None:
        save_png(image, path)
    return image


def render_query_tile(
    mask: BlockMask,
    query_tile: int | tuple[int, int],
    head: int = 0,
    path: str | os.PathLike | None = None,
    batch: int = 0,
    cell: int = 4,
) -> np.ndarray:
    """Which image tiles one query tile reads, drawn over the token grid (``tiles`` layout only).

    Each token is a ``cell x cell`` square: white if its tile is read, dark if
    skipped; the query tile is red (dark red if it does not read itself).

    Args:
        mask: a ``tiles``-layout BlockMask over grid (gh, gw).
        query_tile: tile id (row-major) or (tile row, tile col).
        head, batch: which head / batch entry (broadcast dimensions of size 1 accept any).

    Returns:
        uint8 [gh * cell, gw * cell, 3]; written as PNG to ``path`` (atomically) when given.
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a BlockMask, got {type(mask).__name__}")
    if mask.layout != "tiles":
        raise ValueError(f"render_query_tile needs a 'tiles' layout mask, got layout {mask.layout!r}; use render_mask")
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be a positive int (pixels per token), got {cell!r}")
    (gh, gw), (th, tw) = mask.grid, mask.tile
    ntw = math.ceil(gw / tw)
    m = mask.num_blocks[0]
    if isinstance(query_tile, (tuple, list)):
        tr, tc = (int(v) for v in query_tile)
        if not (0 <= tr < math.ceil(gh / th) and 0 <= tc < ntw):
            raise ValueError(f"query tile {(tr, tc)} is outside the {math.ceil(gh / th)}x{ntw} tile grid")
        query_tile = tr * ntw + tc
    if not 0 <= int(query_tile) < m:
        raise ValueError(f"query tile {query_tile} is out of range [0, {m})")
    nb, nh = mask.blocks.shape[:2]
    if not (nh == 1 or 0 <= head < nh):
        raise ValueError(f"head {head} is out of range for a mask with {nh} heads")
    if not (nb == 1 or 0 <= batch < nb):
        raise ValueError(f"batch {batch} is out of range for a mask with batch dimension {nb}")
    row = mask.blocks[batch if nb > 1 else 0, head if nh > 1 else 0, int(query_tile)].detach().to("cpu")
    qb, _ = mask.token_to_block("cpu")
    tile_of = qb.view(gh, gw)
    read = row[tile_of].numpy()  # [gh, gw]
    image = _colour(read)
    own = (tile_of == int(query_tile)).numpy()
    image[own] = QUERY if bool(row[int(query_tile)]) else QUERY_SKIPPED
    image = image.repeat(cell, axis=0).repeat(cell, axis=1)
    if path is not None:
        save_png(image, path)
    return image

