"""Region-focused masks: dense around prompt points / boxes, local elsewhere (``tiles`` layout)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .block_mask import BlockMask
from .local import _check_grid_tile, _check_heads, _int_pair, local_pattern, tile_grid, tiles_mask

__all__ = ["region_focused", "prompt_tiles"]


def _preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """SAM's ``ResizeLongestSide.get_preprocess_shape``: the resized (h, w)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    return int(old_h * scale + 0.5), int(old_w * scale + 0.5)


def _as_rows(values, width: int, name: str) -> torch.Tensor:
    """``values`` as float64 [n, width] on the CPU (accepts lists, numpy arrays, tensors)."""
    if values is None:
        return torch.zeros(0, width, dtype=torch.float64)
    try:
        t = torch.as_tensor(values if not isinstance(values, torch.Tensor) else values.detach().cpu())
        t = t.to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be numbers shaped [n, {width}], got {values!r}") from None
    if t.numel() == 0:
        return torch.zeros(0, width, dtype=torch.float64)
    if t.shape[-1] != width:
        what = "x, y" if width == 2 else "x0, y0, x1, y1"
        raise ValueError(f"{name} must have shape [n, {width}] ({what}), got {tuple(t.shape)}")
    t = t.reshape(-1, width)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values: {t.tolist()}")
    return t


def prompt_tiles(
    points=None,
    boxes=None,
    image_size: tuple[int, int] | None = None,
    grid: tuple[int, int] = (64, 64),
    tile: tuple[int, int] = (8, 16),
    input_size: int = 1024,
) -> list[int]:
    """Ids (row-major) of the tiles under prompt points and boxes, sorted, no repeats.

    Points ``[n, 2]`` as (x, y) and boxes ``[n, 4]`` as (x0, y0, x1, y1) are in
    ORIGINAL image pixels, ``image_size = (H, W)`` (None: already at the model's
    ``input_size`` frame, i.e. ``(input_size, input_size)``). They are mapped as SAM's
    ``ResizeLongestSide`` does (``x * new_w / W``, ``y * new_h / H``, the longest
    side scaled to ``input_size``), then to a token cell (``input_size / gh`` pixels
    per row, ``input_size / gw`` per column: 16 for SAM), then to the tile holding
    that cell. A box marks every tile it overlaps. Coordinates outside
    ``[0, W] x [0, H]`` raise ValueError.
    """
    grid, tile = _check_grid_tile(grid, tile)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive int (1024 for SAM), got {input_size!r}")
    height, width = _int_pair(image_size, "image_size") if image_size is not None else (input_size, input_size)
    pts = _as_rows(points, 2, "points")
    bxs = _as_rows(boxes, 4, "boxes")

    def check(xs: torch.Tensor, ys: torch.Tensor, what: str) -> None:
        bad = (xs < 0) | (xs > width) | (ys < 0) | (ys > height)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"{what} {i} at (x={float(xs[i])}, y={float(ys[i])}) is outside the {width}x{height} (WxH) image; "
                "coordinates are (x, y) in original image pixels, with image_size=(H, W)"
            )

    check(pts[:, 0], pts[:, 1], "point")
    check(bxs[:, 0], bxs[:, 1], "box corner (x0, y0) of box")
    check(bxs[:, 2], bxs[:, 3], "box corner (x1, y1) of box")
    if bool(((bxs[:, 2] < bxs[:, 0]) | (bxs[:, 3] < bxs[:, 1])).any()):
        raise ValueError(f"boxes must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {bxs.tolist()}")

    new_h, new_w = _preprocess_shape(height, width, input_size)
    gh, gw = grid
    th, tw = tile
    _, ntw = tile_grid(grid, tile)

    # last cells holding image pixels (the rest of the input is padding)
    last_row = min(gh, max(1, math.ceil(new_h * gh / input_size))) - 1
    last_col = min(gw, max(1, math.ceil(new_w * gw / input_size))) - 1

    def cell(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # resized pixel -> token cell; a point on the image's far edge lies in its last cell
        rows = torch.floor(ys * (new_h / height) * gh / input_size).long().clamp(0, last_row)
        cols = torch.floor(xs * (new_w / width) * gw / input_size).long().clamp(0, last_col)
        return rows, cols

    ids: set[int] = set()
    r, c = cell(pts[:, 0], pts[:, 1])
    ids.update((r // th * ntw + c // tw).tolist())
    r0, c0 = cell(bxs[:, 0], bxs[:, 1])
    r1, c1 = cell(bxs[:, 2], bxs[:, 3])
    for a, b, e, f in zip((r0 // th).tolist(), (c0 // tw).tolist(), (r1 // th).tolist(), (c1 // tw).tolist()):
        ids.update(tr * ntw + tc for tr in range(a, e + 1) for tc in range(b, f + 1))
    return sorted(ids)


def region_focused(
    points=None,
    boxes=None,
    image_size: tuple[int, int] | None = None,
    grid: tuple[int, int] = (64, 64),
    tile: tuple[int, int] = (8, 16),
    input_size: int = 1024,
    radius: int | Sequence[int] = 1,
    num_heads: int = 1,
    device: torch.device | str | None = None,
) -> BlockMask:
    """Dense attention for the tiles under the prompts, :func:`local_2d` elsewhere.

    The tiles under ``points`` / ``boxes`` (see :func:`prompt_tiles` for the
    coordinate mapping) read every tile (dense rows) and every tile reads them
    (dense columns); every other pair follows ``local_2d(radius)``.

    The mapping assumes ``grid`` is the whole image's token grid (SAM's global
    blocks); in windowed blocks the grid is one window, and one mask (B' = 1)
    serves every window, so the focus is not where the prompt is.

    Args:
        points: (x, y) pairs ``[n, 2]`` in original image pixels, or None.
        boxes: (x0, y0, x1, y1) ``[n, 4]`` in original image pixels, or None.
        image_size: (H, W) of the original image (None: ``(input_size, input_size)``).
        grid: (gh, gw) token grid of the attention call; tile: (th, tw).
        input_size: the model's input side (1024 for SAM).
        radius: local radius elsewhere (int or (rh, rw)), as in :func:`local_2d`.
        num_heads: H' of the result; device: device of the blocks.

    Returns:
        BlockMask, layout ``tiles``, blocks bool ``[1, num_heads, M, M]``; the diagonal is set.
    """
    if points is None and boxes is None:
        raise ValueError("region_focused needs points=[(x, y), ...] and/or boxes=[(x0, y0, x1, y1), ...]; "
                         "use local_2d for a mask without prompts")  # fmt: skip
    grid, tile = _check_grid_tile(grid, tile)
    radius = _int_pair(radius, "radius", minimum=0)
    num_heads = _check_heads(num_heads)
    focus = prompt_tiles(points, boxes, image_size, grid, tile, input_size)
    if not focus:
        raise ValueError("points and boxes are both empty; give at least one point or box")
    pattern = local_pattern(grid, tile, radius, device)
    ids = torch.tensor(focus, device=pattern.device)
    pattern[ids, :] = True
    pattern[:, ids] = True
    blocks = pattern[None, None].expand(1, num_heads, *pattern.shape).contiguous()
    return tiles_mask(blocks, grid, tile)

